// The metadata store used where the root keeps no extended attributes (gVisor's file proxy):
// exact replacement, no metadata for a file made again at the path, entries that only root or
// the file's owner wrote, bounded entries, and envd's moves carrying it. No sandbox needed.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chownSync, mkdirSync, realpathSync, mkdtempSync, readdirSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MetadataStore } from '../../src/envd/fs/metadata-store.js';

let dir: string;
let storeDir: string;
let store: MetadataStore;

describe('the file metadata store', () => {
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'envd-metastore-'));
    storeDir = join(dir, 'store');
    mkdirSync(storeDir, { mode: 0o1733 });
    store = new MetadataStore(storeDir);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const entries = () => readdirSync(storeDir);
  /** The entry of a file: named for its real path. */
  const entryOf = (f: string) => join(storeDir, createHash('sha256').update(realpathSync(f)).digest('hex'));

  it('sets exactly the given metadata; none removes the entry', async () => {
    const f = join(dir, 'a.txt');
    writeFileSync(f, 'a');
    assert.equal(await store.get(f), undefined);
    await store.set(f, { author: 'alice', kind: 'draft' });
    assert.deepEqual(await store.get(f), { author: 'alice', kind: 'draft' });
    await store.set(f, { only: 'this' });
    assert.deepEqual(await store.get(f), { only: 'this' });
    assert.deepEqual(entries(), [basename(entryOf(f))]);
    await store.set(f, {});
    assert.equal(await store.get(f), undefined);
    assert.deepEqual(entries(), []);
  });

  it('a file made again at the path has none', async () => {
    const f = join(dir, 'b.txt');
    writeFileSync(f, 'one');
    await store.set(f, { k: 'v' });
    unlinkSync(f);
    await new Promise((r) => setTimeout(r, 5));
    writeFileSync(f, 'two');
    assert.equal(await store.get(f), undefined);
  });

  it('counts an entry only when root or the file owner wrote it, and only a bounded one', async () => {
    const f = join(dir, 'c.txt');
    writeFileSync(f, 'c');
    await store.set(f, { k: 'v' });
    const entry = entryOf(f);
    chownSync(entry, 12345, 12345); // another user's entry for root's file
    assert.equal(await store.get(f), undefined);
    chownSync(f, 12345, 12345); // ...which is theirs once the file is
    assert.deepEqual(await store.get(f), { k: 'v' });
    writeFileSync(entry, 'x'.repeat(70 * 1024));
    assert.equal(await store.get(f), undefined, 'an oversized entry is not read');
    writeFileSync(entry, '{"path": 1}');
    assert.equal(await store.get(f), undefined, 'a malformed entry is none');
    await store.set(f, {});
  });

  it("envd's move carries it to the new path", async () => {
    const f = join(dir, 'd.txt');
    const g = join(dir, 'e.txt');
    writeFileSync(f, 'd');
    await store.set(f, { moved: 'yes' });
    const from = await store.before(f);
    assert.ok(from);
    const old = entryOf(f);
    renameSync(f, g);
    await store.moved(from, g);
    assert.deepEqual(await store.get(g), { moved: 'yes' });
    assert.ok(!entries().includes(basename(old)), 'the old entry went');
    assert.ok(entries().includes(basename(entryOf(g))));
    await store.set(g, {});
  });
});
