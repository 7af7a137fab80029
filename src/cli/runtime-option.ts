import { Option } from 'commander';
import { DEFAULT_RUNTIME, runtimeNames } from '../runtime/registry.js';

/** `--runtime <name>`: its choices are the registered runtimes. */
export function runtimeOption(): Option {
  return new Option('--runtime <name>', `OCI runtime (env CUBEBOX_RUNTIME, default ${DEFAULT_RUNTIME})`).choices(runtimeNames());
}
