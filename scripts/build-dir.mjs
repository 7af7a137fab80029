// Builds a dist/ directory beside itself and renames it into place, so that nothing reading it
// meanwhile (a support tree being made, a test starting envd) sees it missing or half written.
import { mkdirSync, renameSync, rmSync } from 'node:fs';

/** Runs `fill(tmp)` on a fresh temporary directory next to `out`, then puts it in `out`'s place. */
export async function buildDir(out, fill) {
  const tmp = `${out}.tmp-${process.pid}`;
  const old = `${out}.old-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    await fill(tmp);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  // two renames: `out` is missing only between them, never while a build runs
  rmSync(old, { recursive: true, force: true });
  try {
    renameSync(out, old);
  } catch (e) {
    if (e.code !== 'ENOENT') throw e;
  }
  renameSync(tmp, out);
  rmSync(old, { recursive: true, force: true });
}

/** esbuild's options for a minified bundle that runs on the node in the support tree. */
export const NODE_BUNDLE = { bundle: true, platform: 'node', target: 'node20', minify: true, legalComments: 'none', logLevel: 'warning' };
