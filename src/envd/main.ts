/**
 * envd: the in-sandbox agent of cubebox. It speaks E2B's envd protocol (Connect over HTTP/1.1 with
 * the JSON codec for process.Process and filesystem.Filesystem, plus the REST routes /health,
 * /files, /init, /envs and /metrics) so the unmodified E2B SDK works against a cubebox sandbox.
 *
 * Built by scripts/build-envd.mjs into dist/envd/: envd.cjs (one CommonJS file, every JS
 * dependency inlined; envd.mjs loads it for ES-module callers), pty.node (node-pty's native addon,
 * loaded from next to envd.cjs) and envd-exec (a static helper that starts processes as a user
 * with all of their groups).
 *
 * Usage:
 *   node dist/envd/envd.cjs [--socket <path>] [--port <n>] [--host <addr>[,<addr>...]]
 *                           [--passwd <file>] [--group <file>] [--state-dir <dir>]
 *                           [--exec-helper <path>] [--cgroup-root <dir>] [--default-user <name>]
 *
 *   --socket <path>      also serve on this unix socket (the host-side proxy uses it)
 *   --port <n>           also serve on this TCP port (E2B's is 49983); default 0: no TCP. TCP
 *                        always needs an access token: ENVD_ACCESS_TOKEN in the environment, or
 *                        the first /init (on the socket) that sets one; until then it is off
 *   --host <addrs>       TCP listen addresses, comma separated; default: all interfaces
 *                        ("::" dual stack, or 0.0.0.0 without IPv6)
 *   --passwd <file>      users file, default /etc/passwd
 *   --group <file>       groups file, default /etc/group
 *   --state-dir <dir>    accepted and unused (file metadata lives in the files' user.e2b.* attributes)
 *   --exec-helper <path> the envd-exec helper (also serves file metadata), default: envd-exec next to envd.cjs
 *   --cgroup-root <dir>  cgroup mount read by /metrics, default /sys/fs/cgroup
 *   --default-user <u>   user of requests that name none, default "user" (POST /init may change it)
 *
 * Readiness: `GET /health` answers 204 (on the socket and on TCP) once every listener is up.
 * envd prints nothing on stdout; errors go to stderr. SIGTERM/SIGINT kill the processes envd
 * started and exit 0. SIGCONT after the host suspended the socket (a checkpoint) listens again. Exit status 2: bad arguments; 1: cannot listen.
 */
import { closeSync, constants, openSync, readSync, unlinkSync } from 'node:fs';
import { prepareMetadataStore } from './fs/metadata-store.js';
import { startEnvd } from './http/server.js';
import { ENVD_ENV, INIT_SECRET_FILE_ENV } from './host-contract.js';
import { parseArgs, UsageError } from './options.js';

/**
 * The host's /init secret, from the file the host named: read once and unlinked before
 * anything else runs in the sandbox, so that no process's environment or file ever holds it.
 */
function takeInitSecret(file: string): string {
  const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const buf = Buffer.alloc(256);
    const n = readSync(fd, buf, 0, buf.length, 0);
    const secret = buf.subarray(0, n).toString('utf8').trim();
    if (!/^[A-Za-z0-9_-]{16,200}$/.test(secret)) throw new Error(`${file} does not hold a secret`);
    return secret;
  } finally {
    closeSync(fd);
    unlinkSync(file);
  }
}

async function main(): Promise<void> {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`envd: ${e.message}\n`);
    process.exit(2);
  }
  // The host's /init secret comes in a file; without it envd must not start (/init would be open).
  const secretFile = process.env[INIT_SECRET_FILE_ENV];
  delete process.env[INIT_SECRET_FILE_ENV];
  if (secretFile) {
    try {
      opts.initSecret = takeInitSecret(secretFile);
    } catch (e) {
      process.stderr.write(`envd: cannot read the init secret: ${(e as Error).message}\n`);
      process.exit(1);
    }
  }
  // The access token (needed by TCP) may come in the environment too; never passed on either.
  const token = process.env.ENVD_ACCESS_TOKEN;
  delete process.env.ENVD_ACCESS_TOKEN;
  if (token) opts.accessToken = token;
  // The host's tuning of envd's own process (malloc) is not for the processes it starts.
  for (const k of Object.keys(ENVD_ENV)) delete process.env[k];
  // Deterministic modes for what envd creates (dirs 0755, files 0644) and for its processes.
  process.umask(0o022);
  try {
    prepareMetadataStore(); // file metadata beside the files where the root keeps no attributes
  } catch (e) {
    process.stderr.write(`envd: no file metadata store: ${(e as Error).message}\n`);
  }
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
    // exits either way: a failed close must not keep a stopping envd alive
    void envd
      .close()
      .catch(() => undefined)
      .finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // After a restore from a checkpoint (see SUSPEND_SOCKET_PATH): listen on the socket again. A
  // restore may start a new sandbox from another's checkpoint (a memory snapshot): the host then
  // leaves a new secret in the file for it, taken before listening; without one the secret stays.
  process.on('SIGCONT', () => {
    if (envd.suspended() && secretFile) {
      try {
        opts.initSecret = takeInitSecret(secretFile);
      } catch {
        /* no new secret: the same sandbox restored */
      }
    }
    envd.resumeSocket().catch((e: Error) => process.stderr.write(`envd: cannot listen on its socket again: ${e.message}\n`));
  });
  process.on('SIGPIPE', () => {});
  process.on('uncaughtException', (e) => {
    process.stderr.write(`envd: uncaught exception: ${e?.stack ?? String(e)}\n`);
  });
  process.on('unhandledRejection', (e) => {
    process.stderr.write(`envd: unhandled rejection: ${(e as Error)?.stack ?? String(e)}\n`);
  });
}

// `envd.cjs --fs-worker`: a per-user filesystem worker (fs/user-fs.ts), when fs-worker.mjs is absent.
if (process.argv[2] === '--fs-worker') void import('./fs/worker-main.js').then((m) => m.runFsWorker());
else void main();
