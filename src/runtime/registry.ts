// The runtimes cubebox can run sandboxes with, and what each can do. Everything that depends
// on a runtime (configuration, the CLI, provisioning, networking, the leak checker, the doctor)
// asks here; a new runtime is one module under runtimes/ and one entry in RUNTIMES.
import { CubeboxError } from '../util/errors.js';
import { crun } from './runtimes/crun.js';
import { runc } from './runtimes/runc.js';
import { runsc } from './runtimes/runsc.js';
import type { RuntimeCapabilities, RuntimeDefinition } from './runtimes/types.js';

export type { RuntimeCapabilities, RuntimeDefinition } from './runtimes/types.js';

/** The name of a registered runtime (configuration, the store and state roots use it). */
export type RuntimeName = string;

/** Every runtime, the default first. */
const RUNTIMES = new Map<string, RuntimeDefinition>([crun, runc, runsc].map((d) => [d.name, d]));

/** The runtime new sandboxes get when configuration names none. */
export const DEFAULT_RUNTIME: RuntimeName = crun.name;

/** Adds a runtime (a test's); returns what removes it again. */
export function registerRuntime(def: RuntimeDefinition): () => void {
  if (RUNTIMES.has(def.name)) throw new Error(`runtime '${def.name}' is registered already`);
  if (!/^[a-z][a-z0-9-]*$/.test(def.name)) throw new Error(`bad runtime name '${def.name}'`);
  RUNTIMES.set(def.name, def);
  return () => void RUNTIMES.delete(def.name);
}

/** The names of every runtime, the default first. */
export function runtimeNames(): RuntimeName[] {
  return [...RUNTIMES.keys()];
}

export function isRuntimeName(name: string): name is RuntimeName {
  return RUNTIMES.has(name);
}

/** The definition of a runtime; throws for a name that is not registered. */
export function runtimeDefinition(name: RuntimeName): RuntimeDefinition {
  const def = RUNTIMES.get(name);
  if (!def) throw new Error(`unknown runtime '${name}'`);
  return def;
}

export function capabilitiesOf(name: RuntimeName): RuntimeCapabilities {
  return runtimeDefinition(name).capabilities;
}

/** The runtimes whose capability `key` has the value `value` (e.g. checkpoint: 'criu'). */
export function runtimesWith<K extends keyof RuntimeCapabilities>(key: K, value: RuntimeCapabilities[K]): RuntimeName[] {
  return runtimeNames().filter((n) => capabilitiesOf(n)[key] === value);
}

/** A runtime named in configuration (a flag, CUBEBOX_RUNTIME): the default when none; a clear error when unknown. */
export function parseRuntimeName(text: string | undefined): RuntimeName {
  if (text === undefined) return DEFAULT_RUNTIME;
  if (isRuntimeName(text)) return text;
  const names = runtimeNames();
  const list = names.length > 1 ? `${names.slice(0, -1).join(', ')} or ${names.at(-1)}` : names.join('');
  throw new CubeboxError('invalid_argument', `unknown runtime '${text}' (${list})`);
}
