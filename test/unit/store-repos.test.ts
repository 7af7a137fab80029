import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { readNetSlots } from '../../src/store/net-slots.js';
import { Store, type SandboxRow } from '../../src/store/store.js';

/** The store's repositories, one per table, on a real SQLite file (no root, no sandbox). */

let dir: string;
let store: Store;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cubebox-repos-'));
  store = new Store(join(dir, 'cubebox.db'));
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const sandbox = (id: string, over: Partial<SandboxRow> = {}): SandboxRow => ({
  id,
  templateId: 't',
  team: null,
  state: 'running',
  stateDeadline: null,
  runtime: 'crun',
  uidSlot: null,
  pid: null,
  createdAt: 1,
  startedAt: null,
  endAt: null,
  spec: '{}',
  lastError: null,
  attempts: 0,
  nextAttemptAt: null,
  ...over,
});

describe('store repositories', () => {
  it('sandboxes: rows round-trip, updates touch only the named fields, lookups filter by state, team, template and spec', () => {
    const s = store.sandboxes;
    s.insert(sandbox('a', { team: 'alpha', uidSlot: 3, createdAt: 1, spec: '{"volumeMounts":[{"volumeId":"vol_x"}]}' }));
    s.insert(sandbox('b', { state: 'pooled', templateId: 'u', createdAt: 2 }));
    assert.deepEqual(s.get('a'), sandbox('a', { team: 'alpha', uidSlot: 3, createdAt: 1, spec: '{"volumeMounts":[{"volumeId":"vol_x"}]}' }));
    s.update('a', { state: 'paused', lastError: 'x', attempts: 2 });
    assert.equal(s.get('a')?.state, 'paused');
    assert.equal(s.get('a')?.attempts, 2);
    assert.equal(s.get('a')?.uidSlot, 3);
    s.update('a', {}); // nothing to change: no statement
    assert.deepEqual(
      s.list().map((r) => r.id),
      ['b', 'a'],
      'newest first',
    );
    assert.deepEqual(
      s.inState('pooled', 'u').map((r) => r.id),
      ['b'],
    );
    assert.deepEqual(s.inState('pooled', 't'), []);
    assert.deepEqual(
      s.ofTeam('alpha', ['paused', 'running']).map((r) => r.id),
      ['a'],
    );
    assert.deepEqual([...s.usedUidSlots()], [3]);
    assert.equal(s.countUsingTemplate('t'), 1);
    assert.deepEqual(
      s.specsContaining('vol_x').map((r) => r.id),
      ['a'],
    );
    assert.equal(s.exists('a'), true);
    assert.throws(() => s.insert(sandbox('c', { uidSlot: 3 })), /UNIQUE/, 'a uid slot is held by one sandbox at most');
  });

  it("resources: a sandbox's ledger is idempotent, ordered, and deleted with its row; rows without a sandbox are orphans", () => {
    store.insertSandbox(sandbox('a'));
    store.ledger.record('a', 'dir', '/x');
    store.ledger.record('a', 'dir', '/x');
    store.ledger.record('a', 'mount', '/x/root');
    store.ledger.record('gone', 'cgroup', '/c');
    assert.deepEqual(
      store.ledger.of('a').map((r) => `${r.kind} ${r.name}`),
      ['dir /x', 'mount /x/root'],
    );
    assert.deepEqual(store.ledger.orphanIds(), ['gone']);
    store.ledger.forget('a', 'mount', '/x/root');
    assert.deepEqual(store.countRows('a'), { sandboxes: 1, resources: 1 });
    store.deleteSandbox('a');
    assert.deepEqual(store.countRows('a'), { sandboxes: 0, resources: 0 });
  });

  it("templates: a template's namespace is its config's team, names are unique within one", () => {
    const t = store.templates;
    t.insert({ id: 'p', name: 'base', layers: ['l1', 'l0'], config: '{}', createdAt: 1 });
    t.insert({ id: 'q', name: 'base', layers: [], config: '{"team":"alpha"}', createdAt: 2 });
    assert.throws(() => t.insert({ id: 'r', name: 'base', layers: [], config: '{"team":"alpha"}', createdAt: 3 }), /UNIQUE/);
    assert.deepEqual(t.get('p')?.layers, ['l1', 'l0']);
    assert.deepEqual(
      t
        .named('base')
        .map((r) => r.id)
        .sort(),
      ['p', 'q'],
    );
    t.setConfig('p', '{"x":1}');
    assert.equal(t.get('p')?.config, '{"x":1}');
    t.delete('q');
    assert.deepEqual(
      t.list().map((r) => r.id),
      ['p'],
    );
  });

  it('teams and keys: a team is found by id or name; a revoked key stays revoked at its first time; a team without a live key has none', () => {
    store.teams.insert({ id: 'team_a', name: 'alpha', createdAt: 5, quota: '{}' });
    assert.equal(store.teams.get('alpha')?.id, 'team_a');
    assert.equal(store.teams.get('team_a')?.name, 'alpha');
    store.teams.setQuota('team_a', '{"sandboxes":2}');
    assert.equal(store.teams.get('alpha')?.quota, '{"sandboxes":2}');
    const k = {
      id: 'key_1',
      name: 'n',
      prefix: 'e2b_12345678',
      hash: 'ab'.repeat(32),
      createdAt: 7,
      lastUsedAt: null,
      revokedAt: null,
      team: 'team_a',
      admin: true,
    };
    store.keys.insert(k);
    assert.deepEqual(store.keys.byHash(k.hash), k);
    assert.deepEqual(store.keys.get('key_1'), k);
    assert.equal(store.keys.teamHasLiveKey('team_a'), true);
    store.keys.touch('key_1', 9);
    assert.equal(store.keys.get('key_1')?.lastUsedAt, 9);
    store.keys.revoke('key_1', 10);
    store.keys.revoke('key_1', 11);
    assert.equal(store.keys.list()[0]?.revokedAt, 10);
    assert.equal(store.keys.teamHasLiveKey('team_a'), false);
  });

  it('net slots: reserve takes the lowest free number below the limit, a free slot is claimed once, states move only from the one named', () => {
    const n = store.netSlots;
    assert.equal(n.reserve(null, 3), 0);
    assert.equal(n.reserve('sb1', 3), 1);
    assert.equal(n.reserve(null, 3), 2);
    assert.equal(n.reserve(null, 3), undefined, 'the block is full');
    n.setState(0, 'free', 'making');
    n.setState(2, 'free', 'used'); // not used: unchanged
    assert.equal(n.count('free'), 1);
    assert.equal(n.claimFree('sb2'), 0);
    assert.equal(n.claimFree('sb3'), undefined);
    assert.equal(n.slotOf('sb1'), 1);
    assert.equal(n.slotOf('sb1', true), undefined, 'still being made');
    assert.equal(n.holderOf(0), 'sb2');
    assert.deepEqual(
      n.list('unowned').map((r) => r.slot),
      [2],
    );
    assert.deepEqual(
      n.list('unused').map((r) => r.slot),
      [1, 2],
    );
    assert.deepEqual(n.ownerIds().sort(), ['sb1', 'sb2']);
    n.remove(1);
    assert.equal(n.reserve(null, 3), 1, 'a removed number is taken again');
    assert.deepEqual(
      readNetSlots(join(dir, 'cubebox.db'))?.map((r) => `${r.slot} ${r.state} ${r.sandboxId}`),
      ['0 used sb2', '1 making null', '2 making null'],
    );
    assert.equal(readNetSlots(join(dir, 'none.db')), undefined, 'no store, no ledger');
  });

  it("volumes and secrets: a volume's name is unique per team (the host's too); a secret is found by id or lower-cased name of its team only", () => {
    const v = store.volumes;
    v.insert({ id: 'vol_1', team: null, name: 'data', token: 't', sizeMB: 8, state: 'creating', createdAt: 1 });
    v.insert({ id: 'vol_2', team: 'alpha', name: 'data', token: 't', sizeMB: 8, state: 'ready', createdAt: 2 });
    assert.equal(v.byName(null, 'data')?.id, 'vol_1');
    assert.equal(v.byName('alpha', 'data')?.id, 'vol_2');
    assert.deepEqual(
      v.list('alpha').map((r) => r.id),
      ['vol_2'],
    );
    assert.deepEqual(
      v.list().map((r) => r.id),
      ['vol_1', 'vol_2'],
    );
    v.setState('vol_1', 'deleting');
    assert.equal(v.get('vol_1')?.state, 'deleting');
    v.remove('vol_1');
    assert.equal(v.get('vol_1'), undefined);

    const s = store.secrets;
    s.insert({ id: 'sec_1', team: 'alpha', name: 'token', version: 1, sealed: 'x', metadata: { a: 'b' }, createdAt: 1, updatedAt: 1 });
    assert.equal(s.find('alpha', 'TOKEN')?.id, 'sec_1');
    assert.equal(s.find('alpha', 'sec_1')?.name, 'token');
    assert.equal(s.find('beta', 'sec_1'), undefined);
    s.update({ id: 'sec_1', team: 'alpha', version: 2, sealed: 'y', metadata: {}, updatedAt: 2 });
    assert.deepEqual(
      s.list('alpha', undefined, 10).map((r) => [r.version, r.sealed]),
      [[2, 'y']],
    );
    assert.equal(
      s.transaction(() => s.count('alpha')),
      1,
    );
    assert.equal(s.delete('beta', 'sec_1'), false);
    assert.equal(s.delete('alpha', 'sec_1'), true);
  });

  it('no SQL and no database handle outside src/store/', () => {
    const src = join(dirname(fileURLToPath(import.meta.url)), '../../../src');
    const sql = /\bprepare\(['"`]|\.exec\(['"]|\b(SELECT|INSERT INTO|DELETE FROM) |UPDATE \w+ SET|better-sqlite3|\.db\.|store\.db\b|\['db'\]|from 'pg'/;
    const found: string[] = [];
    const walk = (d: string): void => {
      for (const e of readdirSync(d)) {
        const p = join(d, e);
        if (statSync(p).isDirectory()) walk(p);
        else if (e.endsWith('.ts') && !relative(src, p).startsWith('store/')) {
          readFileSync(p, 'utf8')
            .split('\n')
            .forEach((line, i) => sql.test(line) && found.push(`${relative(src, p)}:${i + 1}: ${line.trim()}`));
        }
      }
    };
    walk(src);
    assert.deepEqual(found, []);
  });
});
