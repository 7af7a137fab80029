// File metadata (X-Metadata-* on upload), kept per file identity (device, inode and birth time,
// so a reused inode does not inherit it) and persisted as JSON in envd's state directory.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface FileIdentity {
  dev: bigint | number;
  ino: bigint | number;
  birthtimeNs?: bigint;
}

interface Record_ {
  b: string;
  m: Record<string, string>;
}

export class MetadataStore {
  private entries = new Map<string, Record_>();
  private saveTimer?: NodeJS.Timeout;
  private readonly file?: string;

  constructor(stateDir: string | undefined) {
    if (!stateDir) return;
    this.file = join(stateDir, 'metadata.json');
    try {
      const data = JSON.parse(readFileSync(this.file, 'utf8')) as Record<string, Record_>;
      for (const [k, v] of Object.entries(data)) if (v && typeof v === 'object' && v.m) this.entries.set(k, v);
    } catch {
      /* none yet */
    }
  }

  private key(id: FileIdentity): string {
    return `${id.dev}:${id.ino}`;
  }

  get(id: FileIdentity): Record<string, string> | undefined {
    const k = this.key(id);
    const r = this.entries.get(k);
    if (!r) return undefined;
    if (r.b !== String(id.birthtimeNs ?? 0)) {
      this.entries.delete(k);
      this.scheduleSave();
      return undefined;
    }
    return r.m;
  }

  set(id: FileIdentity, metadata: Record<string, string>): void {
    const k = this.key(id);
    if (Object.keys(metadata).length === 0) this.entries.delete(k);
    else this.entries.set(k, { b: String(id.birthtimeNs ?? 0), m: metadata });
    this.scheduleSave();
  }

  private scheduleSave(): void {
    if (!this.file || this.saveTimer) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = undefined;
      this.flush();
    }, 50);
    this.saveTimer.unref();
  }

  flush(): void {
    if (!this.file) return;
    try {
      mkdirSync(join(this.file, '..'), { recursive: true, mode: 0o700 });
      const tmp = `${this.file}.tmp`;
      writeFileSync(tmp, JSON.stringify(Object.fromEntries(this.entries)), { mode: 0o600 });
      renameSync(tmp, this.file);
    } catch (e) {
      process.stderr.write(`envd: cannot save file metadata: ${(e as Error).message}\n`);
    }
  }
}
