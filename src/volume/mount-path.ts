// A volume's mount path as the template's layers show it. The runtime binds the volume there
// inside the sandbox's root; a symlink or a file on the way makes that bind fail (or land
// elsewhere), so such a create is refused up front with a 400 saying why.
import { lstatSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { invalid } from '../util/errors.js';

/**
 * Throws invalid_argument when a component of `path` (absolute, normalized) is, in the merged
 * view of `layers` (topmost first), a symlink or anything but a directory. A path that does
 * not exist is fine (the runtime makes it). Each layer is walked through real directories
 * only, so no host lookup ever follows a link the layer holds.
 */
export function checkMountPath(layers: string[], path: string): void {
  const parts = path.split('/').filter(Boolean);
  let live = layers; // the layers in which every component so far is a real directory
  for (let i = 0; i < parts.length; i++) {
    const rel = parts.slice(0, i + 1).join('/');
    const below: string[] = [];
    let top: Stats | undefined;
    for (const layer of live) {
      const st = lstatOrUndefined(join(layer, rel));
      if (!st) continue;
      top ??= st;
      if (!st.isDirectory()) break; // a non-directory (a whiteout too) hides the layers below it
      below.push(layer);
    }
    if (!top) return;
    const where = `/${rel}` === path ? '' : ` (at /${rel})`;
    if (top.isCharacterDevice() && top.rdev === 0) return; // an overlay whiteout: deleted, made anew by the runtime
    if (top.isSymbolicLink()) throw invalid(`volume mount path '${path}' is a symbolic link in the template${where}: choose another path`);
    if (!top.isDirectory()) throw invalid(`volume mount path '${path}' is not a directory in the template${where}: choose another path`);
    live = below;
  }
}

function lstatOrUndefined(p: string): Stats | undefined {
  try {
    return lstatSync(p);
  } catch {
    return undefined;
  }
}
