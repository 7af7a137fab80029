// Builds envd into dist/envd/: envd.cjs (src/envd/main.ts bundled by esbuild: CommonJS, platform
// node, every JS dependency inlined), envd.mjs (the same entry for ES-module callers), pty.node
// (node-pty's native addon, which the bundle loads from its own directory), envd-exec (the static
// exec helper, src/envd/exec-helper.c) and fs-worker.mjs (the per-user filesystem worker).
// The directory is self-contained: it runs with only a `node` binary, no node_modules.
// CommonJS, not ESM: an ES bundle imports every node built-in it uses up front, while the
// CommonJS one requires them where the code that is loaded on first use (http/services.ts) runs.
// No V8 startup snapshot of it: measured, it started no faster (deserializing the blob costs
// what evaluating envd's small start-up part does) and idled 3 MB higher (src/envd/README.md).
import { execFileSync } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { buildDir, NODE_BUNDLE } from './build-dir.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

// node-pty looks for its addon relative to its own files; in the bundle it is next to envd.cjs.
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
  return { dir: __dirname, module: require(__dirname + "/" + name + ".node") };
};
`,
    }));
  },
};

// built beside and renamed into place: tests and support trees never see a missing envd
await buildDir(join(root, 'dist/envd'), async (out) => {
  // 1. The exec helper: static, so it runs in any sandbox image (busybox included).
  execFileSync('cc', ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', join(out, 'envd-exec'), join(root, 'src/envd/exec-helper.c')], {
    stdio: 'inherit',
  });

  // 2. node-pty's native addon, next to the bundle.
  const ptyDir = dirname(require.resolve('node-pty/package.json'));
  copyFileSync(join(ptyDir, 'build/Release/pty.node'), join(out, 'pty.node'));

  // 3. The filesystem worker (src/envd/fs/worker-main.ts): envd runs one per user, as that user.
  await build({
    ...NODE_BUNDLE,
    entryPoints: [join(root, 'src/envd/fs/worker-entry.ts')],
    outfile: join(out, 'fs-worker.mjs'),
    format: 'esm',
  });

  // 4. The bundle.
  await build({
    ...NODE_BUNDLE,
    entryPoints: [join(root, 'src/envd/main.ts')],
    outfile: join(out, 'envd.cjs'),
    format: 'cjs',
    keepNames: false,
    sourcemap: 'external',
    plugins: [nativeFromBundleDir],
    // envd's own Headers for the global one (undici's costs every sandbox its first command's worth)
    inject: [join(root, 'src/envd/headers.ts')],
    // import.meta.url: options.ts looks for envd-exec next to the bundle
    define: { 'import.meta.url': '__envd_url' },
    banner: { js: "var __envd_url = require('node:url').pathToFileURL(__filename).href;" },
  });

  // 5. The same envd for callers that start it as an ES module.
  writeFileSync(join(out, 'envd.mjs'), "import { createRequire } from 'node:module';\ncreateRequire(import.meta.url)('./envd.cjs');\n");
});
