// commands.* of the real e2b SDK (debug mode) against a standalone envd.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { AuthenticationError, CommandExitError, InvalidArgumentError, TimeoutError, type Sandbox } from 'e2b';
import { eventually, initEnvd, isAlive, sdk, startTestEnvd, type TestEnvd } from './helpers.js';

describe('envd commands through the SDK', () => {
  let envd: TestEnvd;
  let sbx: Sandbox;

  before(async () => {
    envd = await startTestEnvd();
    sbx = await sdk();
  });
  after(async () => {
    await envd?.stop();
  });

  test('stdout, stderr and exit code 0', async () => {
    const r = await sbx.commands.run('echo hello; echo oops >&2');
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'hello\n');
    assert.equal(r.stderr, 'oops\n');
    assert.equal(r.error, undefined);
  });

  test('non-zero exit raises CommandExitError with output and status text', async () => {
    await assert.rejects(sbx.commands.run('echo out; echo err >&2; exit 3'), (e: unknown) => {
      assert.ok(e instanceof CommandExitError);
      assert.equal(e.exitCode, 3);
      assert.equal(e.error, 'exit status 3');
      assert.equal(e.stdout, 'out\n');
      assert.equal(e.stderr, 'err\n');
      return true;
    });
  });

  test('a process killed by a signal reports -1 and the signal', async () => {
    await assert.rejects(sbx.commands.run('kill -9 $$'), (e: unknown) => {
      assert.ok(e instanceof CommandExitError);
      assert.equal(e.exitCode, -1);
      assert.equal(e.error, 'signal: killed');
      return true;
    });
  });

  test('callbacks receive the output as it comes', async () => {
    const out: string[] = [];
    const err: string[] = [];
    await sbx.commands.run('for i in 1 2 3; do echo $i; echo e$i >&2; done', { onStdout: (d) => void out.push(d), onStderr: (d) => void err.push(d) });
    assert.equal(out.join(''), '1\n2\n3\n');
    assert.equal(err.join(''), 'e1\ne2\ne3\n');
  });

  test('large output arrives complete', async () => {
    const r = await sbx.commands.run('head -c 3000000 /dev/zero | tr "\\0" a');
    assert.equal(r.stdout.length, 3_000_000);
    assert.ok(/^a+$/.test(r.stdout));
  });

  test('default user, home, cwd and supplementary groups', async () => {
    const r = await sbx.commands.run('id -u; id -g; id -G; pwd; echo $HOME $USER $LOGNAME');
    const [uid, gid, groups, cwd, vars] = r.stdout.trim().split('\n');
    assert.equal(Number(uid), envd.uid);
    assert.equal(Number(gid), envd.gid);
    assert.deepEqual(groups?.split(' ').map(Number).sort(), [envd.gid, envd.extraGid].sort());
    assert.equal(cwd, envd.home);
    assert.equal(vars, `${envd.home} user user`);
  });

  test('user root', async () => {
    const r = await sbx.commands.run('id -u; pwd; echo $HOME $USER', { user: 'root' });
    assert.equal(r.stdout, `0\n${envd.rootHome}\n${envd.rootHome} root\n`);
  });

  test('unknown user is refused', async () => {
    await assert.rejects(sbx.commands.run('true', { user: 'nobody-here' as 'user' }), AuthenticationError);
  });

  test('cwd: absolute, relative to home, ~, and missing', async () => {
    assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n');
    await sbx.commands.run('mkdir -p sub/dir');
    assert.equal((await sbx.commands.run('pwd', { cwd: 'sub/dir' })).stdout, `${envd.home}/sub/dir\n`);
    assert.equal((await sbx.commands.run('pwd', { cwd: '~/sub' })).stdout, `${envd.home}/sub\n`);
    await assert.rejects(sbx.commands.run('pwd', { cwd: '/no/such/dir' }), InvalidArgumentError);
  });

  test('envs: per command, from /init, precedence, no leaking', async () => {
    assert.equal(await initEnvd(envd.socket, { envVars: { SBX_A: 'from-init', SBX_B: 'from-init' } }), 204);
    const r = await sbx.commands.run('echo $SBX_A $SBX_B $ONLY_HERE', { envs: { SBX_B: 'from-cmd', ONLY_HERE: 'x' } });
    assert.equal(r.stdout, 'from-init from-cmd x\n');
    const r2 = await sbx.commands.run('echo "[$ONLY_HERE]" $SBX_B');
    assert.equal(r2.stdout, '[] from-init\n');
    // Per-command HOME overrides the user's.
    assert.equal((await sbx.commands.run('echo $HOME', { envs: { HOME: '/elsewhere' } })).stdout, '/elsewhere\n');
    // PATH comes from envd.
    assert.ok((await sbx.commands.run('echo $PATH')).stdout.includes('/bin'));
  });

  test('timeout kills the process and its whole group', async () => {
    const pidFile = join(envd.home, 'bg.pid');
    const h = await sbx.commands.run(`sleep 1000 & echo $! > ${pidFile}; sleep 1000`, { background: true, timeoutMs: 1500 });
    await assert.rejects(h.wait(), TimeoutError);
    assert.ok(await eventually(() => !isAlive(h.pid)), 'leader still alive');
    const { readFileSync } = await import('node:fs');
    const bg = Number(readFileSync(pidFile, 'utf8').trim());
    assert.ok(bg > 0);
    assert.ok(await eventually(() => !isAlive(bg)), 'background child still alive');
  });

  test('foreground timeout raises TimeoutError', async () => {
    await assert.rejects(sbx.commands.run('sleep 1000', { timeoutMs: 1000 }), TimeoutError);
  });

  test('background: list, connect, sendStdin, closeStdin', async () => {
    const h = await sbx.commands.run('read line; echo got:$line; cat; echo done', { background: true, stdin: true, timeoutMs: 0 });
    const listed = await sbx.commands.list();
    const me = listed.find((p) => p.pid === h.pid);
    assert.ok(me, 'process is listed');
    assert.equal(me.cmd, '/bin/bash');
    assert.deepEqual(me.args, ['-l', '-c', 'read line; echo got:$line; cat; echo done']);

    await sbx.commands.sendStdin(h.pid, 'first\n');
    assert.ok(await eventually(() => h.stdout.includes('got:first')));
    // A second stream on the same process sees only new output.
    const seen: string[] = [];
    const c = await sbx.commands.connect(h.pid, { onStdout: (d) => void seen.push(d), timeoutMs: 0 });
    await sbx.commands.sendStdin(h.pid, 'second\n');
    await sbx.commands.closeStdin(h.pid);
    const r = await c.wait();
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'second\ndone\n');
    assert.equal(seen.join(''), 'second\ndone\n');
    const r1 = await h.wait();
    assert.equal(r1.stdout, 'got:first\nsecond\ndone\n');
    assert.ok(!(await sbx.commands.list()).some((p) => p.pid === h.pid));
  });

  test('disconnect leaves the process running; connect later; kill', async () => {
    const h = await sbx.commands.run('echo started; sleep 1000', { background: true, timeoutMs: 0 });
    await eventually(() => h.stdout.includes('started'));
    await h.disconnect();
    assert.ok(isAlive(h.pid));
    assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid));
    const again = await sbx.commands.connect(h.pid, { timeoutMs: 0 });
    assert.equal(again.pid, h.pid);
    assert.equal(await sbx.commands.kill(h.pid), true);
    await assert.rejects(again.wait(), (e: unknown) => e instanceof CommandExitError && e.exitCode === -1 && e.error === 'signal: killed');
    assert.ok(await eventually(() => !isAlive(h.pid)));
    assert.equal(await sbx.commands.kill(h.pid), false);
  });

  test('kill returns once the process is gone: kill -0 fails right after it', async () => {
    // several at once, as an agent under load does: each answer must wait for its own reaping
    const handles = await Promise.all(Array.from({ length: 12 }, () => sbx.commands.run('sleep 1000', { background: true, timeoutMs: 0 })));
    const stillThere = await Promise.all(
      handles.map(async (h) => {
        assert.equal(await sbx.commands.kill(h.pid), true);
        try {
          process.kill(h.pid, 0); // what `kill -0` does: succeeds for a zombie too
          return [h.pid];
        } catch (e) {
          assert.equal((e as NodeJS.ErrnoException).code, 'ESRCH');
          return [];
        }
      }),
    );
    assert.deepEqual(stillThere.flat(), [], 'pids still present right after kill returned');
  });

  test('connect to an unknown pid fails', async () => {
    await assert.rejects(sbx.commands.connect(999_999_9), (e: unknown) => e instanceof Error && /not found/i.test(e.message));
  });

  test('the start event carries the real pid', async () => {
    const h = await sbx.commands.run('echo $$; sleep 1000', { background: true, timeoutMs: 0 });
    await eventually(() => h.stdout.length > 0);
    assert.equal(Number(h.stdout.trim()), h.pid);
    const r = await sbx.commands.run(`kill -0 ${h.pid} && echo alive`, { user: 'root' });
    assert.equal(r.stdout, 'alive\n');
    await sbx.commands.kill(h.pid);
  });

  test('uploaded scripts run as the user', async () => {
    writeFileSync(join(envd.home, 'hi.sh'), 'echo script:$(id -un 2>/dev/null || id -u)\n');
    const r = await sbx.commands.run('bash hi.sh');
    assert.ok(r.stdout.startsWith('script:'));
  });
});
