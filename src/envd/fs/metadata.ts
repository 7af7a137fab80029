// File metadata, kept where E2B keeps it: on the file, as `user.e2b.<key>` extended attributes.
// So metadata given on upload (X-Metadata-* headers) and attributes set inside the sandbox
// (`setfattr -n user.e2b.author -v x f`, os.setxattr) are the same thing, and both follow the
// file through renames and snapshots. Node has no xattr calls: they go to `envd-exec --xattr`
// (exec-helper.c), the static helper every sandbox already has, started as a child of the
// process that needs it, so it works with that process's credentials (envd's for root, a
// user's file worker for that user). Its calls never follow the path's last component.
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';

/** What one file's metadata may hold (an ext4 inode keeps its attributes within one 4 KiB block). */
export const METADATA_LIMITS = { entries: 32, keyBytes: 128, valueBytes: 1024, totalBytes: 3072 };
/** What an answer of the helper may hold: its own bounds (64 attributes of 4 KiB at most), with room. */
const MAX_ANSWER = 512 * 1024;
const IDLE_MS = 30_000;

const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([name, n]) => [n, name]));

function errnoError(n: number, path: string): NodeJS.ErrnoException {
  const code = ERRNO_NAMES.get(n) ?? 'EIO';
  return Object.assign(new Error(`${code}: extended attributes of ${path}`), { code, errno: -n });
}

/** Why metadata breaks METADATA_LIMITS, or undefined when it fits. */
export function metadataProblem(meta: Record<string, string>): string | undefined {
  const entries = Object.entries(meta);
  if (entries.length > METADATA_LIMITS.entries) return `at most ${METADATA_LIMITS.entries} metadata entries, got ${entries.length}`;
  let total = 0;
  for (const [k, v] of entries) {
    const kb = Buffer.byteLength(k);
    const vb = Buffer.byteLength(v);
    if (kb === 0 || kb > METADATA_LIMITS.keyBytes || k.includes('\0'))
      return `metadata key '${k.slice(0, 40)}' must have 1 to ${METADATA_LIMITS.keyBytes} bytes`;
    if (vb > METADATA_LIMITS.valueBytes) return `metadata value of '${k}' is over ${METADATA_LIMITS.valueBytes} bytes`;
    total += kb + vb;
  }
  if (total > METADATA_LIMITS.totalBytes) return `metadata is ${total} bytes, at most ${METADATA_LIMITS.totalBytes}`;
  return undefined;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n);
  return b;
}

function field(data: Buffer): Buffer[] {
  return [u32(data.length), data];
}

interface Pending {
  path: string;
  resolve(answer: Buffer): void;
  reject(e: Error): void;
}

/** One `envd-exec --xattr` child; requests are answered in order. */
export class XattrClient {
  private child?: ChildProcess;
  private readonly queue: Pending[] = [];
  private buf = Buffer.alloc(0);
  private idle?: NodeJS.Timeout;

  /** helper: envd-exec's path; without one, files have no metadata and setting some fails. */
  constructor(private readonly helper: string | undefined) {}

  /** The file's metadata (user.e2b.* attributes), undefined when it has none. */
  async get(path: string): Promise<Record<string, string> | undefined> {
    if (!this.helper) return undefined;
    const a = await this.call('G', [Buffer.from(path)], path);
    const n = a.readUInt32BE(0);
    let at = 4;
    const out: Record<string, string> = {};
    const next = () => {
      const len = a.readUInt32BE(at);
      const s = a.subarray(at + 4, at + 4 + len).toString('utf8');
      at += 4 + len;
      return s;
    };
    for (let i = 0; i < n; i++) {
      const k = next();
      out[k] = next();
    }
    return n ? out : undefined;
  }

  /** Sets exactly this metadata on the file (the other user.e2b.* attributes go). */
  async set(path: string, meta: Record<string, string>): Promise<void> {
    const entries = Object.entries(meta);
    if (!this.helper) {
      if (entries.length) throw Object.assign(new Error('file metadata needs envd-exec next to envd'), { code: 'ENOTSUP' });
      return;
    }
    const parts = [...field(Buffer.from(path)), u32(entries.length), ...entries.flatMap(([k, v]) => [...field(Buffer.from(k)), ...field(Buffer.from(v))])];
    await this.call('S', parts, path);
  }

  private call(op: 'G' | 'S', parts: Buffer[], path: string): Promise<Buffer> {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    const child = (this.child ??= this.start());
    const body = Buffer.concat(parts);
    const head = Buffer.allocUnsafe(5);
    head.writeUInt8(op.charCodeAt(0), 0);
    head.writeUInt32BE(body.length, 1);
    return new Promise<Buffer>((resolve, reject) => {
      this.queue.push({ path, resolve, reject });
      child.stdin?.write(Buffer.concat([head, body]));
    });
  }

  private start(): ChildProcess {
    const child = spawn(this.helper as string, ['--xattr'], { stdio: ['pipe', 'pipe', 'ignore'], cwd: '/', env: {} });
    this.buf = Buffer.alloc(0);
    child.stdin?.on('error', () => {});
    child.stdout?.on('data', (c: Buffer) => this.onData(child, c));
    child.on('error', (e) => this.fail(child, e));
    child.on('exit', (code, sig) => this.fail(child, Object.assign(new Error(`the xattr helper stopped (${code ?? sig})`), { code: 'EIO' })));
    return child;
  }

  private onData(child: ChildProcess, chunk: Buffer): void {
    this.buf = Buffer.concat([this.buf, chunk]);
    while (this.buf.length >= 8) {
      const err = this.buf.readUInt32BE(0);
      const len = this.buf.readUInt32BE(4);
      if (len > MAX_ANSWER) {
        child.kill('SIGKILL');
        return this.fail(child, Object.assign(new Error('the xattr helper answered too much'), { code: 'EIO' }));
      }
      if (this.buf.length < 8 + len) return;
      const answer = this.buf.subarray(8, 8 + len);
      this.buf = this.buf.subarray(8 + len);
      const p = this.queue.shift();
      if (!p) continue;
      if (err) p.reject(errnoError(err, p.path));
      else p.resolve(Buffer.from(answer));
    }
    this.armIdle();
  }

  private armIdle(): void {
    if (this.queue.length || !this.child) return;
    this.idle = setTimeout(() => this.close(), IDLE_MS);
    this.idle.unref();
  }

  private fail(child: ChildProcess, e: Error): void {
    if (this.child !== child) return;
    this.child = undefined;
    for (const p of this.queue.splice(0)) p.reject(e);
  }

  /** Ends the helper (it exits when its stdin ends). */
  close(): void {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    const c = this.child;
    this.child = undefined;
    if (!c) return;
    for (const p of this.queue.splice(0)) p.reject(Object.assign(new Error('the xattr helper was stopped'), { code: 'EIO' }));
    c.stdin?.end();
  }
}
