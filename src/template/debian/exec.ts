// The builder's processes (own process group, killed on abort, a fixed environment), its
// build context, and small file helpers shared by the build steps.
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { runLines, type LinesResult } from '../../util/exec.js';
import { CubeboxError } from '../../util/errors.js';
import { FULL_PATH } from './recipe.js';

/** What every build step knows about the build in progress. */
export interface Ctx {
  target: string;
  suite: string;
  arch: string;
  mirror: string;
  packages: string[];
  progress: (line: string) => void;
  step: (line: string) => void;
  signal: AbortSignal | undefined;
  temps: string[];
  cacheDir: string;
}

const CHILD_ENV = (): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C', LANG: 'C', DEBIAN_FRONTEND: 'noninteractive' };
  env.PATH = FULL_PATH; // debootstrap and chroot live in sbin; never a caller's odd PATH
  delete env.LANGUAGE;
  return env;
};

/** Runs a build program (in its own process group, killed on abort) with the builder's environment. */
export function runStreaming(file: string, args: string[], onLine: (l: string) => void, signal: AbortSignal | undefined): Promise<LinesResult> {
  return runLines(file, args, { onLine, signal, env: CHILD_ENV() });
}

/** Runs a program to completion, collecting stdout and stderr together. */
export async function runCapture(file: string, args: string[], signal: AbortSignal | undefined): Promise<{ code: number; output: string }> {
  const out: string[] = [];
  const r = await runStreaming(file, args, (l) => out.push(l), signal);
  if (r.error) return { code: -1, output: r.error };
  if (signal?.aborted) throw abortError(signal);
  return { code: r.code, output: out.join('\n') };
}

export function abortError(signal: AbortSignal): CubeboxError {
  const reason = signal.reason instanceof Error ? signal.reason.message : signal.reason ? String(signal.reason) : 'aborted';
  return new CubeboxError('unavailable', `base build aborted: ${reason}`);
}

export function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

export function hashOf(v: unknown): string {
  return createHash('sha256').update(JSON.stringify(v)).digest('hex').slice(0, 16);
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p, fsConstants.F_OK);
    return true;
  } catch {
    return false;
  }
}

export async function touch(p: string): Promise<void> {
  const now = new Date();
  await fs.utimes(p, now, now).catch(() => undefined);
}

export async function readTail(file: string, n: number): Promise<string> {
  try {
    const text = await fs.readFile(file, 'utf8');
    return text.trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}

export function tail(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' | ') || 'no output';
}

export async function emptyDir(dir: string, match: (name: string) => boolean = () => true): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return;
  }
  for (const n of names) if (match(n)) await fs.rm(path.join(dir, n), { recursive: true, force: true });
}
