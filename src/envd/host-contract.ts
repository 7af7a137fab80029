// What the host and envd agree on outside E2B's protocol.

/**
 * The header that carries the per-boot secret envd requires on /init. Only the host knows
 * it: where a request arrived from (socket or TCP) proves nothing, since the proxy forwards
 * clients to the same socket.
 */
export const INIT_SECRET_HEADER = 'x-cubebox-init-secret';

/** The environment variable that gives envd that secret at boot; envd removes it from its env. */
export const INIT_SECRET_ENV = 'CUBEBOX_ENVD_INIT_SECRET';
