// Runs the test suites with node's test runner, one file at a time (the integration
// suites drive real sandboxes on a shared host). Usage: npm test [-- unit|envd|integration|security|e2e|browser|<file>...]
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const suites = ['unit', 'envd', 'integration', 'security', 'e2e', 'browser'];
const args = process.argv.slice(2);
const chosen = args.length ? args : suites;

function walk(dir) {
  let out = [];
  let entries = [];
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const e of entries.sort()) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) out = out.concat(walk(p));
    else if (e.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const files = [];
for (const c of chosen) {
  if (suites.includes(c)) files.push(...walk(join(root, 'dist/test', c)));
  else files.push(c);
}
if (!files.length) {
  console.error('no test files found (did you run npm run build?)');
  process.exit(1);
}
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files], { stdio: 'inherit', cwd: root });
process.exit(r.status ?? 1);
