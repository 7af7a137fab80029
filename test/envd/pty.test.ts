// pty.* of the real e2b SDK (debug mode) against a standalone envd.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Sandbox } from 'e2b';
import { eventually, isAlive, sdk, startTestEnvd, type TestEnvd } from './helpers.js';

const enc = new TextEncoder();

describe('envd PTY through the SDK', () => {
  let envd: TestEnvd;
  let sbx: Sandbox;

  before(async () => {
    envd = await startTestEnvd();
    sbx = await sdk();
  });
  after(async () => {
    await envd?.stop();
  });

  test('create, sendInput, output as pty data, exit', async () => {
    let out = '';
    const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => void (out += Buffer.from(d).toString()), timeoutMs: 0 });
    assert.ok(t.pid > 0);
    await sbx.pty.sendInput(t.pid, enc.encode('echo "mark-$((40+2))"; tty; id -u\n'));
    assert.ok(await eventually(() => out.includes('mark-42')), out);
    assert.ok(await eventually(() => out.includes('/dev/pts/')), out);
    assert.ok(await eventually(() => out.includes(String(envd.uid))), out);
    await sbx.pty.sendInput(t.pid, enc.encode('exit 7\n'));
    await assert.rejects(t.wait(), (e: unknown) => (e as { exitCode?: number }).exitCode === 7);
  });

  test('TERM and the size given at create; resize is seen by tput', async () => {
    let out = '';
    const t = await sbx.pty.create({ cols: 91, rows: 33, onData: (d) => void (out += Buffer.from(d).toString()), timeoutMs: 0 });
    await sbx.pty.sendInput(t.pid, enc.encode('echo "T=$TERM"; echo "C=$(tput cols) L=$(tput lines)"\n'));
    assert.ok(await eventually(() => /C=91 L=33/.test(out)), out);
    assert.ok(out.includes('T=xterm-256color'), out);
    await sbx.pty.resize(t.pid, { cols: 123, rows: 45 });
    await sbx.pty.sendInput(t.pid, enc.encode('echo "C=$(tput cols) L=$(tput lines)"\n'));
    assert.ok(await eventually(() => /C=123 L=45/.test(out)), out);
    await sbx.pty.kill(t.pid);
    await t.wait().catch(() => {});
  });

  test('reconnect streams only new output; kill ends it', async () => {
    let first = '';
    const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => void (first += Buffer.from(d).toString()), timeoutMs: 0 });
    await sbx.pty.sendInput(t.pid, enc.encode('echo before-$((1+1))\n'));
    assert.ok(await eventually(() => first.includes('before-2')));
    await t.disconnect();
    assert.ok(isAlive(t.pid));

    let second = '';
    const again = await sbx.pty.connect(t.pid, { onData: (d) => void (second += Buffer.from(d).toString()), timeoutMs: 0 });
    await sbx.pty.sendInput(t.pid, enc.encode('echo after-$((2+3))\n'));
    assert.ok(await eventually(() => second.includes('after-5')), second);
    assert.ok(!second.includes('before-2'));

    assert.equal(await sbx.pty.kill(t.pid), true);
    await assert.rejects(again.wait(), (e: unknown) => (e as { exitCode?: number }).exitCode === -1);
    assert.ok(await eventually(() => !isAlive(t.pid)));
    assert.equal(await sbx.pty.kill(t.pid), false);
  });

  test('a PTY as root, with cwd and envs', async () => {
    let out = '';
    const t = await sbx.pty.create({
      cols: 80,
      rows: 24,
      user: 'root',
      cwd: '/tmp',
      envs: { PTY_VAR: 'pv' },
      onData: (d) => void (out += Buffer.from(d).toString()),
      timeoutMs: 0,
    });
    await sbx.pty.sendInput(t.pid, enc.encode('echo "R=$(id -u) W=$(pwd) V=$PTY_VAR"; exit\n'));
    const r = await t.wait();
    assert.equal(r.exitCode, 0);
    assert.ok(out.includes('R=0 W=/tmp V=pv'), out);
  });

  test('ctrl-c interrupts the foreground job, the shell survives', async () => {
    let out = '';
    const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => void (out += Buffer.from(d).toString()), timeoutMs: 0 });
    await sbx.pty.sendInput(t.pid, enc.encode('sleep 1000\n'));
    await eventually(async () => (await sbx.commands.run(`pgrep -s ${t.pid} sleep || true`, { user: 'root' })).stdout.trim() !== '');
    await sbx.pty.sendInput(t.pid, enc.encode('\x03'));
    await sbx.pty.sendInput(t.pid, enc.encode('echo alive-$((3*3))\n'));
    assert.ok(await eventually(() => out.includes('alive-9')), out);
    await sbx.pty.kill(t.pid);
    await t.wait().catch(() => {});
  });
});
