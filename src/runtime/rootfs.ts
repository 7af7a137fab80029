import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { HELPER_BIN } from '../config.js';
import { Coalescer } from '../util/batch.js';
import { runOk } from '../util/exec.js';
import { mountPoints } from './mountinfo.js';
import { mountSupportView } from './support.js';

// The mount table lives in mountinfo.ts; these names stay importable from here.
export { mountPoints, mountTable, type MountEntry } from './mountinfo.js';
/** @deprecated the same as mountsAtOrUnder in mountinfo.ts (at or below dir, deepest first). */
export { mountsAtOrUnder as mountsUnder } from './mountinfo.js';

/**
 * A sandbox's copy-on-write root: the template's read-only layers (each seen through an
 * idmapped bind mount so that template-root appears as the sandbox's unprivileged host
 * range) under an overlay whose upper layer is the sandbox's own writable layer.
 */
/** Each helper call (mount, unmount, loop detach) ends within this, or fails: shorter than any state deadline. */
const HELPER_TIMEOUT_MS = 20_000;

export interface RootfsLayout {
  name: string; // overlay source name: cubebox-<inst>-<sbx>, visible in /proc/mounts
  target: string; // the merged root
  disk: string; // mount point of the sandbox's own disk (holds upper and work)
  diskImage: string;
  upper: string;
  work: string;
  views: string[]; // where each layer's idmapped view is mounted, topmost first
  /** The support tree to give the sandbox a read-only view of, and where (support.ts). */
  support?: { tree: string; view: string };
}

export function rootfsLayout(sandboxDir: string, name: string, layerCount: number): RootfsLayout {
  const disk = join(sandboxDir, 'disk');
  return {
    name,
    target: join(sandboxDir, 'rootfs'),
    disk,
    diskImage: join(sandboxDir, 'disk.img'),
    upper: join(disk, 'upper'),
    work: join(disk, 'work'),
    views: Array.from({ length: layerCount }, (_, i) => join(sandboxDir, 'layers', String(i))),
  };
}

/**
 * The sandbox's writable layer lives on a disk of its own: a sparse ext4 image of the
 * template's disk size, loop-mounted (the loop device goes with the unmount). Writing past
 * it gives the sandbox ENOSPC and costs the host at most that size. Images are copied from
 * an empty one formatted once per size.
 */
export async function mountDisk(layout: RootfsLayout, sizeMB: number, emptyImagesDir: string): Promise<void> {
  const empty = await emptyImage(emptyImagesDir, sizeMB);
  await runOk('cp', ['--sparse=always', empty, layout.diskImage]);
  await mountExistingDisk(layout);
}

/** Loop-mounts the sandbox's disk image as it is (a new one, or one left unmounted by a host reboot). */
export async function mountExistingDisk(layout: RootfsLayout): Promise<void> {
  mkdirSync(layout.disk, { recursive: true });
  // noinit_itable: no background zeroing of inode tables, which would fill the sparse image
  await runOk(HELPER_BIN, ['mount-disk', layout.diskImage, layout.disk], { timeoutMs: HELPER_TIMEOUT_MS });
}

async function emptyImage(dir: string, sizeMB: number): Promise<string> {
  const file = join(dir, `empty-ext4-${sizeMB}M.img`);
  if (existsSync(file)) return file;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // concurrent first creates each make their own (the last rename wins; the images are the same)
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await runOk('truncate', ['-s', `${sizeMB}M`, tmp]);
    // no journal (scratch space), no reserved blocks (the sandbox gets all of it)
    await runOk('mkfs.ext4', ['-q', '-F', '-O', '^has_journal', '-m', '0', '-E', 'lazy_itable_init=1,nodiscard', tmp]);
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  return file;
}

/** Loop devices whose backing file is under dir (a leak once the sandbox is gone). */
export function loopDevicesUnder(dir: string): string[] {
  const out: string[] = [];
  let devs: string[] = [];
  try {
    devs = readdirSync('/sys/block').filter((d) => d.startsWith('loop'));
  } catch {
    return out;
  }
  for (const d of devs) {
    try {
      const backing = readFileSync(`/sys/block/${d}/loop/backing_file`, 'utf8').trim();
      if (backing === dir || backing.startsWith(dir + '/')) out.push(`/dev/${d} (${backing})`);
    } catch {
      /* not bound */
    }
  }
  return out;
}

/** layers: read-only layer directories, topmost first. */
export async function mountRootfs(layout: RootfsLayout, layers: string[], idMap?: { hostId: number; size: number }): Promise<void> {
  if (layers.length !== layout.views.length) throw new Error('layer count does not match the layout');
  guardSandboxDir(dirname(layout.target), idMap);
  for (const d of [layout.target, layout.upper, layout.work, ...layout.views]) mkdirSync(d, { recursive: true });
  if (idMap) {
    // The writable layer's root must belong to the sandbox's root, or it cannot write to /.
    chownSync(layout.upper, idMap.hostId, idMap.hostId);
    chownSync(layout.work, idMap.hostId, idMap.hostId);
  }
  // The overlay's options name its layers as given, and the sandbox reads them in its
  // /proc/self/mountinfo: paths relative to the sandbox directory (the helper runs there)
  // keep the host's data directory out of them.
  const dir = dirname(layout.target);
  const rel = (p: string) => relative(dir, p);
  const args = ['mount-rootfs', layout.name, rel(layout.target), rel(layout.upper), rel(layout.work), String(idMap?.hostId ?? 0), String(idMap?.size ?? 0)];
  layers.forEach((l, i) => args.push(l, rel(layout.views[i]!)));
  await runOk(HELPER_BIN, args, { timeoutMs: HELPER_TIMEOUT_MS, cwd: dir });
  if (layout.support) await mountSupportView(layout.support.tree, layout.support.view, layout.name);
}

/**
 * Host users must not read a sandbox's files nor run its setuid files. The merged root
 * cannot be nosuid (the mount the runtime bind-mounts as / keeps the flag, locked, and
 * sudo in the sandbox would stop working: seen with every runtime here), so the
 * sandbox directory is the barrier: 0710 root:<sandbox root's host gid>. Only host root
 * and the sandbox's own root group may pass; runtimes with user namespaces reach the rootfs and the
 * envd run directory as that id from inside the user namespace. Without a user
 * namespace: 0700. The disk and the layer views below are nosuid,nodev themselves.
 */
export function guardSandboxDir(dir: string, idMap?: { hostId: number }): void {
  chownSync(dir, 0, idMap?.hostId ?? 0);
  chmodSync(dir, idMap ? 0o710 : 0o700);
}

/**
 * Sandboxes torn down at the same time share one helper process for their unmounts: each
 * sandbox's list keeps its own order (deepest first, its disk last) within the batch.
 */
const unmounts = new Coalescer<string[]>((lists) => runOk(HELPER_BIN, ['umount', ...lists.flat()], { timeoutMs: HELPER_TIMEOUT_MS }).then(() => undefined));

/** Unmounts the merged root and the layer views; whatever is not mounted is skipped. */
export async function unmountRootfs(paths: string[]): Promise<void> {
  const mounted = new Set(mountPoints());
  const todo = paths.filter((p) => mounted.has(p));
  if (todo.length) await unmounts.run(todo);
  const left = todo.filter((p) => new Set(mountPoints()).has(p));
  if (left.length) throw new Error(`still mounted: ${left.join(', ')}`);
}

/** Polls `done` (every 10 ms, then less often) until it holds or `ms` have passed. */
async function waitUntil(done: () => boolean, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (let delay = 10; !done() && Date.now() < until; delay = Math.min(delay * 2, 200)) await new Promise((r) => setTimeout(r, delay));
}

/** Whether the loop device (`/dev/loopN`) is still bound to a file at or under dir. */
function boundUnder(device: string, dir: string): boolean {
  try {
    const backing = readFileSync(`/sys/block/${device.replace(/^\/dev\//, '')}/loop/backing_file`, 'utf8').trim();
    return backing === dir || backing.startsWith(dir + '/');
  } catch {
    return false; // not bound (or no such device)
  }
}

/**
 * The kernel frees an auto-clearing loop device asynchronously after the unmount: wait for
 * that, and detach explicitly what is still bound to a file of this sandbox. `devices`: the
 * loop devices its disks were mounted from (read from the mount table before the unmount);
 * then only those are polled, and every device is read once at the end, instead of every
 * device on the host at each poll (which grows with the number of sandboxes).
 */
export async function releaseLoopDevices(dir: string, devices?: string[]): Promise<void> {
  // A lazily unmounted disk lets its loop device go once the filesystem is torn down, which
  // writes its dirty pages back first: seconds on a loaded host after a sandbox wrote a lot.
  const known = devices?.filter((d) => /^\/dev\/loop\d+$/.test(d));
  if (known?.length) await waitUntil(() => !known.some((d) => boundUnder(d, dir)), 10_000);
  else await waitUntil(() => loopDevicesUnder(dir).length === 0, 10_000);
  // one read of every device when all went (the usual case); else detach what stays, and wait
  let left = loopDevicesUnder(dir);
  if (left.length) {
    for (const l of left) await runOk('losetup', ['-d', l.split(' ')[0]!], { timeoutMs: HELPER_TIMEOUT_MS }).catch(() => undefined);
    await waitUntil(() => loopDevicesUnder(dir).length === 0, 5_000);
    left = loopDevicesUnder(dir);
  }
  if (left.length) throw new Error(`loop devices remain: ${left.join(', ')}`);
}
