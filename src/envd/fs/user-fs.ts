// Filesystem operations with a user's credentials. envd is root; a request that acts as another
// user goes to that user's worker process (fs/worker-main.ts), started through envd-exec with the
// user's uid, gid and supplementary groups, so that the kernel checks every access exactly as for
// that user's own programs, and what it creates is the user's. One worker per distinct
// (uid, gid, groups), started on first use, ended after a while without work. Only missing
// directories on the way to a write are made by envd itself, for the user (parents.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { ENVD_ENV } from '../host-contract.js';
import type { UserInfo } from '../users.js';
import { errorFromWire, FileStat, LocalFs, type FsOps, type PathEntry, type WireError } from './ops.js';
import { makeMissingDirs } from './parents.js';
import { encodeFrame, entryFromWire, FrameReader, type Frame, type WireEntry } from './wire.js';

const IDLE_MS = 30_000;

/** How this process was started up to its script (e.g. the dynamic loader, its flags and node). */
function nodeLauncher(): string[] {
  try {
    const argv = readFileSync('/proc/self/cmdline', 'utf8').split('\0');
    const script = process.argv[1];
    const i = script ? argv.indexOf(script) : -1;
    if (i > 0) return argv.slice(0, i).filter((a) => !a.startsWith('--inspect'));
  } catch {
    /* no /proc */
  }
  return [process.execPath];
}

interface Pending {
  resolve(f: Frame): void;
  reject(e: Error): void;
}

class WorkerFs implements FsOps {
  private child?: ChildProcess;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private openFiles = 0;
  private idle?: NodeJS.Timeout;

  constructor(
    private readonly user: UserInfo,
    private readonly argv: () => string[],
    private readonly helperPath: string,
  ) {}

  get uid(): number {
    return this.user.uid;
  }

  private start(): ChildProcess {
    const [file, ...args] = this.argv();
    const child = spawn(file as string, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      // envd's own helper, tuned like envd (host-contract.ts)
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ENVD_EXEC_HELPER: this.helperPath, ...ENVD_ENV },
      cwd: '/',
    });
    const reader = new FrameReader();
    let stderr = '';
    child.stdout?.on('data', (c: Buffer) => {
      try {
        reader.push(c, (f) => {
          const id = Number(f.json.id);
          const p = this.pending.get(id);
          if (!p) return;
          this.pending.delete(id);
          p.resolve(f);
          this.armIdle();
        });
      } catch (e) {
        child.kill('SIGKILL');
        this.failAll(child, e as Error);
      }
    });
    child.stderr?.on('data', (c: Buffer) => {
      if (stderr.length < 4096) stderr += c.toString();
    });
    child.stdin?.on('error', () => {});
    child.on('error', (e) => this.failAll(child, e));
    child.on('exit', (code, sig) => {
      const why = stderr.trim() || `exit ${code ?? sig}`;
      this.failAll(child, Object.assign(new Error(`the file worker of ${this.user.name} stopped: ${why}`), { code: 'EIO' }));
    });
    return child;
  }

  private failAll(child: ChildProcess, e: Error): void {
    if (this.child !== child) return;
    this.child = undefined;
    this.openFiles = 0;
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(e);
  }

  private armIdle(): void {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    if (this.pending.size || this.openFiles || !this.child) return;
    this.idle = setTimeout(() => this.stop(), IDLE_MS);
    this.idle.unref();
  }

  stop(): void {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    const c = this.child;
    if (!c) return;
    // Ending stdin makes the worker close its files and exit.
    if (!this.pending.size && !this.openFiles) c.stdin?.end();
    else c.kill('SIGKILL');
  }

  private call(op: string, args: unknown[], bin?: Buffer): Promise<Frame> {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
    if (!this.child) this.child = this.start();
    const child = this.child;
    const id = this.nextId++;
    return new Promise<Frame>((resolve, reject) => {
      this.pending.set(id, {
        resolve: (f) => (f.json.err ? reject(errorFromWire(f.json.err as WireError)) : resolve(f)),
        reject,
      });
      for (const part of encodeFrame({ id, op, args }, bin)) child.stdin?.write(part);
    });
  }

  private async value<T>(op: string, ...args: unknown[]): Promise<T> {
    return (await this.call(op, args)).json.ok as T;
  }

  /**
   * The missing directories of `dir`, made by envd for the user (parents.ts) after the user's
   * own attempt was refused; whether any were made (else the refusal stands).
   */
  private async madeMissingDirs(dir: string, refusal: unknown): Promise<boolean> {
    const code = (refusal as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') return false;
    // the user may enter a directory when its path resolves through it ("<dir>/." needs search permission)
    const mayEnter = (existing: string) =>
      this.stat(existing === '/' ? '/.' : `${existing}/.`).then(
        () => true,
        () => false,
      );
    return makeMissingDirs(dir, this.user.uid, this.user.gid, mayEnter).catch(() => false);
  }

  /** op as the user; refused for lack of permission, once more after envd made dir's missing directories. */
  private async inMissingDirs<T>(dir: string, op: () => Promise<T>): Promise<T> {
    try {
      return await op();
    } catch (e) {
      if (!(await this.madeMissingDirs(dir, e))) throw e;
      return op();
    }
  }

  async lstat(p: string): Promise<FileStat> {
    return FileStat.fromWire(await this.value<string[]>('lstat', p));
  }
  async stat(p: string): Promise<FileStat> {
    return FileStat.fromWire(await this.value<string[]>('stat', p));
  }
  async entry(p: string): Promise<PathEntry> {
    return entryFromWire(await this.value<WireEntry>('entry', p));
  }
  readdir(p: string): Promise<string[]> {
    return this.value<string[]>('readdir', p);
  }
  async list(root: string, depth: number): Promise<PathEntry[]> {
    return (await this.value<WireEntry[]>('list', root, depth)).map(entryFromWire);
  }
  async mkdirp(p: string): Promise<boolean> {
    try {
      return await this.value<boolean>('mkdirp', p);
    } catch (e) {
      if (await this.madeMissingDirs(p, e)) return true;
      throw e;
    }
  }
  async move(src: string, dst: string): Promise<void> {
    await this.inMissingDirs(posix.dirname(dst), () => this.call('move', [src, dst]));
  }
  async remove(p: string): Promise<void> {
    await this.call('remove', [p]);
  }
  async fsType(p: string): Promise<number | undefined> {
    return (await this.value<number | null>('fsType', p)) ?? undefined;
  }
  async setMetadata(p: string, metadata: Record<string, string>): Promise<void> {
    await this.call('setMetadata', [p, metadata]);
  }
  async openRead(p: string): Promise<{ h: number; stat: FileStat }> {
    const r = await this.value<{ h: number; stat: string[] }>('openRead', p);
    this.openFiles++;
    return { h: r.h, stat: FileStat.fromWire(r.stat) };
  }
  async openWrite(p: string): Promise<{ h: number }> {
    const r = await this.inMissingDirs(posix.dirname(p), () => this.value<{ h: number }>('openWrite', p));
    this.openFiles++;
    return r;
  }
  async read(h: number, position: number, length: number): Promise<Buffer> {
    return (await this.call('read', [h, position, length])).bin ?? Buffer.alloc(0);
  }
  async write(h: number, data: Buffer): Promise<void> {
    await this.call('write', [h], data);
  }
  async fstat(h: number): Promise<FileStat> {
    return FileStat.fromWire(await this.value<string[]>('fstat', h));
  }
  async close(h: number): Promise<void> {
    try {
      await this.call('close', [h]);
    } finally {
      this.openFiles = Math.max(0, this.openFiles - 1);
      this.armIdle();
    }
  }
}

/** The FsOps of each user. */
export class UserFs {
  private readonly local: LocalFs;
  private readonly workers = new Map<string, WorkerFs>();
  private readonly launcher = nodeLauncher();
  /** The worker's script and arguments: fs-worker.mjs next to the helper, or envd's own bundle. */
  private readonly workerScript?: string[];

  constructor(private readonly helperPath: string | undefined) {
    this.local = new LocalFs(helperPath);
    if (helperPath) {
      const w = join(dirname(helperPath), 'fs-worker.mjs');
      if (existsSync(w)) this.workerScript = [w];
      else if (process.argv[1] && /\.[cm]?js$/.test(process.argv[1])) this.workerScript = [process.argv[1], '--fs-worker'];
    }
  }

  /** The operations as `user`: in envd itself when envd already has the user's credentials (root). */
  for(user: UserInfo): FsOps {
    const self = process.getuid?.() ?? 0;
    if (user.uid === self && (self !== 0 || user.uid === 0)) return this.local;
    if (!this.helperPath || !this.workerScript) {
      throw Object.assign(new Error('file operations as another user need envd-exec and fs-worker.mjs next to envd'), { code: 'EPERM' });
    }
    const key = `${user.uid}:${user.gid}:${user.groups.join(',')}`;
    let w = this.workers.get(key);
    if (!w) {
      const helper = this.helperPath;
      const script = this.workerScript;
      const groups = user.groups.length ? user.groups.join(',') : '-';
      w = new WorkerFs(user, () => [helper, String(user.uid), String(user.gid), groups, '/', ...this.launcher, ...script], helper);
      this.workers.set(key, w);
    }
    return w;
  }

  close(): void {
    for (const w of this.workers.values()) w.stop();
    this.workers.clear();
    void this.local.closeAll();
  }
}
