// files.watchDir of the real e2b SDK (debug mode), and the polled watchers, against envd.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, chmodSync, chownSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileType, FilesystemEventType, InvalidArgumentError, NotFoundError, type FilesystemEvent, type Sandbox } from 'e2b';
import { eventually, sdk, startTestEnvd, unaryRequest, type TestEnvd } from './helpers.js';

function has(events: FilesystemEvent[], name: string, type: FilesystemEventType): boolean {
  return events.some((e) => e.name === name && e.type === type);
}

describe('envd watchDir through the SDK', () => {
  let envd: TestEnvd;
  let sbx: Sandbox;

  before(async () => {
    envd = await startTestEnvd();
    sbx = await sdk();
  });
  after(async () => {
    await envd?.stop();
  });

  test('create, write, chmod, rename, remove in a directory', async () => {
    const dir = join(envd.home, 'w1');
    mkdirSync(dir);
    writeFileSync(join(dir, 'existing.txt'), 'x');
    // The SDK acts as `user`, whose file operations run with the user's own credentials.
    chownSync(dir, envd.uid, envd.gid);
    const events: FilesystemEvent[] = [];
    const h = await sbx.files.watchDir('w1', (e) => void events.push(e), { timeoutMs: 0 });
    try {
      await sbx.files.write('w1/a.txt', 'hello');
      assert.ok(await eventually(() => has(events, 'a.txt', FilesystemEventType.WRITE)), JSON.stringify(events));
      assert.ok(has(events, 'a.txt', FilesystemEventType.CREATE), JSON.stringify(events));
      appendFileSync(join(dir, 'existing.txt'), 'more');
      assert.ok(await eventually(() => has(events, 'existing.txt', FilesystemEventType.WRITE)), JSON.stringify(events));
      chmodSync(join(dir, 'existing.txt'), 0o600);
      assert.ok(await eventually(() => has(events, 'existing.txt', FilesystemEventType.CHMOD)), JSON.stringify(events));
      renameSync(join(dir, 'a.txt'), join(dir, 'b.txt'));
      assert.ok(await eventually(() => has(events, 'b.txt', FilesystemEventType.CREATE)), JSON.stringify(events));
      assert.ok(has(events, 'a.txt', FilesystemEventType.RENAME), JSON.stringify(events));
      await sbx.files.remove('w1/b.txt');
      assert.ok(await eventually(() => has(events, 'b.txt', FilesystemEventType.REMOVE)), JSON.stringify(events));
      await sbx.files.makeDir('w1/sub');
      assert.ok(await eventually(() => has(events, 'sub', FilesystemEventType.CREATE)), JSON.stringify(events));
      // Not recursive: nothing from inside sub.
      writeFileSync(join(dir, 'sub', 'inner.txt'), 'i');
      writeFileSync(join(dir, 'marker'), 'm');
      assert.ok(await eventually(() => has(events, 'marker', FilesystemEventType.CREATE)));
      assert.ok(!events.some((e) => e.name.startsWith('sub/')), JSON.stringify(events));
      assert.ok(events.every((e) => e.entry === undefined));
    } finally {
      await h.stop();
    }
  });

  test('recursive watch covers new subdirectories; includeEntry fills entries', async () => {
    const dir = join(envd.home, 'w2');
    mkdirSync(join(dir, 'nested'), { recursive: true });
    chownSync(dir, envd.uid, envd.gid);
    chownSync(join(dir, 'nested'), envd.uid, envd.gid);
    const events: FilesystemEvent[] = [];
    const h = await sbx.files.watchDir('w2', (e) => void events.push(e), { recursive: true, includeEntry: true, timeoutMs: 0 });
    try {
      await sbx.files.write('w2/nested/a.txt', 'a');
      assert.ok(await eventually(() => has(events, 'nested/a.txt', FilesystemEventType.WRITE)), JSON.stringify(events));
      const created = events.find((e) => e.name === 'nested/a.txt' && e.type === FilesystemEventType.CREATE);
      assert.equal(created?.entry?.path, join(dir, 'nested/a.txt'));
      assert.equal(created?.entry?.type, FileType.FILE);
      assert.equal(created?.entry?.owner, 'user');

      // A directory created after the watch started, and a file in it right away.
      await sbx.files.makeDir('w2/fresh/deeper');
      await sbx.files.write('w2/fresh/deeper/b.txt', 'b');
      assert.ok(await eventually(() => has(events, 'fresh/deeper/b.txt', FilesystemEventType.CREATE)), JSON.stringify(events));
      assert.ok(has(events, 'fresh', FilesystemEventType.CREATE), JSON.stringify(events));
      const dirEvent = events.find((e) => e.name === 'fresh' && e.type === FilesystemEventType.CREATE);
      assert.equal(dirEvent?.entry?.type, FileType.DIR);
      // Later writes in the new directory are seen as writes.
      appendFileSync(join(dir, 'fresh/deeper/b.txt'), 'bb');
      assert.ok(await eventually(() => events.filter((e) => e.name === 'fresh/deeper/b.txt' && e.type === FilesystemEventType.WRITE).length > 0));
      rmSync(join(dir, 'fresh'), { recursive: true });
      assert.ok(await eventually(() => has(events, 'fresh', FilesystemEventType.REMOVE)), JSON.stringify(events));
      assert.ok(
        events.every((e) => e.type === FilesystemEventType.REMOVE || e.entry !== undefined),
        JSON.stringify(events),
      );
    } finally {
      await h.stop();
    }
  });

  test('errors: missing directory, a file, and the watch ending on its timeout', async () => {
    await assert.rejects(
      sbx.files.watchDir('no-such-dir', () => {}),
      NotFoundError,
    );
    writeFileSync(join(envd.home, 'plain.txt'), 'p');
    await assert.rejects(
      sbx.files.watchDir('plain.txt', () => {}),
      InvalidArgumentError,
    );
    let exitErr: Error | undefined | null = null;
    mkdirSync(join(envd.home, 'w3'));
    await sbx.files.watchDir('w3', () => {}, { timeoutMs: 500, onExit: (e) => void (exitErr = e) });
    assert.ok(await eventually(() => exitErr !== null));
    assert.equal((exitErr as Error | null)?.name, 'TimeoutError');
  });

  test('polled watchers: create, get events, remove', async () => {
    mkdirSync(join(envd.home, 'w4'));
    const r = await unaryRequest('/filesystem.Filesystem/CreateWatcher', { path: 'w4', recursive: true });
    assert.equal(r.status, 200);
    const { watcherId } = (await r.json()) as { watcherId: string };
    assert.ok(watcherId);
    writeFileSync(join(envd.home, 'w4', 'p.txt'), 'p');
    const seen: { name: string; type: string }[] = [];
    assert.ok(
      await eventually(async () => {
        const g = await unaryRequest('/filesystem.Filesystem/GetWatcherEvents', { watcherId });
        const body = (await g.json()) as { events: { name: string; type: string }[] };
        seen.push(...body.events);
        return seen.some((e) => e.name === 'p.txt' && e.type === 'EVENT_TYPE_CREATE');
      }),
      JSON.stringify(seen),
    );
    assert.equal((await unaryRequest('/filesystem.Filesystem/RemoveWatcher', { watcherId })).status, 200);
    const gone = await unaryRequest('/filesystem.Filesystem/GetWatcherEvents', { watcherId });
    assert.equal(gone.status, 404);
    assert.equal(((await gone.json()) as { code: string }).code, 'not_found');
  });
});
