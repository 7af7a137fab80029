// What the host and envd agree on outside E2B's protocol.

/**
 * The header that carries the per-boot secret envd requires on /init. Only the host knows
 * it: where a request arrived from (socket or TCP) proves nothing, since the proxy forwards
 * clients to the same socket.
 */
export const INIT_SECRET_HEADER = 'x-cubebox-init-secret';

/**
 * The environment variable that names the file holding that secret at boot (the path, never
 * the secret: a process's initial environment stays readable in /proc/<pid>/environ for its
 * whole life). envd reads the file once, unlinks it, and fails to start without it.
 */
export const INIT_SECRET_FILE_ENV = 'CUBEBOX_ENVD_INIT_SECRET_FILE';

/** The file's name in envd's run directory (shared with the host, on the sandbox's own disk). */
export const INIT_SECRET_FILE = 'init-secret';

/**
 * What the host adds to envd's environment (the template's own is there too): one malloc arena,
 * as envd's threads (V8's platform workers, libuv's pool) are idle nearly always and an arena
 * each costs about 1 MB of dirty memory per sandbox once they ran. envd removes these from its
 * environment at start; the processes it starts get an environment of their own anyway.
 */
export const ENVD_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '1' };

/**
 * Node's flags for envd (its file workers inherit them): a young generation of 1 MiB, and V8's
 * lite mode (no optimizing compilers, feedback allocated lazily). envd's work is I/O in Node's
 * C++ (HTTP parsing, streams, spawns), so lite mode costs it nothing measurable, and an envd
 * that has served 50 commands holds about 1 MiB more than a fresh one instead of about 8 (and
 * uses less CPU per command); `cubebox bench --only floor` measures both. Lite mode cannot run
 * WebAssembly (nothing in envd uses it): exposing it is turned off first, which also keeps Node
 * from printing that it disabled it.
 */
export const ENVD_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1', '--no-expose-wasm', '--lite-mode'];

/**
 * The host's request before it checkpoints the sandbox: a runtime that saves a sandbox to disk
 * (gVisor) cannot save a listening socket bound on the host, so envd lets go of its socket
 * (after answering) and listens again when it gets SIGCONT after the restore. It needs the
 * INIT_SECRET_HEADER: only the host may ask.
 */
export const SUSPEND_SOCKET_PATH = '/cubebox/suspend-socket';
