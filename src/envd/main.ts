/**
 * envd: the in-sandbox agent of cubebox. It speaks E2B's envd protocol (Connect over HTTP/1.1 with
 * the JSON codec for process.Process and filesystem.Filesystem, plus the REST routes /health,
 * /files, /init, /envs and /metrics) so the unmodified E2B SDK works against a cubebox sandbox.
 *
 * Built by scripts/build-envd.mjs into dist/envd/: envd.mjs (one ESM file, every JS dependency
 * inlined), pty.node (node-pty's native addon, loaded from next to envd.mjs) and envd-exec (a
 * static helper that starts processes as a user with all of their groups).
 *
 * Usage:
 *   node dist/envd/envd.mjs [--socket <path>] [--port <n>] [--host <addr>[,<addr>...]]
 *                           [--passwd <file>] [--group <file>] [--state-dir <dir>]
 *                           [--exec-helper <path>] [--cgroup-root <dir>] [--default-user <name>]
 *
 *   --socket <path>      also serve on this unix socket (the host-side proxy uses it)
 *   --port <n>           TCP port, default 49983; 0 disables TCP
 *   --host <addrs>       TCP listen addresses, comma separated; default: all interfaces
 *                        ("::" dual stack, or 0.0.0.0 without IPv6)
 *   --passwd <file>      users file, default /etc/passwd
 *   --group <file>       groups file, default /etc/group
 *   --state-dir <dir>    where file metadata is persisted, default /var/lib/envd ("" = memory only)
 *   --exec-helper <path> the envd-exec helper, default: envd-exec next to envd.mjs
 *   --cgroup-root <dir>  cgroup mount read by /metrics, default /sys/fs/cgroup
 *   --default-user <u>   user of requests that name none, default "user" (POST /init may change it)
 *
 * Readiness: `GET /health` answers 204 (on the socket and on TCP) once every listener is up.
 * envd prints nothing on stdout; errors go to stderr. SIGTERM/SIGINT kill the processes envd
 * started and exit 0. Exit status 2: bad arguments; 1: cannot listen.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startEnvd } from './http/server.js';
import type { EnvdOptions } from './state.js';

function usage(msg: string): never {
  process.stderr.write(`envd: ${msg}\n`);
  process.exit(2);
}

function defaultHelper(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url));
  // Next to the bundle, or (unbundled build output dist/src/envd) next to dist/envd's bundle.
  for (const p of [join(here, 'envd-exec'), join(here, '..', '..', 'envd', 'envd-exec')]) if (existsSync(p)) return p;
  return undefined;
}

export function parseArgs(argv: string[]): EnvdOptions {
  const opts: EnvdOptions = {
    port: 49983,
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
        opts.hosts = value().split(',').map((h) => h.trim()).filter(Boolean);
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
        process.stdout.write('usage: node envd.mjs [--socket <path>] [--port <n>] [--host <addrs>] [--passwd <file>] [--group <file>] [--state-dir <dir>] [--exec-helper <path>] [--cgroup-root <dir>] [--default-user <name>]\n');
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

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  let envd;
  try {
    envd = await startEnvd(opts);
  } catch (e) {
    process.stderr.write(`envd: cannot start: ${(e as Error).message}\n`);
    process.exit(1);
  }
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    envd.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGPIPE', () => {});
  process.on('uncaughtException', (e) => {
    process.stderr.write(`envd: uncaught exception: ${e?.stack ?? String(e)}\n`);
  });
  process.on('unhandledRejection', (e) => {
    process.stderr.write(`envd: unhandled rejection: ${(e as Error)?.stack ?? String(e)}\n`);
  });
}

void main();
