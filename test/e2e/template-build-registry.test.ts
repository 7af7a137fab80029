// A template build from an image in a registry, through the published SDK against a real
// `cubebox serve`: the registry is Debian's docker-registry on a loopback port with TLS from a
// test CA and basic auth, trusted through CUBEBOX_REGISTRY_CA.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { Store } from '../../src/store/store.js';
import { destroyInstance } from '../helpers/instance.js';
import { makeTestImage, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let reg: TestRegistry;
let work: string;

function templateNames(): string[] {
  const store = new Store(openPaths(dataDir, false).db);
  try {
    return store.listTemplates().map((t) => t.name);
  } finally {
    store.close();
  }
}

describe('template builds from a registry image through the E2B SDK', { timeout: 600_000 }, () => {
  before(async () => {
    work = mkdtempSync('/var/tmp/cubebox-tplreg-');
    reg = await startRegistry();
    await reg.push(await makeTestImage(work), 'v1', 'team/app:v1');
    ({ svc, dataDir, e2b } = await sdkService({ CUBEBOX_POOL: '', CUBEBOX_REGISTRY_CA: reg.caFile }));
  });
  after(async () => {
    await svc?.stop();
    if (dataDir) await destroyInstance(undefined, dataDir);
    await reg?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  it('builds on the pulled image with the credentials given; its sandboxes see the image and the steps', async () => {
    const logs: string[] = [];
    // E2B's commands run through bash, which the busybox image lacks: a step gives it one
    const bash = `printf '#!/bin/sh\\nexec /bin/sh "$@"\\n' > /bin/bash && chmod 755 /bin/bash`;
    const t = e2b
      .Template()
      .fromImage(`${reg.host}/team/app:v1`, { username: reg.username, password: reg.password })
      .runCmd(bash)
      .runCmd('echo built > /data/built');
    await e2b.Template.build(t, 'tb-registry', { cpuCount: 1, memoryMB: 256, onBuildLogs: (l) => logs.push(l.message) });
    const sbx = await e2b.Sandbox.create('tb-registry');
    try {
      const run = async (cmd: string) => (await sbx.commands.run(cmd)).stdout;
      assert.equal(await run('cat /data/hello /data/replaced /data/built'), 'hello from the registry\nsecond\nbuilt\n');
      assert.equal(await run('echo "$GREETING"'), 'from-the-registry\n', "the image's env");
    } finally {
      await sbx.kill();
    }
    assert.ok(!logs.some((l) => l.includes(reg.password)), 'the password is never logged');
  });

  it('wrong credentials fail the build naming the registry, and leave no template', async () => {
    const before = templateNames();
    const t = e2b.Template().fromImage(`${reg.host}/team/app:v1`, { username: reg.username, password: 'not-the-password' }).runCmd('true');
    await assert.rejects(e2b.Template.build(t, 'tb-registry-bad'), (err: Error) => {
      assert.match(err.message, new RegExp(reg.host.replace(/\./g, '\\.')));
      assert.doesNotMatch(err.message, /not-the-password/);
      return true;
    });
    assert.deepEqual(
      templateNames().filter((n) => !before.includes(n)),
      [],
    );
  });
});
