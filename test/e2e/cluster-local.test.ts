// scripts/cluster-local.sh as a user runs it: `up` starts PostgreSQL, 3 nodes and 2 API replicas
// and prints where they are and a key; the published SDK makes 30 sandboxes through both
// replicas, spread over the 3 nodes, and uses each through the other replica; `down` deletes
// what was left running and removes all of it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { cli } from '../helpers/instance.js';
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
    // the team's quota holds across the nodes: room for 30 (the default is 20 sandboxes)
    const quota = await cli(join(DIR, 'node1'), ['teams', 'set-quota', 'local', '--sandboxes', '40', '--vcpus', '100', '--memory-mb', '40960'], {
      CUBEBOX_DATABASE: `postgresql://postgres@/cubebox?host=${DIR}/pg`,
    });
    assert.equal(quota.code, 0, quota.stderr);
    // 30 creates, 6 at a time through both replicas: spread over the 3 nodes, each usable through either replica
    const made: Array<InstanceType<E2B['Sandbox']>> = [];
    for (let batch = 0; batch < 5; batch++) {
      const urls = [...Array(6).keys()].map((j) => apis[j % 2]!);
      made.push(...(await Promise.all(urls.map((url) => Sandbox.create('base', { apiUrl: url, sandboxUrl: url })))));
    }
    for (const [i, sbx] of made.entries()) {
      const other = await Sandbox.connect(sbx.sandboxId, { apiUrl: apis[(i + 1) % 2], sandboxUrl: apis[(i + 1) % 2] });
      assert.equal((await other.commands.run(`echo ${i}`)).stdout, `${i}\n`);
    }
    const listed = (await (await fetch(`${apis[1]}/sandboxes`, { headers: { 'X-API-KEY': key } })).json()) as Array<{ sandboxID: string; clientID: string }>;
    assert.deepEqual(listed.map((s) => s.sandboxID).sort(), made.map((s) => s.sandboxId).sort());
    const perNode = new Map<string, number>();
    for (const s of listed) {
      assert.ok(nodeIds.includes(s.clientID), `clientID ${s.clientID} is one of the nodes`);
      perNode.set(s.clientID, (perNode.get(s.clientID) ?? 0) + 1);
    }
    console.log(`30 creates per node: ${JSON.stringify(Object.fromEntries(perNode))}`);
    assert.equal(perNode.size, 3, 'every node took creates');
    for (const s of made.slice(0, 27)) await s.kill(); // three are left running for `down`

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
