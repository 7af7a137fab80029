// The key that encrypts secrets at rest: 32 random bytes in <data-dir>/secrets.key, made on the
// first start, readable by the service's own user only. Anything else found under that name (a
// link, a file others can read, one owned by someone else, one of the wrong size) refuses the
// start: the key is never silently replaced, since that would make every stored secret unreadable.
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fchmodSync, fstatSync, fsyncSync, linkSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { CubeboxError } from '../util/errors.js';

export const SECRET_KEY_FILE = 'secrets.key';
export const SECRET_KEY_BYTES = 32; // AES-256

const refuse = (file: string, why: string) =>
  new CubeboxError('unavailable', `secret key file ${file} ${why}; refusing to use it (fix or move it away: secrets stored with it cannot be read without it)`);

/** The data directory's secret key: read and checked, or made when there is none yet. */
export function openSecretKey(dataDir: string): Buffer {
  const file = join(dataDir, SECRET_KEY_FILE);
  const found = readKey(file);
  return found ?? createKey(file);
}

/** The key at `file`, undefined if there is no such file; throws if it is not a sound key file. */
function readKey(file: string): Buffer | undefined {
  let fd: number;
  try {
    // O_NOFOLLOW: a symbolic link is refused, not followed; O_NONBLOCK: a FIFO cannot hang the start
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw refuse(file, 'is a symbolic link');
    throw refuse(file, `cannot be opened (${code ?? 'error'})`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw refuse(file, 'is not a regular file');
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid) throw refuse(file, `is owned by uid ${st.uid}, not by the service's uid ${uid}`);
    if ((st.mode & 0o077) !== 0) throw refuse(file, `has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}: it must be 0600 (no group or other access)`);
    if (st.size !== SECRET_KEY_BYTES) throw refuse(file, `is ${st.size} bytes, a key is ${SECRET_KEY_BYTES}`);
    const key = Buffer.alloc(SECRET_KEY_BYTES);
    let got = 0;
    while (got < key.length) {
      const n = readSync(fd, key, got, key.length - got, got);
      if (n === 0) throw refuse(file, 'was cut short while being read');
      got += n;
    }
    return key;
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a new key to a temporary file (O_EXCL, O_NOFOLLOW, 0600) and links it into place: link()
 * never follows or replaces what is at the final name, so the key file appears whole or not at
 * all, and two starts racing end up with the same key.
 */
function createKey(file: string): Buffer {
  const key = randomBytes(SECRET_KEY_BYTES);
  const tmp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    try {
      fchmodSync(fd, 0o600); // whatever the umask
      writeSync(fd, key);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    linkSync(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const other = readKey(file); // another start made it first
    if (!other) throw err;
    return other;
  } finally {
    unlinkSync(tmp);
  }
  return key;
}
