import { chownSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { HELPER_BIN } from '../config.js';
import { runOk } from '../util/exec.js';
import { unescapeMount } from './cgroups.js';

/**
 * A sandbox's copy-on-write root: the template's read-only layers (each seen through an
 * idmapped bind mount so that template-root appears as the sandbox's unprivileged host
 * range) under an overlay whose upper layer is the sandbox's own writable layer.
 */
export interface RootfsLayout {
  name: string; // overlay source name: cubebox-<inst>-<sbx>, visible in /proc/mounts
  target: string; // the merged root
  upper: string;
  work: string;
  views: string[]; // where each layer's idmapped view is mounted, topmost first
}

export function rootfsLayout(sandboxDir: string, name: string, layerCount: number): RootfsLayout {
  return {
    name,
    target: join(sandboxDir, 'rootfs'),
    upper: join(sandboxDir, 'upper'),
    work: join(sandboxDir, 'work'),
    views: Array.from({ length: layerCount }, (_, i) => join(sandboxDir, 'layers', String(i))),
  };
}

/** layers: read-only layer directories, topmost first. */
export async function mountRootfs(layout: RootfsLayout, layers: string[], idMap?: { hostId: number; size: number }): Promise<void> {
  if (layers.length !== layout.views.length) throw new Error('layer count does not match the layout');
  for (const d of [layout.target, layout.upper, layout.work, ...layout.views]) mkdirSync(d, { recursive: true });
  if (idMap) {
    // The writable layer's root must belong to the sandbox's root, or it cannot write to /.
    chownSync(layout.upper, idMap.hostId, idMap.hostId);
    chownSync(layout.work, idMap.hostId, idMap.hostId);
  }
  const args = ['mount-rootfs', layout.name, layout.target, layout.upper, layout.work, String(idMap?.hostId ?? 0), String(idMap?.size ?? 0)];
  layers.forEach((l, i) => args.push(l, layout.views[i]!));
  await runOk(HELPER_BIN, args);
}

/** Unmounts the merged root and the layer views; whatever is not mounted is skipped. */
export async function unmountRootfs(paths: string[]): Promise<void> {
  const mounted = new Set(mountPoints());
  const todo = paths.filter((p) => mounted.has(p));
  if (todo.length) await runOk(HELPER_BIN, ['umount', ...todo]);
  const left = todo.filter((p) => new Set(mountPoints()).has(p));
  if (left.length) throw new Error(`still mounted: ${left.join(', ')}`);
}

export interface MountEntry {
  mountPoint: string;
  source: string;
  fsType: string;
}

export function mountTable(): MountEntry[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [pre, post] = line.split(' - ');
      const f = pre!.split(' ');
      const p = post!.split(' ');
      return { mountPoint: unescapeMount(f[4]!), fsType: p[0]!, source: unescapeMount(p[1] ?? '') };
    });
}

export function mountPoints(): string[] {
  return mountTable().map((m) => m.mountPoint);
}

/** Mount points at or below dir (deepest first, so they can be unmounted in order). */
export function mountsUnder(dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : dir + '/';
  return mountPoints()
    .filter((m) => m === dir || m.startsWith(prefix))
    .sort((a, b) => b.length - a.length);
}
