// The template store on the real SQLite store in a temporary directory: layers written whole
// or not at all, ids, names and tags, settings a derived template takes, holds, and what a
// removal refuses and what it leaves on disk. (Names per team: template-names.test.ts.)
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { openPaths, type Paths } from '../../src/config.js';
import { Store } from '../../src/store/store.js';
import { checkpointImageDir, TemplateStore, type Template } from '../../src/template/store.js';
import { rig } from './fakes.js';

let dir: string;
let paths: Paths;
let store: Store;
let t: TemplateStore;
let root: Template;

const conflict = (message: RegExp) => ({ kind: 'conflict', message });
const invalid = (message: RegExp) => ({ kind: 'invalid_argument', message });
const notFound = (message: RegExp) => ({ kind: 'not_found', message });

/** A new layer with one file on top of a parent. */
const onTop = (name: string, parent: Template, config = {}) => t.addOnTop(name, parent, async (d) => writeFileSync(join(d, name), name), config);
const layerDirs = () => readdirSync(paths.layersDir).sort();

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cubebox-templates-'));
  paths = openPaths(join(dir, 'data'));
  store = new Store(paths.db);
  t = new TemplateStore(paths, store);
  const src = join(dir, 'rootfs');
  mkdirSync(join(src, 'etc'), { recursive: true });
  writeFileSync(join(src, 'etc', 'hostname'), 'root\n');
  root = await t.add('root', src, { user: 'user', env: { A: '1' }, cpuCount: 1 });
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('adding templates', () => {
  it('copies a root filesystem into a layer of its own, with the default settings filling the gaps', () => {
    assert.equal(root.layers.length, 1);
    assert.equal(readFileSync(join(root.layers[0]!, 'etc', 'hostname'), 'utf8'), 'root\n');
    assert.match(root.id, /^[a-z0-9]{20}$/);
    assert.deepEqual(root.config, { user: 'user', env: { A: '1' }, cpuCount: 1, memoryMB: 512, diskSizeMB: 1024 });
    assert.deepEqual(t.get(root.id), t.get('root'), 'found by id and by name alike');
  });

  it('refuses bad names, a missing or empty source and a taken name, leaving no layer behind', async () => {
    const before = layerDirs();
    for (const name of ['', 'Root', '-x', 'a b', 'a:b', 'a/b', 'x'.repeat(64)]) {
      await assert.rejects(t.add(name, dir), invalid(/bad template name/), name);
    }
    await assert.rejects(t.add('nope', join(dir, 'missing')), invalid(/does not exist/));
    mkdirSync(join(dir, 'empty'));
    await assert.rejects(t.add('empty', join(dir, 'empty')), invalid(/is empty/));
    writeFileSync(join(dir, 'junk.tar'), 'not a tarball');
    await assert.rejects(t.add('junk', join(dir, 'junk.tar')), invalid(/cannot extract/));
    await assert.rejects(t.add('root', dir), conflict(/already exists/));
    assert.deepEqual(layerDirs(), before);
    assert.deepEqual(
      t.list().map((x) => x.name),
      ['root'],
    );
  });

  it('a layer whose fill fails leaves neither a directory nor a row', async () => {
    const before = layerDirs();
    await assert.rejects(
      t.addOnTop('half', root, async (d) => {
        writeFileSync(join(d, 'partial'), 'x');
        throw new Error('build step failed');
      }),
      /build step failed/,
    );
    assert.deepEqual(layerDirs(), before);
    assert.equal(t.find('half'), undefined);
  });

  it('two adds of one name at once: one wins, the other is a conflict whose layer is removed', async () => {
    const before = layerDirs();
    const results = await Promise.allSettled([onTop('twin', root), onTop('twin', root)]);
    assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.equal((lost.reason as { kind?: string }).kind, 'conflict');
    assert.equal(layerDirs().length, before.length + 1, 'only the winner keeps a layer');
  });

  it('sweeps only the temporary directories interrupted imports left', () => {
    mkdirSync(join(paths.layersDir, '.tmp-interrupted'));
    writeFileSync(join(paths.layersDir, '.tmp-file'), '');
    const kept = layerDirs().filter((n) => !n.startsWith('.tmp-'));
    assert.deepEqual(t.sweepTemporaries().sort(), ['.tmp-file', '.tmp-interrupted']);
    assert.deepEqual(layerDirs(), kept);
  });

  it("keeps a memory snapshot's checkpoint image until the snapshot goes; sweeps images no snapshot owns", async () => {
    const snap = await onTop('memsnap', root, { checkpoint: true });
    const image = checkpointImageDir(paths, snap.id);
    mkdirSync(image, { recursive: true });
    writeFileSync(join(image, 'checkpoint.img'), 'x');
    for (const orphan of ['.tmp-interrupted', 'nosuchtemplate', root.id]) mkdirSync(checkpointImageDir(paths, orphan));
    assert.deepEqual(t.sweepTemporaries().sort(), ['checkpoints/.tmp-interrupted', 'checkpoints/nosuchtemplate', `checkpoints/${root.id}`].sort());
    assert.ok(existsSync(join(image, 'checkpoint.img')));
    const derived = t.addDerived('derived', snap, {});
    assert.equal(derived.config.checkpoint, undefined, 'a template derived from it has no image of its own');
    t.remove(derived.id);
    t.remove(snap.id);
    assert.equal(existsSync(image), false);
  });
});

describe('derived templates', () => {
  it("take the parent's settings and layers, not the names it answers to nor what made it", async () => {
    t.addAlias('root', 'root-alias');
    t.addTag('root', 'v1');
    const snap = await onTop('snap', t.get('root'), { snapshotOf: 'sbx1', takenAt: 5, team: 'alpha', cacheKey: 'k', buildStep: true, ephemeral: true });
    assert.deepEqual(snap.layers.slice(1), root.layers, 'the parent layers below the new one');
    const child = t.addDerived('child', snap, { cpuCount: 2 });
    assert.deepEqual(child.layers, snap.layers);
    assert.deepEqual(child.config, {
      user: 'user',
      env: { A: '1' },
      cpuCount: 2,
      memoryMB: 512,
      diskSizeMB: 1024,
      team: 'alpha',
      parent: snap.id,
    });
    assert.equal(t.find('child:v1', 'alpha'), undefined, "the parent's tags stay the parent's");
  });
});

describe('aliases and tags', () => {
  it('an alias is another name in the same namespace; a taken or malformed one is refused', () => {
    const other = t.addDerived('other', root, {});
    t.addAlias('root', 'r');
    assert.equal(t.get('r').id, root.id);
    assert.equal(t.get('r:latest').id, root.id, 'reserved tags work through an alias too');
    assert.throws(() => t.addAlias('other', 'r'), conflict(/already exists/));
    assert.throws(() => t.addAlias('other', 'root'), conflict(/already exists/));
    assert.throws(() => t.addAlias('other', 'other'), conflict(/already exists/));
    assert.throws(() => t.addAlias('other', 'Bad Alias'), invalid(/bad alias/));
    assert.throws(() => t.addAlias('missing', 'fine'), notFound(/not found/));
    assert.deepEqual(t.get('other').config.aliases, undefined, 'a refused alias changes nothing');
    assert.throws(() => t.addDerived('r', other, {}), conflict(/already exists/), 'an alias takes the name for templates too');
  });

  it('name:tag resolves while the template carries the tag; latest and default always name it', () => {
    const before = Date.now();
    const tagged = t.addTag('root', 'v2');
    assert.deepEqual(tagged.config.tags, ['v2']);
    assert.ok((tagged.config.tagsAt?.v2 ?? 0) >= before);
    assert.equal(t.addTag('root', 'v2').config.tags?.length, 1, 'tagging twice keeps one tag');
    assert.equal(t.addTag('root', 'latest').config.tags?.length, 1, 'reserved tags are not stored');
    for (const ref of ['root:v2', 'root:latest', 'root:default']) assert.equal(t.find(ref)?.id, root.id, ref);
    for (const ref of ['root:v3', 'root:', ':v2', 'nothing:latest']) assert.equal(t.find(ref), undefined, ref);
    assert.throws(() => t.addTag('root', 'V2'), invalid(/bad tag/));
    assert.throws(() => t.addTag('root', 'a:b'), invalid(/bad tag/));

    const untagged = t.removeTag('root', 'v2');
    assert.deepEqual(untagged.config.tags, []);
    assert.deepEqual(untagged.config.tagsAt, {});
    assert.equal(t.find('root:v2'), undefined);
    assert.throws(() => t.removeTag('root', 'v2'), notFound(/has no tag 'v2'/));
    assert.throws(() => t.removeTag('root', 'latest'), invalid(/cannot be removed/));
    assert.equal(t.find('root:latest')?.id, root.id);
  });
});

describe('holds and removal', () => {
  it('a held template is not removed until every hold, by id or by name, is released (each release counts once)', () => {
    const x = t.addDerived('held', root, {});
    const first = t.hold(x.id);
    const second = t.hold(x.id);
    const byName = t.hold('held');
    assert.ok(t.isHeld(x));
    assert.throws(() => t.remove(x.id), conflict(/in progress/));
    first();
    first();
    byName();
    assert.ok(t.isHeld(x), 'a second release of the same hold does not release another');
    assert.throws(() => t.remove('held'), conflict(/in progress/));
    assert.doesNotThrow(() => t.remove('held', 1), "the caller's own hold does not stop it");
    second();
    assert.equal(t.isHeld(x), false);
    assert.equal(t.find('held'), undefined);
  });

  it('refuses to remove the parent of other templates, naming them, and removes it once they are gone', async () => {
    const a = await onTop('child-a', root);
    t.addDerived('child-b', root, {});
    assert.throws(() => t.remove('root'), conflict(/parent of 'child-a', 'child-b'/));
    const generation = t.generation;
    t.remove(a.id);
    t.remove('child-b');
    assert.ok(t.generation > generation);
    t.remove('root');
    assert.deepEqual(t.list(), []);
    assert.throws(() => t.remove('root'), notFound(/not found/));
  });

  it("removes a template's own layers from disk and keeps those other templates still use", async () => {
    const top = await onTop('top', root);
    const own = top.layers[0]!;
    assert.ok(existsSync(join(own, 'top')));
    t.remove(top.id);
    assert.equal(existsSync(own), false, 'its own layer goes');
    assert.ok(existsSync(root.layers[0]!), "the parent's layer stays");
    const twin = t.addDerived('twin', root, {});
    t.remove(twin.id); // shares every layer with root: nothing goes
    assert.ok(existsSync(root.layers[0]!));
    t.remove('root');
    assert.deepEqual(layerDirs(), []);
  });

  it('refuses to remove a template a sandbox uses, and removes it once the sandbox is gone', async () => {
    const r = await rig();
    try {
      const x = r.m.templates.addDerived('in-use', r.m.templates.get('t'), {});
      const s = await r.m.create({ template: x.id, agent: false, command: ['/bin/sleep', 'infinity'] });
      assert.throws(() => r.m.templates.remove('in-use'), conflict(/used by 1 sandbox/));
      await r.m.delete(s.id);
      r.m.templates.remove('in-use');
      assert.equal(r.m.templates.find('in-use'), undefined);
    } finally {
      await r.cleanup();
    }
  });
});

describe('the public namespace', () => {
  it("the host's view finds a team's template by id only; a team sees public templates by name", () => {
    const mine = t.addDerived('private-one', root, { team: 'alpha' });
    assert.equal(t.find('private-one'), undefined);
    assert.equal(t.find(mine.id)?.name, 'private-one');
    assert.equal(t.find('root', 'alpha')?.id, root.id);
    assert.throws(() => t.get('private-one'), notFound(/template 'private-one' not found/));
    // a team's alias stays in its namespace too
    t.addAlias(mine.id, 'mine');
    assert.equal(t.find('mine', 'alpha')?.id, mine.id);
    assert.equal(t.find('mine', 'beta'), undefined);
    assert.equal(t.find('mine'), undefined);
    assert.throws(() => t.addAlias(mine.id, 'root'), conflict(/names a public template/));
  });
});
