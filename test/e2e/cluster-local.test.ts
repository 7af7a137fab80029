// scripts/cluster-local.sh as a user runs it: `up` starts PostgreSQL, 3 nodes and 2 API replicas
// and prints where they are and a key; the published SDK uses either replica; `down` deletes what
// was left running and removes all of it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import type { E2B } from '../helpers/service.js';

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), '../../../scripts/cluster-local.sh');
const DIR = `/var/tmp/cubebox-test-cluster-local-${process.pid}`;
// below the ephemeral range, so no test's own listener takes one of them meanwhile
const env = { ...process.env, CUBEBOX_CLUSTER_DIR: DIR, CUBEBOX_CLUSTER_PORT: String(20_000 + Math.floor(Math.random() * 60) * 200) };

function script(cmd: 'up' | 'down') {
  return spawnSync(SCRIPT, [cmd], { env, encoding: 'utf8', timeout: 1_200_000 });
}

describe('the local cluster script', { timeout: 1_500_000 }, () => {
  after(() => {
    if (existsSync(DIR)) script('down');
  });

  it('up: three nodes and two replicas the SDK uses; down: nothing left', async () => {
    const up = script('up');
    assert.equal(up.status, 0, up.stderr);
    const apis = [...up.stdout.matchAll(/^api=(\S+)$/gm)].map((m) => m[1]!);
    const key = /^key=(\S+)$/m.exec(up.stdout)?.[1];
    assert.equal(apis.length, 2, up.stdout);
    assert.ok(key);
    const nodeIds = readdirSync(DIR)
      .filter((d) => /^node\d$/.test(d))
      .map((d) => readFileSync(join(DIR, d, 'instance-id'), 'utf8').trim());
    assert.equal(nodeIds.length, 3);

    process.env.E2B_API_KEY = key;
    delete process.env.E2B_DEBUG;
    const { Sandbox } = (await import('e2b')) as unknown as E2B;
    const made = [];
    for (const [i, url] of [...apis, ...apis].entries()) {
      const sbx = await Sandbox.create('base', { apiUrl: url, sandboxUrl: url });
      made.push(sbx);
      assert.equal((await sbx.commands.run(`echo ${i}`)).stdout, `${i}\n`);
    }
    const listed = (await (await fetch(`${apis[1]}/sandboxes`, { headers: { 'X-API-KEY': key } })).json()) as Array<{ sandboxID: string; clientID: string }>;
    assert.deepEqual(listed.map((s) => s.sandboxID).sort(), made.map((s) => s.sandboxId).sort());
    for (const s of listed) assert.ok(nodeIds.includes(s.clientID), `clientID ${s.clientID} is one of the nodes`);
    await made[0]!.kill(); // the others are left running for `down`

    const down = script('down');
    assert.equal(down.status, 0, down.stderr);
    assert.equal(existsSync(DIR), false);
    for (const id of nodeIds) assert.equal(existsSync(`/run/cubebox/${id}`), false);
    const netns = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    const tables = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout;
    for (const id of nodeIds) {
      assert.ok(!netns.includes(`cubebox-${id}`), `no namespace of node ${id}`);
      assert.ok(!tables.includes(`cubebox_${id}`), `no nft table of node ${id}`);
    }
  });
});
