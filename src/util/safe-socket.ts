// Connecting to a unix socket that lives in a directory a sandbox can write.
//
// A sandbox's root can replace its envd socket with a symlink (to the manager's control
// socket, to any host service) or with a hard link, and a plain connect() by path follows
// it as host root. So the host opens the last component with O_PATH|O_NOFOLLOW, checks that
// what it got is a socket on the sandbox's own disk (a symlink is refused; a socket of the
// host or of another sandbox sits on another filesystem), and connects through
// /proc/self/fd/<fd>, which names exactly that inode. The directories above the socket are
// the host's: the sandbox cannot swap them.
import { closeSync, fstatSync, openSync, statSync } from 'node:fs';
import { connect, Socket } from 'node:net';
import { dirname } from 'node:path';

const O_PATH = 0o10000000;
const O_NOFOLLOW = 0o400000;
const O_CLOEXEC = 0o2000000;

/** A unix socket on a filesystem of its own: `device` is the st_dev it must be on. */
export interface GuardedSocket {
  path: string;
  device: number;
}

export class UnsafeSocketError extends Error {
  readonly code = 'EUNSAFESOCKET';
}

/** The device of a mount point, or undefined when the directory is not a mount point. */
export function mountDevice(dir: string): number | undefined {
  try {
    const st = statSync(dir);
    return st.dev !== statSync(dirname(dir)).dev ? st.dev : undefined;
  } catch {
    return undefined;
  }
}

/** Opens the socket inode without following links and checks it; returns an O_PATH fd. */
function openChecked(target: GuardedSocket): number {
  const fd = openSync(target.path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  try {
    const st = fstatSync(fd);
    if (!st.isSocket()) throw new UnsafeSocketError(`${target.path} is not a socket (a ${st.isSymbolicLink() ? 'symlink' : 'non-socket file'}): refused`);
    if (st.dev !== target.device) throw new UnsafeSocketError(`${target.path} is not on the sandbox's own disk: refused`);
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/**
 * connect() to a guarded socket. Errors (missing socket, refused swap) arrive as the
 * socket's 'error' event, like any connect failure.
 */
export function connectGuarded(target: GuardedSocket): Socket {
  let fd: number;
  try {
    fd = openChecked(target);
  } catch (err) {
    const s = new Socket();
    process.nextTick(() => s.destroy(err as Error));
    return s;
  }
  try {
    // libuv issues connect(2) synchronously for unix sockets: the fd can go right after.
    return connect({ path: `/proc/self/fd/${fd}` });
  } finally {
    closeSync(fd);
  }
}
