import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CubeboxError, errorMessage } from '../util/errors.js';
import { run } from '../util/exec.js';
import { mountsBelow } from './mountinfo.js';

/**
 * Removes dir (or only its contents when keepDir), first unmounting anything mounted below
 * it; never crosses into a file system that is still mounted there.
 */
export async function removeTree(dir: string, keepDir: boolean): Promise<void> {
  try {
    await lstat(dir);
  } catch {
    return;
  }
  for (const mp of await mountsBelow(dir)) {
    const r = await run('umount', [mp]).catch(() => undefined);
    if (r?.code !== 0) await run('umount', ['--lazy', mp]).catch(() => undefined);
  }
  const left = await mountsBelow(dir);
  if (left.length) throw new CubeboxError('internal', `refusing to delete ${dir}: still mounted below it: ${left.join(', ')}`);
  const victims = keepDir ? (await readdir(dir)).map((n) => join(dir, n)) : [dir];
  if (!victims.length) return;
  const r = await run('rm', ['-rf', '--one-file-system', '--', ...victims]).catch((e: unknown) => ({ code: -1, stdout: '', stderr: errorMessage(e) }));
  if (r.code !== 0) throw new CubeboxError('internal', `deleting ${dir} failed: ${tail(r.stderr + r.stdout, 3)}`);
}

function tail(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' | ') || 'no output';
}
