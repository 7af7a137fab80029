// The files builds copy in, as E2B's SDK uploads them: one tar (gzipped or not) per content hash,
// kept per team (a team never reads another's), written under a temporary name, checked
// (size, paths inside the context) and only then put in place.
import { createHmac, randomBytes } from 'node:crypto';
import { closeSync, createReadStream, createWriteStream, existsSync, mkdirSync, openSync, readSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { CubeboxError, invalid } from '../util/errors.js';
import { randomId } from '../util/ids.js';
import type { FileSource } from './steps.js';
import { checkTar } from './tar-check.js';

export const HASH_RE = /^[a-f0-9]{64}$/;

export interface UploadLimits {
  /** The upload itself, bytes. */
  maxUploadBytes: number;
  /** Its content unpacked, bytes. */
  maxUnpackedBytes: number;
  maxEntries: number;
}

export const DEFAULT_UPLOAD_LIMITS: UploadLimits = { maxUploadBytes: 512 * 1024 * 1024, maxUnpackedBytes: 2048 * 1024 * 1024, maxEntries: 200_000 };

const LINK_TTL_MS = 60 * 60 * 1000;

export class BuildFiles {
  /** Signs upload links (a new key per start: links are short-lived). */
  private readonly key = randomBytes(32);

  constructor(
    private readonly dir: string,
    private readonly limits: UploadLimits = DEFAULT_UPLOAD_LIMITS,
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  private teamDir(team: string | null): string {
    return join(this.dir, team ? `t-${team}` : 'host');
  }

  private path(team: string | null, hash: string): string {
    if (!HASH_RE.test(hash)) throw invalid(`'${hash.slice(0, 80)}' is not a files hash (64 hex digits)`);
    return join(this.teamDir(team), `${hash}.tar`);
  }

  present(team: string | null, hash: string): boolean {
    return existsSync(this.path(team, hash));
  }

  /** The files of a hash, for a copy step; undefined when they were never uploaded. */
  source(team: string | null, hash: string): FileSource | undefined {
    const file = this.path(team, hash);
    if (!existsSync(file)) return undefined;
    return {
      hash,
      open(): Readable {
        // gunzip when the upload is gzipped (the SDK's default), else the tar as it is
        const head = Buffer.alloc(2);
        const fd = openSync(file, 'r');
        try {
          readSync(fd, head, 0, 2, 0);
        } finally {
          closeSync(fd);
        }
        const raw = createReadStream(file);
        if (head[0] !== 0x1f || head[1] !== 0x8b) return raw;
        const gunzip = createGunzip();
        raw.on('error', (e) => gunzip.destroy(e));
        return raw.pipe(gunzip);
      },
    };
  }

  /** A token for the upload link of one team's hash (valid an hour). */
  token(team: string | null, hash: string): string {
    this.path(team, hash);
    const body = Buffer.from(JSON.stringify({ t: team, h: hash, e: Date.now() + LINK_TTL_MS })).toString('base64url');
    return `${body}.${createHmac('sha256', this.key).update(body).digest('base64url')}`;
  }

  /** The team and hash a token names; undefined when it is not one of ours or has expired. */
  verify(token: string): { team: string | null; hash: string } | undefined {
    const [body, mac] = token.split('.');
    if (!body || !mac || createHmac('sha256', this.key).update(body).digest('base64url') !== mac) return undefined;
    try {
      const v = JSON.parse(Buffer.from(body, 'base64url').toString()) as { t: string | null; h: string; e: number };
      return v.e > Date.now() && HASH_RE.test(v.h) ? { team: v.t, hash: v.h } : undefined;
    } catch {
      return undefined;
    }
  }

  /** Takes an upload: bounded, checked, then kept under its hash (an upload of a known hash replaces it). */
  async receive(team: string | null, hash: string, body: Readable): Promise<void> {
    const dest = this.path(team, hash);
    mkdirSync(this.teamDir(team), { recursive: true, mode: 0o700 });
    const tmp = join(this.teamDir(team), `.tmp-${randomId(12)}`);
    try {
      await new Promise<void>((resolve, reject) => {
        const out = createWriteStream(tmp, { mode: 0o600 });
        let n = 0;
        body.on('data', (d: Buffer) => {
          n += d.length;
          if (n > this.limits.maxUploadBytes) {
            body.destroy();
            out.destroy();
            reject(new CubeboxError('invalid_argument', `the upload is larger than ${Math.round(this.limits.maxUploadBytes / 1048576)} MiB`));
          }
        });
        body.on('error', reject);
        out.on('error', reject);
        out.on('finish', resolve);
        body.pipe(out);
      });
      const bad = await checkTar(tmp, { maxEntries: this.limits.maxEntries, maxBytes: this.limits.maxUnpackedBytes });
      if (bad) throw invalid(bad);
      renameSync(tmp, dest);
    } finally {
      rmSync(tmp, { force: true });
    }
  }
}
