// `cubebox serve`: the configuration (config.ts), the node (node.ts) or an API replica
// (replica.ts, --role api), and the signals that stop it.
import { serveConfig, type ServeFlags } from './config.js';
import { startService } from './node.js';
import { startReplica } from './replica.js';

export { DEFAULT_FD_RESERVE, DEFAULT_POOL, DEFAULT_SHUTDOWN_TIMEOUT_SEC, parsePool, serveConfig, type ServeConfig, type ServeFlags } from './config.js';
export { startService, type RunningService } from './node.js';

/** `cubebox serve`: starts the service and exits 0 after a graceful stop on SIGTERM or SIGINT. */
export async function serve(flags: ServeFlags): Promise<void> {
  const config = serveConfig(flags);
  const service = config.role === 'api' ? await startReplica(config) : await startService(config);
  const stop = async (signal: string) => {
    service.log.info({ signal }, 'shutting down; sandboxes keep running');
    // a last resort past every step's bound: the process ends whatever still runs
    setTimeout(() => {
      service.log.error('shutdown did not finish in time; exiting');
      process.exit(1);
    }, config.shutdownTimeoutMs + 10_000).unref();
    await service.close();
    process.exit(0);
  };
  const onSignal = (signal: string) => {
    stop(signal).catch((err: unknown) => {
      service.log.error({ err }, 'shutdown failed');
      process.exit(1);
    });
  };
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  process.once('SIGINT', () => onSignal('SIGINT'));
}
