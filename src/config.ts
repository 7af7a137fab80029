import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CubeboxError } from './util/errors.js';
import { randomId } from './util/ids.js';

export const DEFAULT_DATA_DIR = '/var/lib/cubebox';
export const DEFAULT_CACHE_DIR = '/var/cache/cubebox';

/** The project root (where dist/ and native/ live), found from this file's location. */
export const PROJECT_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const HELPER_BIN = join(PROJECT_ROOT, 'dist', 'native', 'cubebox-helper');

/**
 * Where one cubebox instance keeps everything. Every host resource an instance creates
 * carries its instance id (cgroups, runtime state root, mount names), so several
 * instances can share a host and an operator can tell whose a resource is.
 */
export interface Paths {
  dataDir: string;
  instanceId: string;
  db: string;
  lockFile: string;
  socket: string;
  sandboxesDir: string;
  layersDir: string;
  runRoot: string; // tmpfs: runtime state roots, gone after a reboot like the sandboxes
}

/** Reads (or on first use creates) the instance id of a data directory. */
export function openPaths(dataDir: string, create = true): Paths {
  const idFile = join(dataDir, 'instance-id');
  let instanceId: string;
  if (existsSync(idFile)) {
    instanceId = readFileSync(idFile, 'utf8').trim();
  } else {
    if (!create) throw new Error(`${dataDir} is not a cubebox data directory (no instance-id)`);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    instanceId = randomId(8);
    writeFileSync(idFile, instanceId + '\n', { flag: 'wx' });
  }
  if (!/^[a-z0-9]{8}$/.test(instanceId)) throw new Error(`bad instance id in ${idFile}`);
  return {
    dataDir,
    instanceId,
    db: join(dataDir, 'cubebox.db'),
    lockFile: join(dataDir, 'manager.lock'),
    socket: join(dataDir, 'manager.sock'),
    sandboxesDir: join(dataDir, 'sandboxes'),
    layersDir: join(dataDir, 'layers'),
    runRoot: join('/run/cubebox', instanceId),
  };
}

/** Names of host resources, derived from the instance and sandbox ids only. */
export const naming = {
  cgroupParent: (inst: string) => `cubebox-${inst}`,
  cgroupPath: (inst: string, sbx: string) => `/cubebox-${inst}/${sbx}`,
  containerId: (inst: string, sbx: string) => `cubebox-${inst}-${sbx}`,
  mountSource: (inst: string, sbx: string) => `cubebox-${inst}-${sbx}`,
};

/**
 * How long a paused sandbox is kept before the reaper deletes it (`--paused-lifetime`,
 * CUBEBOX_PAUSED_LIFETIME): seconds, or a number followed by s, m, h or d. Milliseconds;
 * undefined when not given (the manager's default, 30 days, applies).
 */
export function parsePausedLifetime(text: string | undefined): number | undefined {
  if (text === undefined || text === '') return undefined;
  const m = /^(\d+)([smhd]?)$/.exec(text.trim());
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86_400 }[m?.[2] ?? ''] ?? 1;
  const ms = m ? Number(m[1]) * unit * 1000 : NaN;
  if (!Number.isSafeInteger(ms) || ms < 1000)
    throw new CubeboxError('invalid_argument', `bad paused lifetime '${text}': seconds, or a number with s, m, h or d (at least 1s)`);
  return ms;
}
