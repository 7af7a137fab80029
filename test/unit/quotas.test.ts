import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { ApiKeys } from '../../src/api/keys.js';
import { serveConfig } from '../../src/app/serve.js';
import { layerDiskBytes, TeamLayers } from '../../src/api/layer-usage.js';
import { holds, setTeamQuota, Tenancy, type Quota } from '../../src/api/tenancy.js';
import { sqliteSharedStore } from '../../src/store/shared-sqlite.js';
import { PAUSE_RETRY_MS } from '../../src/sandbox/reaper.js';
import type { CreateRequest } from '../../src/sandbox/manager.js';
import { DEFAULT_TEAM_ID, Store } from '../../src/store/store.js';
import type { Template } from '../../src/template/store.js';
import { rig, type Rig } from './fakes.js';

/**
 * Team quotas on the manager's real admission path (fake runtime and host, real store): what a
 * running, a memory-paused and a filesystem-paused sandbox hold, the paused limit, the timeout
 * pause at that limit, the paused lifetime, and the measure of a team's layers on disk.
 * test/security/quotas.test.ts attacks the same through the real service.
 */

let r: Rig;
let team: string;
beforeEach(async () => {
  r = await rig();
  team = (await new ApiKeys(sqliteSharedStore(r.store)).create('', { team: 'alpha' })).info.team;
  new Tenancy(r.store, r.m.templates).attach(r.m);
});
afterEach(async () => r.cleanup());

const quota = (q: Partial<Quota>) => setTeamQuota(sqliteSharedStore(r.store), team, q);
const create = (extra: Partial<CreateRequest> = {}) => r.m.create({ template: 't', agent: false, command: ['/bin/sleep', 'infinity'], team, ...extra });

async function refused(p: Promise<unknown>, limit: keyof Quota): Promise<void> {
  await assert.rejects(p, (e: Error & { status?: number }) => {
    assert.equal(e.status, 429, e.message);
    assert.match(e.message, new RegExp(`\\(${limit}\\)`));
    return true;
  });
}

describe('team quotas count paused sandboxes', () => {
  it('a sandbox paused with its memory keeps its place and memory: create -> pause cannot pass the limits, and its resume is never refused', async () => {
    await quota({ sandboxes: 3 });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const s = await create();
      await r.m.pause(s.id);
      ids.push(s.id);
    }
    await refused(create(), 'sandboxes');
    // memory too: 3 x 512 MiB are held by the frozen sandboxes
    await quota({ sandboxes: 10, memoryMB: 3 * 512 });
    await refused(create(), 'memoryMB');
    // a resume adds nothing the sandbox did not already hold, whatever the quota now is
    await quota({ sandboxes: 1, memoryMB: 512 });
    assert.equal((await r.m.resume(ids[0]!)).state, 'running');
  });

  it('a filesystem-only pause keeps its disk alone; resuming it at the running limit is a 429 that leaves it paused and intact', async () => {
    await quota({ sandboxes: 1 });
    const a = await create();
    await r.m.pause(a.id, { memory: false });
    const b = await create(); // a's place is free
    await refused(r.m.resume(a.id), 'sandboxes');
    await refused(r.m.connect(a.id, 60), 'sandboxes');
    const row = r.m.get(a.id);
    assert.equal(row.state, 'paused');
    assert.equal(row.coldPaused, true);
    // its disk still counts: 1024 MiB each
    await quota({ sandboxes: 5, diskMB: 2048 });
    await refused(create(), 'diskMB');
    await r.m.delete(b.id);
    assert.equal((await r.m.resume(a.id)).state, 'running');
  });

  it('the paused sandboxes limit refuses a pause with 429, and the sandbox keeps running', async () => {
    await quota({ pausedSandboxes: 2 });
    const s = [await create(), await create(), await create()];
    await r.m.pause(s[0]!.id);
    await r.m.pause(s[1]!.id, { memory: false });
    await refused(r.m.pause(s[2]!.id), 'pausedSandboxes');
    await refused(r.m.pause(s[2]!.id, { memory: false }), 'pausedSandboxes');
    assert.equal(r.m.get(s[2]!.id).state, 'running');
    await r.m.delete(s[0]!.id);
    assert.equal((await r.m.pause(s[2]!.id)).state, 'paused');
  });

  it('a timeout pause refused by the paused limit leaves the sandbox running and is tried again later', async () => {
    await quota({ pausedSandboxes: 1 });
    const lifecycle = { onTimeout: 'pause' as const };
    const a = await create({ timeoutSec: 1, lifecycle });
    const b = await create({ timeoutSec: 1, lifecycle });
    r.clock.advance(2000);
    await r.m.reap();
    const [paused, waiting] = r.m.get(a.id).state === 'paused' ? [a.id, b.id] : [b.id, a.id];
    assert.equal(r.m.get(paused).state, 'paused');
    assert.equal(r.m.get(waiting).state, 'running');
    assert.match(r.m.get(waiting).lastError ?? '', /pausedSandboxes/);
    await r.m.delete(paused);
    await r.m.reap(); // not yet: the retry waits
    assert.equal(r.m.get(waiting).state, 'running');
    r.clock.advance(PAUSE_RETRY_MS);
    await r.m.reap();
    assert.equal(r.m.get(waiting).state, 'paused');
    assert.equal(r.m.get(waiting).lastError, null);
  });

  it('a paused sandbox is deleted through the delete path once its paused lifetime has passed', async () => {
    await r.m.start({ pausedLifetimeMs: 60_000 });
    const a = await create();
    const b = await create();
    await r.m.pause(a.id);
    await r.m.pause(b.id, { memory: false });
    r.clock.advance(59_000);
    assert.deepEqual(await r.m.reap(), []);
    r.clock.advance(2_000);
    assert.deepEqual((await r.m.reap()).sort(), [a.id, b.id].sort());
    for (const id of [a.id, b.id]) {
      assert.equal(r.store.getSandbox(id), undefined);
      assert.equal(r.runtime.containers.has(r.m.containerId(id)), false);
      assert.equal(existsSync(r.m.sandboxDir(id)), false);
    }
    // paused with no pause time recorded (before lifetimes existed): its lifetime starts now
    const c = await create();
    await r.m.pause(c.id);
    const spec = JSON.parse(r.store.getSandbox(c.id)!.spec) as { pausedAt?: number };
    delete spec.pausedAt;
    r.store.updateSandbox(c.id, { spec: JSON.stringify(spec) });
    r.clock.advance(120_000);
    await r.m.reap();
    assert.equal(r.m.get(c.id).state, 'paused');
    r.clock.advance(61_000);
    await r.m.reap();
    assert.equal(r.store.getSandbox(c.id), undefined);
  });
});

describe('what a sandbox paused to disk holds', () => {
  it('its place and, instead of its RAM, its image on disk (up to its memory)', () => {
    const spec = { limits: { cpuCount: 2, memoryMB: 512 }, diskMB: 1024 };
    assert.deepEqual(holds('paused', spec), { sandboxes: 1, vcpus: 0, memoryMB: 512, diskMB: 1024, pausedSandboxes: 1 });
    assert.deepEqual(holds('paused', { ...spec, checkpointed: true }), { sandboxes: 1, vcpus: 0, memoryMB: 0, diskMB: 1536, pausedSandboxes: 1 });
    assert.deepEqual(holds('paused', { ...spec, coldPaused: true }), { sandboxes: 0, vcpus: 0, memoryMB: 0, diskMB: 1024, pausedSandboxes: 1 });
  });
});

describe('the paused lifetime setting', () => {
  it('takes seconds or a unit (flag over CUBEBOX_PAUSED_LIFETIME), and refuses anything else', () => {
    const ms = (flag?: string, envValue?: string) =>
      serveConfig({ dataDir: '/tmp/d', pausedLifetime: flag }, envValue === undefined ? {} : { CUBEBOX_PAUSED_LIFETIME: envValue }).pausedLifetimeMs;
    assert.equal(ms(), undefined); // the manager's default, 30 days
    assert.equal(ms('90'), 90_000);
    assert.equal(ms(undefined, '30d'), 30 * 86_400_000);
    assert.equal(ms('12h', '1s'), 12 * 3_600_000);
    for (const bad of ['0', '5x', '-1', '1.5h', 'd']) assert.throws(() => ms(bad), /bad paused lifetime/);
  });
});

describe("a team's template layers on disk", () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'cubebox-layers-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('counts real bytes on disk, a file linked from several layers once, a sparse file by what it holds', async () => {
    const [l1, l2] = [join(dir, 'l1'), join(dir, 'l2')];
    mkdirSync(l1);
    mkdirSync(l2);
    writeFileSync(join(l1, 'data'), Buffer.alloc(4 * 1024 * 1024, 7));
    linkSync(join(l1, 'data'), join(l2, 'data')); // shared with the earlier layer
    writeFileSync(join(l2, 'own'), Buffer.alloc(1024 * 1024, 1));
    execFileSync('truncate', ['-s', '1G', join(l2, 'sparse')]);
    const sizes = await layerDiskBytes([l1, l2, join(dir, 'gone')]);
    const b1 = sizes.get(l1)!;
    const b2 = sizes.get(l2)!;
    assert.ok(b1 >= 4 * 1024 * 1024 && b1 < 5 * 1024 * 1024, `l1 ${b1}`);
    assert.ok(b2 >= 1024 * 1024 && b2 < 2 * 1024 * 1024, `l2 ${b2} (the linked file counted again, or the sparse one)`);
  });

  it("a team owns its templates' layers that no public template holds, each once", async () => {
    for (const l of ['base', 'snap1', 'snap2']) {
      mkdirSync(join(dir, l));
      writeFileSync(join(dir, l, 'f'), Buffer.alloc(2 * 1024 * 1024, 1));
    }
    const t = (id: string, layers: string[], teamOf?: string): Template => ({
      id,
      name: id,
      layers: layers.map((l) => join(dir, l)),
      config: { user: 'root', env: {}, cpuCount: 1, memoryMB: 512, diskSizeMB: 1024, ...(teamOf ? { team: teamOf } : {}) },
      createdAt: 0,
    });
    const templates = [t('base', ['base']), t('s1', ['snap1', 'base'], 'a'), t('s2', ['snap2', 'snap1', 'base'], 'a'), t('s3', ['snap1', 'base'], 'b')];
    const layers = new TeamLayers(() => templates);
    assert.deepEqual(layers.layersOf('a'), [join(dir, 'snap1'), join(dir, 'snap2')]);
    assert.equal(layers.mb('a'), 0); // not measured yet
    await layers.measure('a');
    assert.ok(layers.mb('a') >= 4 && layers.mb('a') <= 5, `${layers.mb('a')} MiB`);
    templates.splice(2, 1); // s2 deleted: its layer stops counting at once
    assert.ok(layers.mb('a') >= 2 && layers.mb('a') <= 3, `${layers.mb('a')} MiB`);
  });
});

describe('keys and quotas written by the CLI next to the running service', () => {
  it('a key is made even when the service writes between its read and its write', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cubebox-keys-'));
    const service = new Store(join(dir, 'cubebox.db'));
    const cliStore = new Store(join(dir, 'cubebox.db'));
    try {
      service['db'].pragma('busy_timeout = 0');
      const keys = new ApiKeys(sqliteSharedStore(cliStore));
      const lookup = cliStore.teams.get.bind(cliStore.teams);
      let serviceWrote = false;
      cliStore.teams.get = (ref: string) => {
        const found = lookup(ref);
        try {
          service.setTeamQuota(DEFAULT_TEAM_ID, '{}'); // the service's own write, right after the CLI's read
          serviceWrote = true;
        } catch {
          /* the CLI holds the write lock: the service waits its turn */
        }
        return found;
      };
      const made = await keys.create('k', { team: 'fresh' });
      assert.equal(made.info.team, (await new ApiKeys(sqliteSharedStore(service)).team('fresh'))?.id);
      assert.equal(serviceWrote, false, 'the service wrote inside the CLI transaction');
    } finally {
      cliStore.close();
      service.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
