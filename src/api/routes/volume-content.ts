// E2B's volume content API: /volumecontent/{volumeID}/dir (list, mkdir), /path (stat, owner
// and mode, remove) and /file (read, streaming write), exactly as the SDK's Volume calls it
// (E2B_VOLUME_API_URL; here the same service). It authenticates with the volume's own token
// (Authorization: Bearer), not an API key: the control plane's key check skips these paths.
// Every path is resolved inside the volume without following links (volume/content.ts).
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CubeboxError, errorMessage, HTTP_STATUS } from '../../util/errors.js';
import { checkAttrs, ContentError, type Attrs, type VolumeFs } from '../../volume/content.js';
import type { VolumeRow } from '../../volume/volumes.js';
import type { ErrorLog, VolumesApi } from '../node-api.js';
import { sendError } from './context.js';

type ContentReq = FastifyRequest<{ Params: { volumeID: string }; Querystring: Record<string, string | string[] | undefined>; Body: unknown }>;
type Op = (v: { fs: VolumeFs; row: VolumeRow }, req: ContentReq, reply: FastifyReply) => Promise<unknown>;

const ERRNO_STATUS: Record<string, number> = {
  ENOENT: 404,
  EEXIST: 409,
  ENOTEMPTY: 409,
  EISDIR: 409,
  ENOTDIR: 400,
  ELOOP: 400,
  ENXIO: 400, // a socket or a FIFO with no reader: not a file
  ENAMETOOLONG: 400,
  ENOSPC: 507,
  EDQUOT: 507,
  EFBIG: 413,
};

/** blocked: a team without a live API key (its volumes answer 403 here, as its sandboxes do on the data plane). */
export function registerVolumeContentRoutes(
  app: FastifyInstance,
  volumes: Pick<VolumesApi, 'open'>,
  log: ErrorLog,
  blocked: (team: string | null) => boolean,
): void {
  const fail = (reply: FastifyReply, err: unknown) => {
    if (reply.sent || reply.raw.destroyed) return reply;
    if (err instanceof ContentError) return sendError(reply, err.status, err.message);
    if (err instanceof CubeboxError) return sendError(reply, HTTP_STATUS[err.kind], err.message);
    const code = (err as NodeJS.ErrnoException).code;
    const status = (code && ERRNO_STATUS[code]) || 500;
    if (status === 507) return sendError(reply, 507, 'the volume is full');
    if (status >= 500) log.error({ err: errorMessage(err) }, 'volume content request failed');
    return sendError(reply, status, errorMessage(err).replace(/\/proc\/self\/fd\/\d+\/?/g, ''));
  };

  const handle =
    (op: Op) =>
    async (req: ContentReq, reply: FastifyReply): Promise<unknown> => {
      const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
      if (!m) return sendError(reply, 401, "the volume content API needs the volume's token: Authorization: Bearer <token>");
      const cut = () => {
        req.raw.destroy();
        reply.raw.destroy();
      };
      let v;
      try {
        v = volumes.open(req.params.volumeID, m[1]!, cut);
      } catch (err) {
        return fail(reply, err);
      }
      if (!v) return sendError(reply, 404, `volume '${req.params.volumeID}' not found`);
      if (blocked(v.row.team)) {
        v.done();
        return sendError(reply, 403, `volume '${req.params.volumeID}' is blocked: its team has no live API key`);
      }
      reply.raw.once('close', v.done); // a read streams on after the handler returns
      try {
        return await op(v, req, reply);
      } catch (err) {
        return fail(reply, err);
      }
    };

  app.register(async (sub) => {
    // uploads stay streams: never parsed, never buffered (volume/content.ts bounds them)
    sub.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

    sub.get(
      '/volumecontent/:volumeID/dir',
      handle(async ({ fs }, req) => fs.list(q(req, 'path'), num(req, 'depth', 1, 64) ?? 1)),
    );
    sub.post(
      '/volumecontent/:volumeID/dir',
      handle(async ({ fs }, req, reply) => reply.code(201).send(fs.mkdir(q(req, 'path'), attrsOf(req), bool(req, 'force')))),
    );
    sub.get(
      '/volumecontent/:volumeID/path',
      handle(async ({ fs }, req) => fs.stat(q(req, 'path'))),
    );
    sub.patch(
      '/volumecontent/:volumeID/path',
      handle(async ({ fs }, req) => {
        const b = req.body;
        if (b === null || typeof b !== 'object' || Array.isArray(b)) throw new ContentError(400, 'request body must be a JSON object of uid, gid and mode');
        const { uid, gid, mode } = b as Record<string, unknown>;
        const pick = (k: string, x: unknown) => {
          if (x === undefined || x === null) return undefined;
          if (typeof x !== 'number') throw new ContentError(400, `${k} must be a number`);
          return x;
        };
        return fs.setattr(q(req, 'path'), checkAttrs({ uid: pick('uid', uid), gid: pick('gid', gid), mode: pick('mode', mode) }));
      }),
    );
    sub.delete(
      '/volumecontent/:volumeID/path',
      handle(async ({ fs }, req, reply) => {
        fs.remove(q(req, 'path'));
        return reply.code(204).send();
      }),
    );
    sub.get(
      '/volumecontent/:volumeID/file',
      handle(async ({ fs }, req, reply) => {
        const { size, stream } = fs.read(q(req, 'path'));
        return reply
          .type('application/octet-stream')
          .header('content-length', size)
          .send(stream ?? Buffer.alloc(0));
      }),
    );
    sub.put(
      '/volumecontent/:volumeID/file',
      handle(async ({ fs, row }, req) => {
        const max = row.sizeMB * 1024 * 1024;
        const declared = Number(req.headers['content-length'] ?? 0);
        if (declared > max) throw new ContentError(413, `the upload (${declared} bytes) is larger than the volume (${max} bytes)`);
        const body = req.body instanceof Readable ? req.body : Readable.from([]);
        return fs.write(q(req, 'path'), body, max, attrsOf(req), bool(req, 'force'));
      }),
    );
  });
}

/** A query parameter (its last value when repeated). */
function q(req: ContentReq, key: string): string | undefined {
  const v = req.query[key];
  return Array.isArray(v) ? v[v.length - 1] : v;
}

function num(req: ContentReq, key: string, min: number, max: number): number | undefined {
  const v = q(req, key);
  if (v === undefined || v === '') return undefined;
  if (!/^\d{1,10}$/.test(v) || Number(v) < min || Number(v) > max) throw new ContentError(400, `${key} must be an integer from ${min} to ${max}`);
  return Number(v);
}

function bool(req: ContentReq, key: string): boolean {
  const v = q(req, key);
  if (v === undefined || v === '' || v === 'false') return false;
  if (v === 'true') return true;
  throw new ContentError(400, `${key} must be true or false`);
}

function attrsOf(req: ContentReq): Attrs {
  return checkAttrs({ uid: num(req, 'uid', 0, 65535), gid: num(req, 'gid', 0, 65535), mode: num(req, 'mode', 0, 0o7777) });
}
