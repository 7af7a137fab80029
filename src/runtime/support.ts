import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { PROJECT_ROOT } from '../config.js';
import { runOk } from '../util/exec.js';

/**
 * The support tree bind-mounted read-only at /.cubebox in every sandbox: tini, the host's
 * node binary with its shared libraries and loader, the envd bundle, and the code-interpreter
 * server (dist/interpreter, run by code-interpreter templates). envd runs through
 * that loader, so it works in any template (glibc, musl or busybox) without the template
 * shipping Node. Versioned by content so that running sandboxes keep the tree they started
 * with while a new one is prepared.
 */
export const SANDBOX_SUPPORT = '/.cubebox';
/** The command that runs the Node the sandbox's agent runs on, inside the sandbox (its own loader and libraries: any base image). */
export const SANDBOX_NODE = `${SANDBOX_SUPPORT}/lib/ld.so --library-path ${SANDBOX_SUPPORT}/lib ${SANDBOX_SUPPORT}/bin/node`;
export const ENVD_DIR = join(PROJECT_ROOT, 'dist', 'envd');
const INTERPRETER_DIR = join(PROJECT_ROOT, 'dist', 'interpreter');
const TINI = '/usr/bin/tini-static';

export interface SupportTree {
  dir: string; // host path
}

function fingerprint(files: string[], format: string): string {
  const h = createHash('sha256').update(`${format}\n`);
  for (const f of files) {
    const st = statSync(f);
    h.update(`${f}:${st.size}:${st.mtimeMs}:${st.ino}\n`);
  }
  return h.digest('hex').slice(0, 16);
}

/** Shared libraries (and the loader) a binary needs, from ldd. */
async function libraries(binaries: string[]): Promise<{ libs: string[]; loader: string }> {
  const libs = new Set<string>();
  let loader = '';
  for (const b of binaries) {
    const out = await runOk('ldd', [b]);
    for (const line of out.split('\n')) {
      const m = line.match(/=>\s+(\/\S+)/) ?? line.match(/^\s+(\/\S+)\s+\(/);
      if (!m) continue;
      const p = m[1]!;
      if (/\/ld-linux[^/]*\.so/.test(p) || /\/ld-musl/.test(p)) loader = p;
      else libs.add(p);
    }
  }
  if (!loader) throw new Error(`cannot find the dynamic loader of ${binaries.join(', ')}`);
  return { libs: [...libs], loader };
}

/**
 * A copy, never a hard link: a hard link is the host's own node, libc or tini, so any
 * write primitive on the tree (a runtime or kernel bug, a mistaken chmod) would change
 * the host's binaries. Read-only for everyone, so the copy cannot be changed in place.
 */
function place(src: string, dst: string): void {
  copyFileSync(realpathSync(src), dst);
  chmodSync(dst, statSync(dst).mode & 0o555);
}

export async function prepareSupportTree(baseDir: string, inUse: Set<string> = new Set()): Promise<SupportTree> {
  const node = realpathSync(process.execPath);
  const envdFiles = ['envd.cjs', 'envd.mjs', 'fs-worker.mjs', 'pty.node', 'envd-exec'].map((f) => join(ENVD_DIR, f));
  for (const f of envdFiles) if (!existsSync(f)) throw new Error(`${f} missing: run npm run build`);
  const { libs, loader } = await libraries([node, join(ENVD_DIR, 'pty.node')]);
  // the code-interpreter server (port 49999 in code-interpreter templates), when built
  const interpFiles = existsSync(INTERPRETER_DIR) ? readdirSync(INTERPRETER_DIR).map((f) => join(INTERPRETER_DIR, f)) : [];
  // 'copied': trees of earlier versions hard-linked the host's files; never reuse those
  const version = fingerprint([node, TINI, loader, ...libs, ...envdFiles, ...interpFiles], 'copied');
  mkdirSync(baseDir, { recursive: true, mode: 0o711 });
  const dir = join(baseDir, version);
  if (!existsSync(dir)) {
    const tmp = join(baseDir, `.tmp-${version}-${process.pid}`);
    rmSync(tmp, { recursive: true, force: true });
    for (const d of ['bin', 'lib', 'envd', 'run', 'interpreter']) mkdirSync(join(tmp, d), { recursive: true });
    for (const f of interpFiles) {
      copyFileSync(f, join(tmp, 'interpreter', basename(f)));
      chmodSync(join(tmp, 'interpreter', basename(f)), 0o444); // read-only, like the rest of the tree
    }
    place(node, join(tmp, 'bin', 'node'));
    place(TINI, join(tmp, 'tini'));
    place(loader, join(tmp, 'lib', 'ld.so'));
    for (const l of libs) place(l, join(tmp, 'lib', basename(l)));
    for (const f of envdFiles) copyFileSync(f, join(tmp, 'envd', basename(f)));
    chmodSync(join(tmp, 'envd', 'envd-exec'), 0o755);
    chmodSync(tmp, 0o755);
    renameSync(tmp, dir);
  }
  // older trees no running sandbox uses any more
  for (const e of readdirSync(baseDir)) {
    const p = join(baseDir, e);
    if (e !== version && e !== EMPTY_LAYER && !inUse.has(p)) rmSync(p, { recursive: true, force: true });
  }
  return { dir };
}

/** An empty directory beside the trees: a read-only overlay needs two layers. */
const EMPTY_LAYER = '.empty';

/**
 * A sandbox's own read-only view of its support tree: an overlay of the tree (over an empty
 * layer), named by its version relative to the trees' directory. Bind-mounted at /.cubebox, it shows the
 * sandbox a mount of its own (root "/", source `name`) in /proc/self/mountinfo; a bind of the
 * tree itself would show the tree's host path, which names the data directory.
 */
export async function mountSupportView(tree: string, target: string, name: string): Promise<void> {
  mkdirSync(target, { recursive: true, mode: 0o755 });
  mkdirSync(join(dirname(tree), EMPTY_LAYER), { recursive: true, mode: 0o755 });
  await runOk('mount', ['-t', 'overlay', name, '-o', `ro,lowerdir=${basename(tree)}:${EMPTY_LAYER}`, target], { cwd: dirname(tree), timeoutMs: 20_000 });
}
