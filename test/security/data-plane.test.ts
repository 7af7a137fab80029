// Attacks on the data plane: a sandbox takeover through an Upgrade tunnel, request
// smuggling and forged /init calls, and host root through a symlinked envd socket. Each
// one drives the real service with real sandboxes.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;

/** Sends raw bytes on one TCP connection to the service; resolves with all it got back once it closes (or after `ms`). */
function raw(bytes: string, ms = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(svc.port, '127.0.0.1');
    let got = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve(got);
    }, ms);
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.on('error', reject);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
    s.write(bytes);
  });
}

const INIT_BODY = JSON.stringify({ accessToken: 'attacker', defaultUser: 'root', envVars: { BASH_ENV: '/tmp/backdoor' } });
const initRequest = (id: string) =>
  `POST /init HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: ${id}\r\nContent-Type: application/json\r\nContent-Length: ${INIT_BODY.length}\r\n\r\n${INIT_BODY}`;

/** The sandbox is still its owner's: the owner's token works, the default user and the env are unchanged. */
async function assertUntouched(sbx: InstanceType<E2B['Sandbox']>): Promise<void> {
  const r = await sbx.commands.run('id -un; echo "env=${BASH_ENV:-none}"');
  assert.equal(r.stdout, 'user\nenv=none\n');
}

describe('data-plane attacks', { timeout: 900_000 }, () => {
  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService());
  });
  after(async () => {
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('an Upgrade that envd does not accept opens no tunnel: a later /init on the connection never reaches envd', async () => {
    const sbx = await e2b.Sandbox.create('base');
    const id = sbx.sandboxId;
    // the probe's repro: a non-WebSocket upgrade, then /init on the same connection
    const a = await raw(`GET /health HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: ${id}\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n${initRequest(id)}`);
    assert.match(a, /^HTTP\/1\.1 400 /);
    assert.equal(a.match(/HTTP\/1\.1/g)?.length, 1, a);
    // a WebSocket upgrade on a path where envd answers an ordinary response: that response, then the end
    const b = await raw(
      `GET /health HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: ${id}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n${initRequest(id)}`,
    );
    assert.match(b, /^HTTP\/1\.1 204 /);
    assert.equal(b.match(/HTTP\/1\.1/g)?.length, 1, b);
    // the same, sent in two writes (the /init after the first answer)
    const c = await new Promise<string>((resolve) => {
      const s = connect(svc.port, '127.0.0.1');
      let got = '';
      s.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got.includes('\r\n\r\n')) s.write(initRequest(id), () => undefined);
      });
      s.on('error', () => undefined);
      s.on('close', () => resolve(got));
      setTimeout(() => s.destroy(), 3000);
      s.write(`GET /health HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: ${id}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
    });
    assert.doesNotMatch(c, /HTTP\/1\.1 204[\s\S]*HTTP\/1\.1 204/);
    await assertUntouched(sbx);
    await sbx.kill();
  });

  it('/init is refused however it arrives: plain, with a guessed secret, smuggled in a body', async () => {
    const sbx = await e2b.Sandbox.create('base');
    const id = sbx.sandboxId;
    assert.match(await raw(initRequest(id)), /^HTTP\/1\.1 403 /);
    const guessed = initRequest(id).replace('Content-Type', 'X-Cubebox-Init-Secret: guess\r\nContent-Type');
    assert.match(await raw(guessed), /^HTTP\/1\.1 403 /);
    // CL.TE and TE.CL: a request hidden in another's body must not reach envd as a request
    const hidden = initRequest(id);
    const clte = await raw(
      `POST /health HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: ${id}\r\nContent-Length: ${hidden.length + 5}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${hidden}`,
    );
    assert.match(clte, /^HTTP\/1\.1 400 /);
    const chunk = hidden.length.toString(16);
    const tecl = await raw(`POST /health HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: ${id}\r\nTransfer-Encoding: chunked\r\n\r\n${chunk}\r\n${hidden}\r\n0\r\n\r\n`);
    assert.doesNotMatch(tecl, /^HTTP\/1\.1 2\d\d[\s\S]*HTTP\/1\.1 2\d\d/);
    await assertUntouched(sbx);
    await sbx.kill();
  });

  it("envd's own /init wants the host's secret, also from inside the sandbox", async () => {
    const sbx = await e2b.Sandbox.create('base');
    const r = await sbx.commands.run(
      `curl -s -o /dev/null -w '%{http_code}' --unix-socket /.cubebox/run/envd.sock -H 'Content-Type: application/json' -d '${INIT_BODY}' http://envd/init`,
      { user: 'root' },
    );
    assert.equal(r.stdout, '401');
    // the secret is nowhere in the environment of what envd starts
    const env = await sbx.commands.run('env', { user: 'root' });
    assert.doesNotMatch(env.stdout, /CUBEBOX_ENVD_INIT_SECRET/);
    await assertUntouched(sbx);
    await sbx.kill();
  });

  it('a symlinked or swapped envd socket never leads the host anywhere else', async () => {
    const victim = await e2b.Sandbox.create('base');
    const attacker = await e2b.Sandbox.create('base');
    const id = attacker.sandboxId;
    // root inside the attacker's sandbox, through the runtime (no envd connection stays open in the proxy)
    const asRoot = async (script: string) => {
      const r = await cli(dataDir, ['sandbox', 'exec', id, '--', '/bin/sh', '-c', script]);
      assert.equal(r.code, 0, r.stderr);
    };
    const probe = async (what: string) => {
      for (const path of ['/sandboxes', '/health', '/envs', '/files?path=/etc/hostname']) {
        const res = await fetch(`${svc.url}${path}`, { headers: { 'E2b-Sandbox-Id': id } });
        const body = await res.text();
        assert.equal(res.status, 502, `${what} ${path}: ${res.status} ${body}`);
        assert.ok(!body.includes(victim.sandboxId), body);
      }
    };
    await asRoot('ln /.cubebox/run/envd.sock /.cubebox/run/real.sock'); // to put back at the end
    const targets = [
      join(dataDir, 'manager.sock'), // the manager's control socket: every sandbox, every token
      join(dataDir, 'sandboxes', victim.sandboxId, 'disk', 'run', 'envd.sock'), // another sandbox's envd
      '/run/systemd/private',
    ];
    for (const target of targets) {
      await asRoot(`ln -sfn ${target} /.cubebox/run/envd.sock`);
      await probe(`symlink to ${target}`);
    }
    for (const swap of ['rm -f /.cubebox/run/envd.sock && touch /.cubebox/run/envd.sock', 'rm -f /.cubebox/run/envd.sock && mkdir /.cubebox/run/envd.sock']) {
      await asRoot(swap);
      await probe(swap);
      await asRoot('rm -rf /.cubebox/run/envd.sock');
    }
    // the sandbox's own socket back in place: the same check lets it through
    await asRoot('mv -f /.cubebox/run/real.sock /.cubebox/run/envd.sock');
    assert.equal((await attacker.commands.run('echo back')).stdout, 'back\n');
    assert.equal((await victim.commands.run('echo alive')).stdout, 'alive\n');
    await victim.kill();
    await attacker.kill();
  });
});
