// Builds the code-interpreter server into dist/interpreter/ (src/interpreter/, see server.ts):
// server.mjs and js-kernel.mjs (esbuild: ESM, platform node, every JS dependency inlined),
// ts-strip.mjs (TypeScript's transpiler, loaded only by TypeScript contexts), the Python
// helpers the kernels load and the Java kernel (run by the sandbox's JDK as a source file). The support tree (src/runtime/support.ts) carries the directory
// to /.cubebox/interpreter in every sandbox, where the sandbox's node runs it.
import { copyFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { buildDir, NODE_BUNDLE } from './build-dir.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src/interpreter');
const out = join(root, 'dist/interpreter');

// built beside and renamed into place: a support tree made meanwhile never sees half of it
await buildDir(out, async (tmp) => {
  for (const [entry, file] of [
    ['server.ts', 'server.mjs'],
    ['js-kernel.ts', 'js-kernel.mjs'],
    ['ts-strip.ts', 'ts-strip.mjs'],
  ]) {
    await build({
      ...NODE_BUNDLE,
      entryPoints: [join(src, entry)],
      outfile: join(tmp, file),
      format: 'esm',
      // ws and typescript are CommonJS: give them the require and __filename an ES module lacks
      banner: {
        js: [
          "import { createRequire as __ciCreateRequire } from 'node:module';",
          "import { fileURLToPath as __ciFileURLToPath } from 'node:url';",
          'const require = __ciCreateRequire(import.meta.url);',
          'const __filename = __ciFileURLToPath(import.meta.url);',
          "const __dirname = __filename.replace(/\\/[^/]*$/, '');",
        ].join('\n'),
      },
    });
  }
  for (const f of readdirSync(join(src, 'python'))) if (f.endsWith('.py')) copyFileSync(join(src, 'python', f), join(tmp, f));
  for (const f of readdirSync(join(src, 'java'))) if (f.endsWith('.java')) copyFileSync(join(src, 'java', f), join(tmp, f));
});
