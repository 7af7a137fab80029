// The pipe protocol between envd and its per-user filesystem workers. A frame is
// [u32 BE json length][u32 BE binary length][json][binary]; requests are
// {id, op, args} (a Buffer argument travels as the binary part), answers {id, ok} or {id, err}
// (a Buffer result travels as the binary part). Answers may come in any order.
import { FileStat, type PathEntry } from './ops.js';

export const MAX_FRAME = 64 * 1024 * 1024;

export interface Frame {
  json: Record<string, unknown>;
  bin?: Buffer;
}

export function encodeFrame(json: unknown, bin?: Buffer): Buffer[] {
  const j = Buffer.from(JSON.stringify(json));
  const head = Buffer.allocUnsafe(8);
  head.writeUInt32BE(j.length, 0);
  head.writeUInt32BE(bin?.length ?? 0, 4);
  return bin?.length ? [head, j, bin] : [head, j];
}

/** Incremental decoder of frames from a byte stream. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private length = 0;

  push(chunk: Buffer, onFrame: (f: Frame) => void): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
    while (this.length >= 8) {
      let buf = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks, this.length);
      const jl = buf.readUInt32BE(0);
      const bl = buf.readUInt32BE(4);
      if (jl + bl > MAX_FRAME) throw new Error('frame too large');
      if (buf.length < 8 + jl + bl) {
        this.chunks = [buf];
        return;
      }
      const json = JSON.parse(buf.subarray(8, 8 + jl).toString('utf8')) as Record<string, unknown>;
      const bin = bl ? Buffer.from(buf.subarray(8 + jl, 8 + jl + bl)) : undefined;
      buf = buf.subarray(8 + jl + bl);
      this.chunks = buf.length ? [buf] : [];
      this.length = buf.length;
      onFrame({ json, bin });
    }
  }
}

export interface WireEntry {
  path: string;
  stat: string[];
  target?: string;
  metadata?: Record<string, string>;
}

export function entryToWire(e: PathEntry): WireEntry {
  const w: WireEntry = { path: e.path, stat: e.stat.toWire() };
  if (e.target !== undefined) w.target = e.target;
  if (e.metadata !== undefined) w.metadata = e.metadata;
  return w;
}

export function entryFromWire(w: WireEntry): PathEntry {
  const e: PathEntry = { path: w.path, stat: FileStat.fromWire(w.stat) };
  if (w.target !== undefined) e.target = w.target;
  if (w.metadata !== undefined && w.metadata !== null && typeof w.metadata === 'object') e.metadata = w.metadata;
  return e;
}
