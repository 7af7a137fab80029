// What envd loads on its first real request rather than at start: the Connect services (with
// their protobuf descriptors), the process manager, the per-user filesystem, /files and
// /metrics. /health and /init never need them, so envd listens sooner and an idle sandbox that
// never runs a command never pays for them (server.ts loads this module once, on demand).
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Code, ConnectError, type Interceptor } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { Filesystem } from '../gen/filesystem/filesystem_pb.js';
import { Process } from '../gen/process/process_pb.js';
import { checkToken } from '../auth.js';
import { UserFs } from '../fs/user-fs.js';
import { filesystemService } from '../fs/service.js';
import { ProcessManager } from '../process/manager.js';
import { processService } from '../process/service.js';
import type { EnvdState } from '../state.js';
import { handleDownload, handleUpload } from './files.js';
import { MetricsCollector } from './metrics.js';

export interface Services {
  processes: ProcessManager;
  userFs: UserFs;
  metrics: MetricsCollector;
  connect(req: IncomingMessage, res: ServerResponse): void;
  download(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void>;
  upload(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void>;
  close(): void;
}

export function createServices(state: EnvdState): Services {
  const opts = state.opts;
  const userFs = new UserFs(opts.helperPath);
  const pm = new ProcessManager(opts.helperPath);
  const metrics = new MetricsCollector(opts.cgroupRoot);

  const auth: Interceptor = (next) => async (req) => {
    const err = checkToken(state, req.header.get('x-access-token'));
    if (err) throw new ConnectError(err, Code.Unauthenticated);
    return next(req);
  };

  const connect = connectNodeAdapter({
    routes: (router) => {
      router.service(Process, processService(state, pm));
      router.service(Filesystem, filesystemService(state, { users: state.users, fs: userFs }));
    },
    connect: true,
    grpc: false,
    grpcWeb: false,
    acceptCompression: [],
    readMaxBytes: 64 * 1024 * 1024,
    jsonOptions: { alwaysEmitImplicit: true, ignoreUnknownFields: true },
    interceptors: [auth],
  });

  return {
    processes: pm,
    userFs,
    metrics,
    connect,
    download: (req, res, url) => handleDownload(state, userFs, req, res, url),
    upload: (req, res, url) => handleUpload(state, userFs, req, res, url),
    close() {
      pm.killAll();
      userFs.close();
    },
  };
}
