// Base images from a registry: a real registry on loopback (TLS with a CA made here, htpasswd
// basic auth), an image pushed to it with skopeo, pulled by tag and by digest into templates;
// the second request reuses the first pull; each failure is a clear error that leaves nothing.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { templateFromImage, type BaseImageRequest } from '../../src/template/image-source.js';
import type { RegistrySettings } from '../../src/template/oci/registry.js';
import { CubeboxError } from '../../src/util/errors.js';
import { assertNoSandboxLeaks, cli, destroyInstance, execIn, newDataDir, newInstance } from '../helpers/instance.js';
import { addIndex, freePort, makeTestImage, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { hostArch } from '../../src/template/oci/resolve.js';

describe('base images from a registry', { timeout: 300_000 }, () => {
  let m: SandboxManager;
  let reg: TestRegistry;
  let work: string;
  let digest: string;
  let trusted: RegistrySettings;
  let layersDir: string;
  const image = () => `${reg.host}/cubebox/app:v1`;
  const creds = () => ({ type: 'registry' as const, username: reg.username, password: reg.password });
  const blobFetches = () => reg.requests().filter((r) => /^GET \/v2\/cubebox\/app\/blobs\//.test(r)).length;
  const ourTemps = () => readdirSync(tmpdir()).filter((e) => e.startsWith('cubebox-registry-'));

  before(async () => {
    work = mkdtempSync('/var/tmp/cubebox-registry-pull-');
    [reg, m] = await Promise.all([startRegistry(), newInstance()]);
    const layout = await makeTestImage(work);
    digest = await reg.push(layout, 'v1', 'cubebox/app:v1');
    addIndex(layout, 'v1', 'multi', [
      { os: 'linux', architecture: 's390x' },
      { os: 'linux', architecture: hostArch() },
    ]);
    addIndex(layout, 'v1', 'foreign', [{ os: 'linux', architecture: 's390x' }]);
    await reg.push(layout, 'multi', 'cubebox/app:multi');
    await reg.push(layout, 'foreign', 'cubebox/app:foreign');
    trusted = { caFile: reg.caFile };
    layersDir = dirname(m.templates.get('busybox').layers[0]!);
  });
  after(async () => {
    await destroyInstance(m);
    await reg?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  /** Asserts a failed request left nothing: no template, no layer, no temporary, no auth file. */
  async function failsCleanly(req: Partial<BaseImageRequest>, settings: RegistrySettings, kind: string, message: RegExp): Promise<void> {
    const templates = m.templates.list().length;
    const layers = readdirSync(layersDir).sort();
    const temps = ourTemps();
    await assert.rejects(templateFromImage(m.templates, { image: image(), team: null, ...req }, settings), (e: unknown) => {
      assert.ok(e instanceof CubeboxError, String(e));
      assert.equal(e.kind, kind, e.message);
      assert.match(e.message, message);
      assert.doesNotMatch(e.message, new RegExp(reg.password));
      return true;
    });
    assert.equal(m.templates.list().length, templates, 'no template row left');
    assert.deepEqual(readdirSync(layersDir).sort(), layers, 'no layer or temporary left in the layer directory');
    assert.deepEqual(ourTemps(), temps, 'no auth file directory left');
  }

  it('pulls by tag over TLS with credentials: the template has the image files and config, and a second request reuses it without a pull', async () => {
    const lines: string[] = [];
    const seen = watchCommandLines(reg.password, reg.host);
    const t = await templateFromImage(m.templates, { image: image(), registry: creds(), team: null, onLog: (l) => lines.push(l) }, trusted).finally(() =>
      seen.stop(),
    );
    const { sawSkopeo, sawPassword } = await seen.stop();
    assert.ok(sawSkopeo, 'the watch saw skopeo run');
    assert.equal(sawPassword, false, 'the password was on a command line');
    assert.ok(!lines.join('\n').includes(reg.password), 'the password was logged');
    assert.equal(t.config.imageDigest, digest);
    assert.equal(t.config.env.GREETING, 'from-the-registry');
    assert.equal(t.config.workdir, '/data');
    assert.equal(t.config.startCommand, 'sleep 100000');
    assert.equal(t.config.buildStep, true, 'hidden from template lists');
    assert.equal(t.layers.length, 2);
    const fromLayers = (p: string) => t.layers.map((l) => join(l, p)).find((f) => readdirSync(dirname(f)).includes(p.split('/').pop()!));
    assert.equal(readFileSync(fromLayers('data/hello')!, 'utf8'), 'hello from the registry\n');
    assert.ok(blobFetches() > 0);

    const fetched = blobFetches();
    const templates = m.templates.list().length;
    const again: string[] = [];
    const t2 = await templateFromImage(m.templates, { image: image(), registry: creds(), team: null, onLog: (l) => again.push(l) }, trusted);
    assert.equal(t2.id, t.id);
    assert.equal(blobFetches(), fetched, 'no blob was fetched again');
    assert.equal(m.templates.list().length, templates);
    assert.match(again.join('\n'), /using the image already pulled/);
    assert.doesNotMatch(again.join('\n'), /pulling/);
  });

  it("pulls by digest for another team: that team's own template, on the same shared layers", async () => {
    const mine = await templateFromImage(m.templates, { image: image(), registry: creds(), team: null }, trusted);
    const fetched = blobFetches();
    const t = await templateFromImage(m.templates, { image: `${reg.host}/cubebox/app@${digest}`, registry: creds(), team: 'team-a' }, trusted);
    assert.notEqual(t.id, mine.id);
    assert.equal(t.config.team, 'team-a');
    assert.equal(t.config.imageDigest, digest);
    assert.deepEqual(t.layers, mine.layers, 'the layers are shared');
    // and shared with an import of the same image from its OCI layout
    const local = await m.templates.importImage('local-app', join(work, 'img'), { ref: 'v1' });
    assert.deepEqual(local.layers, mine.layers);
    m.templates.remove('local-app');
    assert.ok(blobFetches() > fetched, "the other team's credentials pulled it");
    // by digest again: no registry request at all
    const before = reg.requests().length;
    assert.equal((await templateFromImage(m.templates, { image: `${reg.host}/cubebox/app@${digest}`, team: 'team-a' }, trusted)).id, t.id);
    assert.equal(reg.requests().length, before);
  });

  it("a multi-platform index resolves to this host's image (the one already pulled), and one without it is refused", async () => {
    const t = await templateFromImage(m.templates, { image: image(), registry: creds(), team: null }, trusted);
    const fetched = blobFetches();
    const multi = await templateFromImage(m.templates, { image: `${reg.host}/cubebox/app:multi`, registry: creds(), team: null }, trusted);
    assert.equal(multi.id, t.id);
    assert.equal(blobFetches(), fetched);
    await failsCleanly(
      { image: `${reg.host}/cubebox/app:foreign`, registry: creds() },
      trusted,
      'invalid_argument',
      /has no linux\/\w+ variant \(it has: linux\/s390x\)/,
    );
  });

  it("a sandbox of the image's template runs a command and sees the image's files and env", async () => {
    const t = await templateFromImage(m.templates, { image: image(), registry: creds(), team: null }, trusted);
    const sbx = await m.create({ template: t.id, secure: false });
    try {
      const r = await execIn(m, sbx.id, ['sh', '-c', 'cat /data/hello /data/replaced; echo "$GREETING"']);
      assert.equal(r.stdout, 'hello from the registry\nsecond\nfrom-the-registry\n', r.stderr);
    } finally {
      await m.delete(sbx.id);
    }
    assertNoSandboxLeaks(m.paths, sbx.id);
  });

  it('an insecure registry setting reaches a registry whose CA is not trusted', async () => {
    const t = await templateFromImage(m.templates, { image: image(), registry: creds(), team: null }, { insecure: [reg.host] });
    assert.equal(t.config.imageDigest, digest);
  });

  it('wrong credentials, an untrusted CA, an unreachable port and an unknown image are clear errors that leave nothing', async () => {
    const wrong = { type: 'registry' as const, username: reg.username, password: 'not-the-password' };
    await failsCleanly(
      { image: `${reg.host}/cubebox/other:v1`, registry: wrong },
      trusted,
      'invalid_argument',
      new RegExp(`registry ${reg.host} refused the credentials`),
    );
    await failsCleanly({ image: `${reg.host}/cubebox/other:v1` }, trusted, 'invalid_argument', /refused the credentials .*cubebox\/other:v1/);
    await failsCleanly(
      { image: `${reg.host}/cubebox/other:v1`, registry: creds() },
      {},
      'unavailable',
      new RegExp(`cannot reach registry ${reg.host} securely.*certificate`),
    );
    const closed = `127.0.0.1:${await freePort()}`;
    await failsCleanly(
      { image: `${closed}/cubebox/app:v1`, registry: creds() },
      trusted,
      'unavailable',
      new RegExp(`cannot reach registry ${closed} to pull ${closed}/cubebox/app:v1`),
    );
    await failsCleanly(
      { image: `${reg.host}/cubebox/nothing:v1`, registry: creds() },
      trusted,
      'not_found',
      new RegExp(`image ${reg.host}/cubebox/nothing:v1 not found in registry ${reg.host}`),
    );
    await failsCleanly({ image: `${reg.host}/cubebox/app:v2`, registry: creds() }, trusted, 'not_found', /cubebox\/app:v2 not found/);
  });

  it('AWS and GCP registries and bad references are refused with a 400 before any registry call', async () => {
    const before = reg.requests().length;
    await failsCleanly(
      { registry: { type: 'aws', awsAccessKeyId: 'x', awsSecretAccessKey: 'y', awsRegion: 'us-east-1' } },
      trusted,
      'invalid_argument',
      /AWS ECR .* not supported/,
    );
    await failsCleanly({ registry: { type: 'gcp', serviceAccountJson: '{}' } }, trusted, 'invalid_argument', /GCP .* not supported/);
    await failsCleanly({ image: 'Not/A/Valid:Ref' }, trusted, 'invalid_argument', /bad image reference/);
    assert.equal(reg.requests().length, before);
  });

  it('the host CLI imports from the registry with the password on stdin and the CA from the environment', async () => {
    const dataDir = newDataDir();
    try {
      const args = ['template', 'import', 'app', `docker://${image()}`, '--username', reg.username];
      const env = { CUBEBOX_REGISTRY_CA: reg.caFile };
      const wrong = await cli(dataDir, args, env, 'not-the-password\n');
      assert.notEqual(wrong.code, 0);
      assert.match(wrong.stderr, new RegExp(`registry ${reg.host} refused the credentials`));
      const ok = await cli(dataDir, args, env, `${reg.password}\n`);
      assert.equal(ok.code, 0, ok.stderr);
      const listed = await cli(dataDir, ['template', 'list', '--json'], env);
      assert.match(listed.stdout, /"name": ?"app"/);
    } finally {
      await destroyInstance(undefined, dataDir);
    }
  });

  it("E2B's own base image names the local base template, without a pull", async () => {
    const base = await m.templates.addBusybox('base');
    try {
      assert.equal((await templateFromImage(m.templates, { image: 'e2bdev/base:latest', team: 'team-a' })).id, base.id);
    } finally {
      m.templates.remove('base');
    }
  });
});

/** Watches every process's command line until stop(): whether one was skopeo on the host, and whether any held the secret. */
function watchCommandLines(secret: string, host: string): { stop(): Promise<{ sawSkopeo: boolean; sawPassword: boolean }> } {
  let sawSkopeo = false;
  let sawPassword = false;
  let running = true;
  const until = Date.now() + 60_000;
  const loop = (async () => {
    while (running && Date.now() < until) {
      for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
        let cmd = '';
        try {
          cmd = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
        } catch {
          continue;
        }
        if (cmd.startsWith('skopeo\0') && cmd.includes(host)) sawSkopeo = true;
        if (cmd.includes(secret)) sawPassword = true;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { sawSkopeo, sawPassword };
    },
  };
}
