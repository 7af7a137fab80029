// A streaming multipart/form-data parser (RFC 7578): parts are handed over in pieces as they
// arrive, and the parser waits for each handler, so a large upload is never held in memory.

export interface PartInfo {
  name?: string;
  filename?: string;
  contentType?: string;
}

export interface PartHandlers {
  begin(part: PartInfo): Promise<void> | void;
  data(chunk: Buffer): Promise<void> | void;
  end(): Promise<void> | void;
}

export class MultipartError extends Error {}

const CRLF = Buffer.from('\r\n');
const HEADER_END = Buffer.from('\r\n\r\n');
const MAX_HEADER_BYTES = 64 * 1024;

/** The boundary parameter of a multipart/form-data Content-Type, if it is one. */
export function multipartBoundary(contentType: string | undefined): string | undefined {
  if (!contentType || !/^\s*multipart\/form-data\s*(;|$)/i.test(contentType)) return undefined;
  const m = /;\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  return m ? (m[1] ?? m[2]) : undefined;
}

function unquote(v: string): string {
  // Browsers and undici percent-encode ", CR and LF in names; a backslash escapes otherwise.
  return v.replace(/\\(.)/g, '$1').replace(/%22/g, '"').replace(/%0D/gi, '\r').replace(/%0A/gi, '\n');
}

export function parseContentDisposition(value: string): { name?: string; filename?: string } {
  const out: { name?: string; filename?: string } = {};
  const re = /;\s*([^=;\s]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))/g;
  let m: RegExpExecArray | null;
  let extFilename: string | undefined;
  while ((m = re.exec(value))) {
    const key = (m[1] ?? '').toLowerCase();
    const raw = m[2] !== undefined ? unquote(m[2]) : (m[3] ?? '').trim();
    if (key === 'name') out.name = raw;
    else if (key === 'filename') out.filename = raw;
    else if (key === 'filename*') {
      const ext = /^([^']*)'[^']*'(.*)$/.exec(raw);
      try {
        extFilename = decodeURIComponent(ext ? (ext[2] ?? '') : raw);
      } catch {
        /* ignore a malformed extended value */
      }
    }
  }
  if (extFilename !== undefined) out.filename = extFilename;
  return out;
}

type State = 'preamble' | 'afterBoundary' | 'headers' | 'body' | 'done';

export class MultipartParser {
  private buf: Buffer = Buffer.alloc(0);
  private state: State = 'preamble';
  private readonly dashBoundary: Buffer;
  private readonly delimiter: Buffer;

  constructor(
    boundary: string,
    private readonly handlers: PartHandlers,
  ) {
    this.dashBoundary = Buffer.from(`--${boundary}`);
    this.delimiter = Buffer.from(`\r\n--${boundary}`);
  }

  get done(): boolean {
    return this.state === 'done';
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.state === 'done') return;
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    await this.process();
  }

  async finish(): Promise<void> {
    if (this.state !== 'done') throw new MultipartError('unexpected end of multipart body');
  }

  private async process(): Promise<void> {
    while (true) {
      switch (this.state) {
        case 'preamble': {
          const i = this.buf.indexOf(this.dashBoundary);
          if (i < 0) {
            if (this.buf.length > this.dashBoundary.length) this.buf = this.buf.subarray(this.buf.length - this.dashBoundary.length);
            return;
          }
          this.buf = this.buf.subarray(i + this.dashBoundary.length);
          this.state = 'afterBoundary';
          break;
        }
        case 'afterBoundary': {
          if (this.buf.length < 2) return;
          if (this.buf[0] === 0x2d && this.buf[1] === 0x2d) {
            this.state = 'done';
            this.buf = Buffer.alloc(0);
            return;
          }
          const eol = this.buf.indexOf(CRLF);
          if (eol < 0) {
            if (this.buf.length > 1024) throw new MultipartError('malformed multipart boundary line');
            return;
          }
          if (this.buf.subarray(0, eol).toString('latin1').trim() !== '') throw new MultipartError('malformed multipart boundary line');
          this.buf = this.buf.subarray(eol + 2);
          this.state = 'headers';
          break;
        }
        case 'headers': {
          let part: PartInfo;
          if (this.buf.length >= 2 && this.buf[0] === 0x0d && this.buf[1] === 0x0a) {
            // A part without headers.
            this.buf = this.buf.subarray(2);
            part = {};
          } else {
            const i = this.buf.indexOf(HEADER_END);
            if (i < 0) {
              if (this.buf.length > MAX_HEADER_BYTES) throw new MultipartError('multipart part headers too large');
              return;
            }
            part = {};
            for (const line of this.buf.subarray(0, i).toString('utf8').split('\r\n')) {
              const c = line.indexOf(':');
              if (c < 0) continue;
              const key = line.slice(0, c).trim().toLowerCase();
              const value = line.slice(c + 1).trim();
              if (key === 'content-disposition') Object.assign(part, parseContentDisposition(value));
              else if (key === 'content-type') part.contentType = value;
            }
            this.buf = this.buf.subarray(i + HEADER_END.length);
          }
          await this.handlers.begin(part);
          this.state = 'body';
          break;
        }
        case 'body': {
          const i = this.buf.indexOf(this.delimiter);
          if (i < 0) {
            const safe = this.buf.length - this.delimiter.length;
            if (safe > 0) {
              const data = this.buf.subarray(0, safe);
              this.buf = this.buf.subarray(safe);
              await this.handlers.data(data);
            }
            return;
          }
          if (i > 0) await this.handlers.data(this.buf.subarray(0, i));
          await this.handlers.end();
          this.buf = this.buf.subarray(i + this.delimiter.length);
          this.state = 'afterBoundary';
          break;
        }
        case 'done':
          return;
      }
    }
  }
}
