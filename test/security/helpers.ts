import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROJECT_ROOT } from '../../src/config.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';

/** Where a sandbox gets the probe (its own writable layer). */
export const PROBE = '/tmp/syscall-probe';

/** Builds test/security/syscall-probe.c statically (it must run in a busybox template); returns the binary. */
export function buildProbe(): { binary: Buffer; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'cubebox-probe-'));
  const out = join(dir, 'syscall-probe');
  execFileSync('cc', ['-static', '-O1', '-Wall', '-o', out, join(PROJECT_ROOT, 'test', 'security', 'syscall-probe.c')], { stdio: 'pipe' });
  const binary = readFileSync(out);
  return { binary, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Runs a command in a sandbox (stdin optional); its exit code and both outputs together. */
export async function sh(m: SandboxManager, id: string, script: string, input?: Buffer): Promise<{ code: number; out: string }> {
  const child = await m.exec(id, ['/bin/sh', '-c', script], { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  if (input) child.stdin!.end(input);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number>((resolve) => child.on('close', (c, s) => resolve(c ?? (s ? 137 : -1))));
  return { code, out: out.trim() };
}

/** Copies the probe into the sandbox through the sandbox itself (no host path involved). */
export async function installProbe(m: SandboxManager, id: string, binary: Buffer): Promise<void> {
  const r = await sh(m, id, `cat > ${PROBE} && chmod 755 ${PROBE}`, binary);
  assert.equal(r.code, 0, r.out);
}

/** The probe's verdict for one operation: "ok" or an errno name. asUser: as uid 1000 (`user`). */
export async function probe(m: SandboxManager, id: string, op: string, asUser = false): Promise<string> {
  const cmd = asUser ? `su user -s /bin/sh -c '${PROBE} ${op}'` : `${PROBE} ${op}`;
  const r = await sh(m, id, cmd);
  assert.ok(r.code === 0 || r.code === 1, `probe ${op} crashed (exit ${r.code}): ${r.out}`);
  return r.out;
}

/** Runs argv as the host's `nobody` (runuser: a real login-less user, no capabilities left). */
export function asHostNobody(argv: string[]): { code: number | null; out: string } {
  const r = spawnSync('runuser', ['-u', 'nobody', '--', ...argv], { encoding: 'utf8' });
  return { code: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}
