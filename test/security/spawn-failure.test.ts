// A program the service cannot start (out of file descriptors, or missing) fails the one call
// that wanted it, never the service: each case runs in a process of its own with a small
// open-file limit, the way a connection flood leaves serve.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PROJECT_ROOT } from '../../src/config.js';

const dist = (p: string) => JSON.stringify(join(PROJECT_ROOT, 'dist', 'src', p));

/** The probe: fills its descriptor table, tries each kind of spawn, frees some and tries again. */
const PROBE = `
import { openSync, closeSync } from 'node:fs';
import { run, runLines } from ${dist('util/exec.js')};
import { OciRuntime } from ${dist('runtime/oci-runtime.js')};
const out = {};
const rt = new OciRuntime('crun', process.argv[1], 'unified', { binary: '/bin/true' });
const missing = new OciRuntime('crun', process.argv[1], 'unified', { binary: '/nonexistent/crun' });
const closeOf = (c) => new Promise((r) => c.on('close', (code) => r(code)));
out.missingCall = await missing.pause('x').then(() => 'ok', (e) => e.code ?? e.message);
const fds = [];
try { for (;;) fds.push(openSync('/dev/null', 'r')); } catch (e) { out.filled = e.code; }
out.run = await run('/bin/true', []).then(() => 'ok', (e) => e.code);
out.runtimeCall = await rt.pause('x').then(() => 'ok', (e) => e.code);
// nobody listens for 'error' on a runtime exec (callers wait for 'close')
out.runtimeExec = await closeOf(rt.exec('x', ['true'], { stdio: ['ignore', 'pipe', 'pipe'] }));
out.runLines = (await runLines('/bin/true', [])).error ?? 'ok';
for (const fd of fds.splice(0, 32)) closeSync(fd);
out.after = await run('/bin/true', []).then(() => 'ok', (e) => e.code);
console.log(JSON.stringify(out));
`;

describe('spawn failures', () => {
  it('a spawn that fails for want of file descriptors or a binary is an error of that call; the process stays up and spawns again once fds are free', () => {
    const stateRoot = mkdtempSync('/var/tmp/cubebox-spawn-');
    try {
      const r = spawnSync('prlimit', ['--nofile=128:128', process.execPath, '--input-type=module', '-e', PROBE, stateRoot], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      assert.equal(r.status, 0, `the probe died: ${r.stderr}`);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
      assert.deepEqual(out, {
        missingCall: 'ENOENT',
        filled: 'EMFILE',
        run: 'EMFILE',
        runtimeCall: 'EMFILE',
        runtimeExec: -24, // -EMFILE
        runLines: 'spawn /bin/true EMFILE',
        after: 'ok',
      });
    } finally {
      rmSync(stateRoot, { recursive: true, force: true });
    }
  });
});
