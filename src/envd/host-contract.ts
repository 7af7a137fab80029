// What the host and envd agree on outside E2B's protocol.

/**
 * The header that carries the per-boot secret envd requires on /init. Only the host knows
 * it: where a request arrived from (socket or TCP) proves nothing, since the proxy forwards
 * clients to the same socket.
 */
export const INIT_SECRET_HEADER = 'x-cubebox-init-secret';

/** The environment variable that gives envd that secret at boot; envd removes it from its env. */
export const INIT_SECRET_ENV = 'CUBEBOX_ENVD_INIT_SECRET';

/**
 * What the host adds to envd's environment (the template's own is there too): one malloc arena,
 * as envd's threads (V8's platform workers, libuv's pool) are idle nearly always and an arena
 * each costs about 1 MB of dirty memory per sandbox once they ran. envd removes these from its
 * environment at start; the processes it starts get an environment of their own anyway.
 */
export const ENVD_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '1' };
