// Command line of envd (documented in main.ts).
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { EnvdOptions } from './state.js';

export class UsageError extends Error {}

function usage(msg: string): never {
  throw new UsageError(msg);
}

function defaultHelper(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url));
  // Next to the bundle, or (unbundled build output dist/src/envd) next to dist/envd's bundle.
  for (const p of [join(here, 'envd-exec'), join(here, '..', '..', 'envd', 'envd-exec')]) if (existsSync(p)) return p;
  return undefined;
}

export function parseArgs(argv: string[]): EnvdOptions {
  const opts: EnvdOptions = {
    // TCP is off unless asked for; it then also needs an access token (ENVD_ACCESS_TOKEN or /init).
    port: 0,
    hosts: [],
    passwdPath: '/etc/passwd',
    groupPath: '/etc/group',
    stateDir: '/var/lib/envd',
    cgroupRoot: '/sys/fs/cgroup',
    defaultUser: 'user',
  };
  let helper: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const eq = a.indexOf('=');
    const flag = a.startsWith('--') && eq > 0 ? a.slice(0, eq) : a;
    const value = (): string => {
      if (a.startsWith('--') && eq > 0) return a.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) usage(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--socket':
        opts.socketPath = value();
        break;
      case '--port': {
        const v = Number(value());
        if (!Number.isInteger(v) || v < 0 || v > 65535) usage('--port must be 0..65535');
        opts.port = v;
        break;
      }
      case '--host':
        opts.hosts = value()
          .split(',')
          .map((h) => h.trim())
          .filter(Boolean);
        break;
      case '--passwd':
        opts.passwdPath = value();
        break;
      case '--group':
        opts.groupPath = value();
        break;
      case '--state-dir':
        opts.stateDir = value();
        break;
      case '--exec-helper':
        helper = value();
        break;
      case '--cgroup-root':
        opts.cgroupRoot = value();
        break;
      case '--default-user':
        opts.defaultUser = value();
        break;
      case '--help':
      case '-h':
        process.stdout.write(
          'usage: node envd.cjs [--socket <path>] [--port <n>] [--host <addrs>] [--passwd <file>] [--group <file>] [--state-dir <dir>] [--exec-helper <path>] [--cgroup-root <dir>] [--default-user <name>]\n',
        );
        process.exit(0);
        break;
      default:
        usage(`unknown argument: ${a}`);
    }
  }
  if (opts.port === 0 && !opts.socketPath) usage('nothing to listen on: give --socket or a --port');
  opts.helperPath = helper ?? defaultHelper();
  if (opts.helperPath && !existsSync(opts.helperPath)) usage(`exec helper not found: ${opts.helperPath}`);
  return opts;
}
