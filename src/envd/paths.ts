// Path resolution inside the sandbox: `~` and relative paths resolve against the user's home.
import { posix } from 'node:path';

export function resolvePath(p: string, home: string): string {
  if (p === '' || p === '~') return posix.resolve(home);
  if (p.startsWith('~/')) return posix.resolve(home, p.slice(2));
  return posix.resolve(home, p);
}
