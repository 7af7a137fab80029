import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { hostConfig } from '../../src/app/config.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { destroyInstance, newInstance } from '../helpers/instance.js';

// The SDK in debug mode talks to envd at localhost:49983; a forwarder there reaches the
// sandbox's envd through its unix socket, the way the proxy does.
type E2B = typeof import('e2b');
let e2b: E2B;

function forward(socketPath: string): Promise<{ close(): Promise<void> }> {
  const open = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(socketPath);
    open.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(49983, '127.0.0.1', () =>
      resolve({
        close: () =>
          new Promise<void>((r) => {
            for (const sock of open) sock.destroy();
            server.close(() => r());
          }),
      }),
    );
  });
}

async function connectSdk(m: SandboxManager, id: string) {
  const fwd = await forward(m.envdSocket(id)); // the test trusts its own sandbox; the host code connects with connectGuarded
  const sbx = await e2b.Sandbox.connect('debug_sandbox_id', { debug: true });
  return {
    sbx,
    close: () => fwd.close(),
  };
}

describe('envd inside real sandboxes', { timeout: 900_000 }, () => {
  let m: SandboxManager;
  before(async () => {
    e2b = (await import('e2b')) as unknown as E2B;
    m = await newInstance();
    if (!m.templates.find('base')) await m.templates.addDebianBase('base', { cacheDir: hostConfig().cacheDir });
  });
  after(async () => {
    await destroyInstance(m);
  });

  it('busybox template: commands, exit codes and files through the socket', async () => {
    const info = await m.create({ template: 'busybox', secure: false, envVars: { FROM_INIT: 'yes' } });
    const { sbx, close } = await connectSdk(m, info.id);
    try {
      const r = await sbx.commands.run('echo "$FROM_INIT"; echo err >&2');
      assert.equal(r.stdout, 'yes\n');
      assert.equal(r.stderr, 'err\n');
      await assert.rejects(sbx.commands.run('exit 5'), (e: Error & { exitCode?: number }) => e.exitCode === 5);
      await sbx.files.write('/tmp/x/y.txt', 'busybox file');
      assert.equal(await sbx.files.read('/tmp/x/y.txt'), 'busybox file');
      const entries = await sbx.files.list('/tmp/x');
      assert.deepEqual(
        entries.map((e) => e.name),
        ['y.txt'],
      );
    } finally {
      await close();
      await m.delete(info.id);
    }
  });

  it('base template passes the E2B-style checks', async () => {
    const info = await m.create({ template: 'base', secure: false });
    const { sbx, close } = await connectSdk(m, info.id);
    try {
      assert.equal((await sbx.commands.run('whoami')).stdout, 'user\n');
      assert.equal((await sbx.commands.run('echo $HOME; pwd')).stdout, '/home/user\n/home/user\n');
      assert.equal((await sbx.commands.run('sudo -n true && echo sudo-ok')).stdout, 'sudo-ok\n');
      assert.equal((await sbx.commands.run('python3 -c "print(6*7)"')).stdout, '42\n');
      assert.match((await sbx.commands.run('git --version')).stdout, /^git version /);
      assert.match((await sbx.commands.run('curl --version')).stdout, /^curl /);
      assert.equal((await sbx.commands.run('whoami', { user: 'root' })).stdout, 'root\n');
      // tput under a PTY sees the terminal size
      let out = '';
      const pty = await sbx.pty.create({
        cols: 97,
        rows: 31,
        onData: (d) => {
          out += new TextDecoder().decode(d);
        },
      });
      await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('tput cols; exit\n'));
      await pty.wait().catch(() => undefined);
      assert.match(out, /\b97\b/);
    } finally {
      await close();
      await m.delete(info.id);
    }
  });

  it('a symlink planted in the sandbox cannot make envd read or write host files', async () => {
    const secret = `/var/tmp/cubebox-host-secret-${process.pid}`;
    const escape = `/etc/cubebox-escape-${process.pid}`;
    writeFileSync(secret, 'host secret');
    const info = await m.create({ template: 'base', secure: false });
    const { sbx, close } = await connectSdk(m, info.id);
    try {
      await sbx.commands.run(`ln -s ${secret} ~/secret-link; ln -s /etc ~/etc-link; ln -s / ~/root-link`);
      await assert.rejects(sbx.files.read('/home/user/secret-link'), 'the host file does not exist inside the sandbox');
      await sbx.files.write(`/home/user/etc-link/cubebox-escape-${process.pid}`, 'x', { user: 'root' });
      assert.equal(existsSync(escape), false, 'a write through the symlink must land in the sandbox, not on the host');
      assert.equal((await sbx.commands.run(`cat /etc/cubebox-escape-${process.pid}`)).stdout, 'x');
      await sbx.commands.run(`echo sandbox-only > /tmp/marker-${process.pid}`);
      assert.equal(await sbx.files.read(`/home/user/root-link/tmp/marker-${process.pid}`), 'sandbox-only\n', 'a link to / is the sandbox root');
      assert.equal(readFileSync(secret, 'utf8'), 'host secret');
    } finally {
      await close();
      await m.delete(info.id);
      rmSync(secret, { force: true });
      rmSync(escape, { force: true });
    }
  });

  it('orphaned processes are reaped: no zombies accumulate', async () => {
    const info = await m.create({ template: 'busybox', secure: false });
    const { sbx, close } = await connectSdk(m, info.id);
    try {
      await sbx.commands.run('for i in 1 2 3 4 5; do (sleep 0.2 &) ; done; true');
      await new Promise((r) => setTimeout(r, 1500));
      const states = (await sbx.commands.run("cat /proc/[0-9]*/stat | sed 's/.*) //' | cut -c1")).stdout;
      assert.ok(!states.includes('Z'), `zombies in the sandbox: ${states}`);
    } finally {
      await close();
      await m.delete(info.id);
    }
  });
});
