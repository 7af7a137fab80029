// Builds the web dashboard into dist/dashboard/: app.js (src/dashboard/main.tsx with Preact,
// xterm.js, uPlot and the e2b SDK, for browsers) and app.css. The server makes the page itself
// (src/api/routes/dashboard.ts). Type-checked first with the dashboard's own tsconfig (DOM, JSX).
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { buildDir } from './build-dir.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
execFileSync(join(root, 'node_modules/.bin/tsc'), ['-p', 'src/dashboard/tsconfig.json'], { cwd: root, stdio: 'inherit' });

// The SDK imports node built-ins for what a page never calls (template builds from local files,
// the CLI's config): they are empty modules in the browser bundle.
const noNodeBuiltins = {
  name: 'no-node-builtins',
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (a) => ({ path: a.path, namespace: 'node-builtin' }));
    b.onLoad({ filter: /.*/, namespace: 'node-builtin' }, () => ({ contents: 'export default {};', loader: 'js' }));
  },
};

await buildDir(join(root, 'dist/dashboard'), async (out) => {
  await build({
    entryPoints: { app: join(root, 'src/dashboard/main.tsx') },
    outdir: out,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['chrome110', 'firefox115', 'safari16'],
    minify: true,
    legalComments: 'none',
    jsx: 'automatic',
    jsxImportSource: 'preact',
    define: { 'process.env.NODE_ENV': '"production"' },
    plugins: [noNodeBuiltins],
    logLevel: 'warning',
  });
});
