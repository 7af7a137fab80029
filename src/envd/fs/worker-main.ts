/**
 * envd's filesystem worker (dist/envd/fs-worker.mjs, or `envd.cjs --fs-worker`). envd starts one per user, through
 * envd-exec, so it runs with that user's uid, gid and supplementary groups; it performs the
 * filesystem operations of that user's requests (fs/ops.ts LocalFs) and answers over its
 * stdin/stdout (fs/wire.ts). It exits when its stdin ends.
 */
import { errorToWire, LocalFs } from './ops.js';
import { encodeFrame, entryToWire, FrameReader, type Frame } from './wire.js';

// envd passes its exec helper, which also serves file metadata (fs/metadata.ts)
const fs = new LocalFs(process.env.ENVD_EXEC_HELPER || undefined);
const out = process.stdout;

function reply(json: unknown, bin?: Buffer): void {
  for (const part of encodeFrame(json, bin)) out.write(part);
}

async function run(op: string, a: unknown[], bin: Buffer | undefined): Promise<{ ok: unknown; bin?: Buffer }> {
  const s = (i: number) => String(a[i]);
  const n = (i: number) => Number(a[i]);
  switch (op) {
    case 'lstat':
      return { ok: (await fs.lstat(s(0))).toWire() };
    case 'stat':
      return { ok: (await fs.stat(s(0))).toWire() };
    case 'entry':
      return { ok: entryToWire(await fs.entry(s(0))) };
    case 'readdir':
      return { ok: await fs.readdir(s(0)) };
    case 'list':
      return { ok: (await fs.list(s(0), n(1))).map(entryToWire) };
    case 'mkdirp':
      return { ok: await fs.mkdirp(s(0)) };
    case 'move':
      return { ok: await fs.move(s(0), s(1)) };
    case 'remove':
      return { ok: await fs.remove(s(0)) };
    case 'setMetadata':
      return { ok: await fs.setMetadata(s(0), (a[1] ?? {}) as Record<string, string>) };
    case 'fsType':
      return { ok: (await fs.fsType(s(0))) ?? null };
    case 'openRead': {
      const r = await fs.openRead(s(0));
      return { ok: { h: r.h, stat: r.stat.toWire() } };
    }
    case 'openWrite':
      return { ok: await fs.openWrite(s(0)) };
    case 'read':
      return { ok: null, bin: await fs.read(n(0), n(1), n(2)) };
    case 'write':
      return { ok: await fs.write(n(0), bin ?? Buffer.alloc(0)) };
    case 'fstat':
      return { ok: (await fs.fstat(n(0))).toWire() };
    case 'close':
      return { ok: await fs.close(n(0)) };
    default:
      throw new Error(`unknown operation ${op}`);
  }
}

function handle(f: Frame): void {
  const id = f.json.id;
  const op = String(f.json.op);
  const args = Array.isArray(f.json.args) ? (f.json.args as unknown[]) : [];
  run(op, args, f.bin).then(
    (r) => reply({ id, ok: r.ok ?? null }, r.bin),
    (e: unknown) => reply({ id, err: errorToWire(e) }),
  );
}

/** Serve requests on stdin/stdout until stdin ends. */
export function runFsWorker(): void {
  process.umask(0o022);
  const reader = new FrameReader();
  process.stdin.on('data', (c: Buffer) => {
    try {
      reader.push(c, handle);
    } catch (e) {
      process.stderr.write(`envd fs worker: ${(e as Error).message}\n`);
      process.exit(1);
    }
  });
  process.stdin.on('end', () => {
    void fs.closeAll().finally(() => process.exit(0));
  });
  process.stdout.on('error', () => process.exit(0));
}
