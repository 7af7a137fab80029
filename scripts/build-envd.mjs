// Builds envd into dist/envd/: envd.mjs (src/envd/main.ts bundled by esbuild: ESM, platform node,
// every JS dependency inlined), pty.node (node-pty's native addon, which the bundle loads from
// its own directory), envd-exec (the static exec helper, src/envd/exec-helper.c) and fs-worker.mjs
// (the per-user filesystem worker).
// The directory is self-contained: it runs with only a `node` binary, no node_modules.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist/envd');
const require = createRequire(import.meta.url);

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

// 1. The exec helper: static, so it runs in any sandbox image (busybox included).
execFileSync('cc', ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', join(out, 'envd-exec'), join(root, 'src/envd/exec-helper.c')], {
  stdio: 'inherit',
});

// 2. node-pty's native addon, next to the bundle.
const ptyDir = dirname(require.resolve('node-pty/package.json'));
copyFileSync(join(ptyDir, 'build/Release/pty.node'), join(out, 'pty.node'));

// node-pty looks for its addon relative to its own files; in the bundle it is next to envd.mjs.
const nativeFromBundleDir = {
  name: 'node-pty-native-next-to-bundle',
  setup(b) {
    b.onLoad({ filter: /node-pty[\\/]lib[\\/]utils\.js$/ }, () => ({
      loader: 'js',
      contents: `"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.assign = function assign(target, ...sources) {
  sources.forEach((s) => Object.keys(s).forEach((k) => { target[k] = s[k]; }));
  return target;
};
exports.loadNativeModule = function loadNativeModule(name) {
  return { dir: __envd_dirname, module: require(__envd_dirname + "/" + name + ".node") };
};
`,
    }));
  },
};

// 4. The filesystem worker (src/envd/fs/worker-main.ts): envd runs one per user, as that user.
await build({
  entryPoints: [join(root, 'src/envd/fs/worker-entry.ts')],
  outfile: join(out, 'fs-worker.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  minify: true,
  legalComments: 'none',
  logLevel: 'warning',
});

// 3. The bundle.
await build({
  entryPoints: [join(root, 'src/envd/main.ts')],
  outfile: join(out, 'envd.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  minify: true,
  keepNames: false,
  sourcemap: 'external',
  legalComments: 'none',
  logLevel: 'warning',
  plugins: [nativeFromBundleDir],
  banner: {
    js: [
      "import { createRequire as __envdCreateRequire } from 'node:module';",
      "import { fileURLToPath as __envdFileURLToPath } from 'node:url';",
      "import { dirname as __envdDirname } from 'node:path';",
      'const require = __envdCreateRequire(import.meta.url);',
      'const __filename = __envdFileURLToPath(import.meta.url);',
      'const __dirname = __envdDirname(__filename);',
      'const __envd_dirname = __dirname;',
    ].join('\n'),
  },
});
