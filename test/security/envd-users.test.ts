// envd acts with the requested user's credentials: as `user`, /files and the
// Filesystem RPCs get permission denied wherever the user's own programs would, and what they
// create belongs to the user (with the user's supplementary groups counted); as root they work.
// envd's TCP listener is off unless asked for, and then always needs an access token.
// Runs a standalone envd (test/envd/helpers.ts) with the real SDK; nothing outside its
// temporary directory is written.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { Sandbox } from 'e2b';
import { BASE_URL, bundleDir, initEnvd, sdk, socketGet, startTestEnvd, type TestEnvd } from '../envd/helpers.js';

const asUser = { user: 'user' } as const;
const asRoot = { user: 'root' } as const;

/** The SDK's error for a refused access: permission denied (Connect) or 403 (/files). */
function denied(e: unknown): boolean {
  const msg = String((e as Error)?.message ?? e);
  return /permission denied|403/i.test(msg);
}

/** TCP ports a process listens on (from its network namespace's tables and its own sockets). */
function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1] as string);
    } catch {
      /* closed meanwhile */
    }
  }
  const ports: number[] = [];
  for (const table of ['tcp', 'tcp6']) {
    let text = '';
    try {
      text = readFileSync(`/proc/${pid}/net/${table}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A' && inodes.has(f[9] as string)) ports.push(parseInt((f[1] as string).split(':')[1] as string, 16));
    }
  }
  return ports;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

describe('envd acts as the requested user', () => {
  let envd: TestEnvd;
  let sbx: Sandbox;
  let secret: string;
  let shared: string;

  before(async () => {
    envd = await startTestEnvd();
    sbx = await sdk();
    // Root's own things: a 0700 home with a 0600 file (like /root and /etc/shadow).
    secret = join(envd.rootHome, 'secret.txt');
    writeFileSync(secret, 'root only\n', { mode: 0o600 });
    // A directory writable through a supplementary group of `user` only.
    shared = join(envd.dir, 'shared');
    mkdirSync(shared);
    chownSync(shared, 0, envd.extraGid);
    chmodSync(shared, 0o770);
  });
  after(async () => {
    await envd?.stop();
  });

  test('as user, /etc/shadow cannot be read, through the SDK, /files or a /proc path', async () => {
    await assert.rejects(sbx.files.read('/etc/shadow', asUser), denied);
    await assert.rejects(sbx.files.read('/proc/1/root/etc/shadow', asUser), denied);
    await assert.rejects(sbx.files.read('/proc/self/root/etc/shadow', asUser), denied);
    await assert.rejects(sbx.files.read(`/proc/self/cwd/${secret}`, asUser), denied);
    const r = await fetch(`${BASE_URL}/files?path=/etc/shadow&username=user`);
    assert.equal(r.status, 403);
    assert.doesNotMatch(await r.text(), /root:/);
  });

  test('as user, root-only files and directories are refused by every operation', async () => {
    await assert.rejects(sbx.files.read(secret, asUser), denied);
    await assert.rejects(sbx.files.list(envd.rootHome, asUser), denied);
    await assert.rejects(sbx.files.getInfo(secret, asUser), denied);
    await assert.rejects(sbx.files.exists(secret, asUser), denied);
    await assert.rejects(sbx.files.write(join(envd.rootHome, 'planted.txt'), 'x', asUser), denied);
    await assert.rejects(sbx.files.makeDir(join(envd.rootHome, 'planted'), asUser), denied);
    await assert.rejects(sbx.files.rename(secret, join(envd.home, 'stolen.txt'), asUser), denied);
    await assert.rejects(sbx.files.remove(secret, asUser), denied);
    await assert.rejects(
      sbx.files.watchDir(envd.rootHome, () => {}, { ...asUser, timeoutMs: 0 }),
      denied,
    );
    assert.equal(readFileSync(secret, 'utf8'), 'root only\n', 'the file is untouched');
    assert.deepEqual(readdirSync(envd.rootHome), ['secret.txt']);
    assert.ok(!existsSync(join(envd.home, 'stolen.txt')));
    // /files upload into a root-owned directory (like /etc/sudoers.d).
    const up = await fetch(`${BASE_URL}/files?path=${encodeURIComponent(join(envd.rootHome, 'sudoers'))}&username=user`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: 'user ALL=(ALL) NOPASSWD:ALL\n',
    });
    assert.equal(up.status, 403);
    assert.ok(!existsSync(join(envd.rootHome, 'sudoers')));
  });

  test('as user, writing /etc/sudoers.d is refused', async () => {
    // envd runs on the host here: the test's own root-owned stand-in for the sandbox's
    // /etc/sudoers.d (a missing directory would be made for the user, as E2B's envd does)
    const sudoers = join(envd.dir, 'etc', 'sudoers.d');
    mkdirSync(sudoers, { recursive: true, mode: 0o755 });
    await assert.rejects(sbx.files.write(join(sudoers, 'cubebox-envd-test'), 'user ALL=(ALL) NOPASSWD:ALL\n', asUser), denied);
    assert.deepEqual(readdirSync(sudoers), []);
  });

  test('a symlink planted by the user does not lend it root access', async () => {
    await sbx.commands.run(`ln -sf ${secret} ~/link-to-secret; ln -sfn ${envd.rootHome} ~/link-to-root`);
    await assert.rejects(sbx.files.read('link-to-secret', asUser), denied);
    await assert.rejects(sbx.files.list('link-to-root', asUser), denied);
    await assert.rejects(sbx.files.write('link-to-root/x.txt', 'x', asUser), denied);
    assert.deepEqual(readdirSync(envd.rootHome), ['secret.txt']);
  });

  test('as root the same operations work', async () => {
    assert.equal(await sbx.files.read(secret, asRoot), 'root only\n');
    assert.deepEqual(
      (await sbx.files.list(envd.rootHome, asRoot)).map((e) => e.name),
      ['secret.txt'],
    );
    const w = await sbx.files.write(join(envd.rootHome, 'by-root.txt'), 'r', asRoot);
    assert.equal(w.path, join(envd.rootHome, 'by-root.txt'));
    const st = statSync(join(envd.rootHome, 'by-root.txt'));
    assert.equal(st.uid, 0);
    assert.equal((await sbx.files.getInfo(join(envd.rootHome, 'by-root.txt'), asRoot)).owner, 'root');
    await sbx.files.remove(join(envd.rootHome, 'by-root.txt'), asRoot);
    const r = await fetch(`${BASE_URL}/files?path=${encodeURIComponent(secret)}&username=root`);
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'root only\n');
  });

  test("what the user creates is the user's, parents included; metadata still works", async () => {
    const up = await fetch(`${BASE_URL}/files?path=made/deep/file.txt&username=user`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream', 'X-Metadata-Origin': 'test' },
      body: 'mine',
    });
    assert.equal(up.status, 200);
    for (const p of ['made', 'made/deep', 'made/deep/file.txt']) {
      const st = statSync(join(envd.home, p));
      assert.equal(st.uid, envd.uid, `${p} owner`);
      assert.equal(st.gid, envd.gid, `${p} group`);
    }
    assert.equal(statSync(join(envd.home, 'made/deep/file.txt')).mode & 0o777, 0o644);
    assert.equal(statSync(join(envd.home, 'made/deep')).mode & 0o777, 0o755);
    const info = await sbx.files.getInfo('made/deep/file.txt', asUser);
    assert.equal(info.owner, 'user');
    assert.deepEqual((info as unknown as { metadata?: Record<string, string> }).metadata, { origin: 'test' });
    await sbx.files.makeDir('made/dir2', asUser);
    assert.equal(statSync(join(envd.home, 'made/dir2')).uid, envd.uid);
    await sbx.files.rename('made/deep/file.txt', 'made/moved.txt', asUser);
    assert.equal(statSync(join(envd.home, 'made/moved.txt')).uid, envd.uid);
  });

  test("the user's supplementary groups count", async () => {
    await sbx.files.write(join(shared, 'via-group.txt'), 'g', asUser);
    const st = statSync(join(shared, 'via-group.txt'));
    assert.equal(st.uid, envd.uid);
    assert.equal(await sbx.files.read(join(shared, 'via-group.txt'), asUser), 'g');
  });
});

describe('envd TCP listener', () => {
  let envd: TestEnvd;

  before(async () => {
    envd = await startTestEnvd();
  });
  after(async () => {
    await envd?.stop();
  });

  /** A second envd of the same sandbox files, started by hand with these arguments and environment. */
  async function bareEnvd(args: string[], env: Record<string, string> = {}) {
    const sock = join(envd.dir, `bare-${Math.random().toString(36).slice(2)}.sock`);
    const child = spawn(
      process.execPath,
      [join(bundleDir, 'envd.mjs'), '--socket', sock, '--passwd', join(envd.dir, 'passwd'), '--group', join(envd.dir, 'group'), '--state-dir', '', ...args],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env },
      },
    );
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    for (let i = 0; i < 400 && (await socketGet(sock, '/health')) !== 204; i++) await new Promise((r) => setTimeout(r, 25));
    return {
      sock,
      pid: child.pid as number,
      async stop() {
        child.kill('SIGTERM');
        await exited;
      },
    };
  }

  test('off by default: envd listens on its socket only', async () => {
    assert.deepEqual(listeningPorts(envd.pid), []);
  });

  test('--port without a token: no TCP until /init sets one, then the token is required', async () => {
    const port = await freePort();
    const e = await bareEnvd(['--port', String(port), '--host', '127.0.0.1']);
    try {
      assert.deepEqual(listeningPorts(e.pid), []);
      await assert.rejects(fetch(`http://127.0.0.1:${port}/health`));
      assert.equal(await initEnvd(e.sock, { accessToken: 'tcp-token-1' }), 204);
      let up = false;
      for (let i = 0; i < 200 && !up; i++) {
        up = listeningPorts(e.pid).includes(port);
        if (!up) await new Promise((r) => setTimeout(r, 25));
      }
      assert.ok(up, 'TCP listens once a token is set');
      assert.equal((await fetch(`http://127.0.0.1:${port}/envs`)).status, 401);
      assert.equal((await fetch(`http://127.0.0.1:${port}/envs`, { headers: { 'X-Access-Token': 'tcp-token-1' } })).status, 200);
      const start = await fetch(`http://127.0.0.1:${port}/process.Process/List`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1' },
        body: '{}',
      });
      assert.equal(start.status, 401);
      // Over TCP, /init cannot replace the token without it.
      const hijack = await fetch(`http://127.0.0.1:${port}/init`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ accessToken: 'mine-now', defaultUser: 'root' }),
      });
      assert.equal(hijack.status, 401);
      assert.equal((await fetch(`http://127.0.0.1:${port}/envs`, { headers: { 'X-Access-Token': 'tcp-token-1' } })).status, 200);
    } finally {
      await e.stop();
    }
  });

  test('--port with ENVD_ACCESS_TOKEN: listens at once, with the token required', async () => {
    const port = await freePort();
    const e = await bareEnvd(['--port', String(port), '--host', '127.0.0.1'], { ENVD_ACCESS_TOKEN: 'tcp-token-2' });
    try {
      assert.ok(listeningPorts(e.pid).includes(port));
      assert.equal((await fetch(`http://127.0.0.1:${port}/envs`)).status, 401);
      assert.equal((await fetch(`http://127.0.0.1:${port}/envs`, { headers: { 'X-Access-Token': 'tcp-token-2' } })).status, 200);
    } finally {
      await e.stop();
    }
  });
});
