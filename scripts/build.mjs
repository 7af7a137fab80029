// Build: the native helpers (C), the TypeScript sources, and the envd bundle.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit' });

mkdirSync(join(root, 'dist/native'), { recursive: true });
run('cc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', 'dist/native/cubebox-helper', 'native/cubebox-helper.c']);
// the bench's floor probes (a static init, a fork server): static, to run on any root
run('cc', ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', 'dist/native/floor-probe', 'native/floor-probe.c']);
run(join(root, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.json']);
if (existsSync(join(root, 'scripts/build-envd.mjs'))) run(process.execPath, ['scripts/build-envd.mjs']);
if (existsSync(join(root, 'scripts/build-interpreter.mjs'))) run(process.execPath, ['scripts/build-interpreter.mjs']);
if (existsSync(join(root, 'scripts/build-dashboard.mjs'))) run(process.execPath, ['scripts/build-dashboard.mjs']);
