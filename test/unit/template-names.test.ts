import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import type { SandboxCore } from '../../src/sandbox/core.js';
import { collectEphemeralTemplates, snapshotName } from '../../src/sandbox/snapshots.js';
import { Store } from '../../src/store/store.js';
import { NAME_RE } from '../../src/util/ids.js';
import { rig, type Rig } from './fakes.js';

/**
 * Template names per team, the on-demand build's lookup, default snapshot names and the
 * collector of fork templates, on the real store (fake runtime and host: no sandbox runs).
 */

let r: Rig;
beforeEach(async () => {
  r = await rig();
});
afterEach(async () => r.cleanup());

const row = (id: string, name: string, config: Record<string, unknown>) => ({ id, name, layers: [], config: JSON.stringify(config), createdAt: 1 });

describe('template names', () => {
  it("a team's names live in its own namespace: lookups see its own first, then public ones, never another team's", () => {
    const t = r.m.templates;
    const a = t.addDerived('report', t.get('t'), { team: 'alpha' });
    const b = t.addDerived('report', t.get('t'), { team: 'beta' }); // the same name in another team is no conflict
    assert.notEqual(a.id, b.id);
    assert.equal(t.find('report', 'alpha')?.id, a.id);
    assert.equal(t.find('report', 'beta')?.id, b.id);
    assert.equal(t.find('report', 'gamma'), undefined);
    assert.equal(t.find('report'), undefined, "the host's view is the public namespace");
    assert.throws(() => t.addDerived('report', t.get('t'), { team: 'alpha' }), /already exists/);
    // name:tag and aliases stay in the namespace too
    t.addTag(a.id, 'v1');
    assert.equal(t.find('report:v1', 'alpha')?.id, a.id);
    assert.equal(t.find('report:v1', 'beta'), undefined);
    assert.equal(t.find('report:latest', 'beta')?.id, b.id);
    assert.equal(t.find('t', 'alpha')?.name, 't', 'public templates resolve for every team');
  });

  it('public names are reserved: no team takes a public template, its aliases, or a name serve builds on demand', () => {
    const t = r.m.templates;
    t.addAlias('t', 'tee');
    t.buildOnDemand('special-v1', async () => t.get('t'));
    for (const name of ['t', 'tee', 'special-v1', 'base', 'code-interpreter-v1', 'busybox', 'desktop']) {
      assert.throws(() => t.addDerived(name, t.get('t'), { team: 'beta' }), /names a public template/, name);
    }
    // a template made on the host is public, whatever a team already calls its own
    t.addDerived('mine', t.get('t'), { team: 'beta' });
    const pub = t.addDerived('mine', t.get('t'), {});
    assert.equal(t.find('mine', 'beta')?.config.team, 'beta');
    assert.equal(t.find('mine', 'alpha')?.id, pub.id);
  });

  it("the on-demand build of a public template is not fooled by a team's template of that name", async () => {
    const t = r.m.templates;
    // a team's template of that name (from a store written before names were reserved)
    r.store.insertTemplate(row('squat00000000000000a', 'code-interpreter-v1', { team: 'beta', snapshotOf: 'x' }));
    let builds = 0;
    t.buildOnDemand('code-interpreter-v1', async () => {
      builds++;
      return t.addDerived('code-interpreter-v1', t.get('t'), {});
    });
    await t.ensure('code-interpreter-v1');
    assert.equal(builds, 1);
    const pub = t.find('code-interpreter-v1', 'alpha');
    assert.ok(pub && pub.config.team === undefined, "alpha gets the public template, not beta's");
    assert.equal(t.find('code-interpreter-v1', 'beta')?.id, 'squat00000000000000a');
    await t.ensure('code-interpreter-v1');
    assert.equal(builds, 1, 'built once');
  });

  it('the store moves to names unique per team (a team column from the template settings)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cubebox-unit-'));
    try {
      const db = new Database(join(dir, 'cubebox.db'));
      db.exec(`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE templates (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, layers TEXT NOT NULL, config TEXT NOT NULL, created_at BIGINT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');`);
      db.prepare('INSERT INTO templates VALUES (?, ?, ?, ?, ?)').run('p1', 'base', '[]', '{}', 1);
      db.prepare('INSERT INTO templates VALUES (?, ?, ?, ?, ?)').run('s1', 'snap', '[]', JSON.stringify({ team: 'alpha', snapshotOf: 'x' }), 2);
      db.close();
      const s = new Store(join(dir, 'cubebox.db'));
      try {
        assert.deepEqual(s['db'].prepare('SELECT id, team, name FROM templates ORDER BY id').all(), [
          { id: 'p1', team: '', name: 'base' },
          { id: 's1', team: 'alpha', name: 'snap' },
        ]);
        s.insertTemplate(row('s2', 'snap', { team: 'beta' }));
        assert.throws(() => s.insertTemplate(row('s3', 'snap', { team: 'beta' })), /UNIQUE/);
        assert.equal(s.templatesNamed('snap').length, 2);
      } finally {
        s.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('default snapshot names do not grow from generation to generation', () => {
    let name = 'a-template-name-of-fifty-characters-abcdefghijklmn';
    for (let i = 0; i < 20; i++) {
      name = snapshotName(name);
      assert.match(name, NAME_RE);
      assert.ok(name.length <= 63, name);
    }
    assert.match(snapshotName('base-snap-abcd1234-snap-0123abcd'), /^base-snap-[a-z0-9]{8}$/);
  });
});

describe('the collector of fork templates', () => {
  const coreOf = (rr: Rig) => (rr.m as unknown as { core: SandboxCore }).core;

  it('never removes a template that a create in progress holds', async () => {
    const t = r.m.templates;
    const eph = t.addDerived('fork-x', t.get('t'), { ephemeral: true });
    const creating = r.m.create({ template: eph.id, agent: false, command: ['/bin/sleep', 'infinity'] });
    // the create has not written its row yet: only its hold keeps the template
    collectEphemeralTemplates(coreOf(r));
    assert.ok(t.find(eph.id), 'the collector removed a template a create was using');
    assert.throws(() => t.remove(eph.id), /in progress/);
    const s = await creating;
    assert.equal(s.templateId, eph.id);
    await r.m.delete(s.id);
    collectEphemeralTemplates(coreOf(r));
    assert.equal(t.find(eph.id), undefined, 'unused, it goes');
  });

  it("never removes a fork's template between the snapshot and its sandboxes' creates", async () => {
    const src = await r.m.create({ template: 't', agent: false, command: ['/bin/sleep', 'infinity'] });
    mkdirSync(join(r.paths.sandboxesDir, src.id, 'disk', 'upper'), { recursive: true });
    // the collector runs (as the reconciler's pass would) while the snapshot thaws the source
    const resume = r.runtime.resume.bind(r.runtime);
    r.runtime.resume = async (cid: string) => {
      collectEphemeralTemplates(coreOf(r));
      return resume(cid);
    };
    const [one] = await r.m.fork(src.id, 1, { agent: false, command: ['/bin/sleep', 'infinity'] });
    assert.ok(one?.info, `the fork failed: ${one?.error?.message}`);
    await r.m.delete(one.info.id);
    await r.m.delete(src.id);
  });

  it('remembers a refused removal instead of retrying it every pass, and retries once the templates change', () => {
    const t = r.m.templates;
    const eph = t.addDerived('fork-y', t.get('t'), { ephemeral: true });
    const child = t.addDerived('kept-snapshot', eph, { snapshotOf: 'y' });
    const tries: string[] = [];
    const remove = t.remove.bind(t);
    t.remove = (ref: string) => {
      tries.push(ref);
      remove(ref);
    };
    for (let i = 0; i < 5; i++) collectEphemeralTemplates(coreOf(r));
    assert.equal(tries.filter((x) => x === eph.id).length, 1, `tried ${tries.length} times`);
    assert.ok(t.find(eph.id), 'kept: it is the parent of a snapshot');
    remove(child.id);
    collectEphemeralTemplates(coreOf(r));
    assert.equal(t.find(eph.id), undefined, 'removed once its child is gone');
  });
});
