// A full disk answers as what it is: the host's (the data directory, the database) 503 with a
// Retry-After, a sandbox's own 507, never a bare 500. The data directory is on a small disk the
// test mounts and fills.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DISK_FULL_RETRY_SEC, diskFull, HTTP_STATUS } from '../../src/util/errors.js';
import { CLI, destroyInstance, openManager, waitExit } from '../helpers/instance.js';
import { createKey } from '../helpers/service.js';

let base: string;
let mnt: string;
let dataDir: string;
let serve: ChildProcess | undefined;
let url: string;
let key: string;

/** Starts `cubebox serve` (no base template, no network) and resolves with its URL. */
function startServe(): Promise<string> {
  serve = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--no-base', '--host', '127.0.0.1', '--port', '0'], {
    env: { ...process.env, CUBEBOX_LOG_LEVEL: 'info', CUBEBOX_POOL: '', CUBEBOX_NETWORK: 'off' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const child = serve;
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /"url":"([^"]+)"[^\n]*"msg":"cubebox serve ready"|"msg":"cubebox serve ready"[^\n]*"url":"([^"]+)"/.exec(buf);
      if (m) resolve(m[1] ?? m[2]!);
      if (buf.length > 1 << 20) buf = buf.slice(-4096);
    });
    child.on('exit', (code) => reject(new Error(`cubebox serve exited early (${code})`)));
  });
}

async function api(
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; retryAfter: string | null; body: { message?: string; sandboxID?: string } }> {
  const res = await fetch(url + path, {
    method,
    headers: { 'x-api-key': key, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, retryAfter: res.headers.get('retry-after'), body: text ? (JSON.parse(text) as { message?: string }) : {} };
}

/** Writes zeros into `file` until the filesystem refuses even a page; returns the error it refused with. */
function fill(file: string): NodeJS.ErrnoException | undefined {
  const fd = openSync(file, 'w');
  let refused: NodeJS.ErrnoException | undefined;
  try {
    for (const size of [1 << 20, 4096]) {
      try {
        for (;;) writeSync(fd, Buffer.alloc(size));
      } catch (err) {
        refused = err as NodeJS.ErrnoException;
      }
    }
  } finally {
    closeSync(fd);
  }
  return refused;
}

describe('a full disk', { timeout: 300_000 }, () => {
  before(async () => {
    base = mkdtempSync('/var/tmp/cubebox-test-full-');
    mnt = join(base, 'mnt');
    mkdirSync(mnt);
    // an ext4 image of its own (as sandbox disks are): the sandboxes' overlays mount on it
    const image = join(base, 'disk.img');
    for (const argv of [
      ['truncate', '-s', '256M', image],
      ['mkfs.ext4', '-q', '-F', '-m', '0', image],
      ['mount', '-o', 'loop', image, mnt],
    ]) {
      const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
      assert.equal(r.status, 0, `${argv.join(' ')}: ${r.stderr}`);
    }
    // sandboxes (their user namespace's root) pass through to their disks, as they do through the data directory
    for (const dir of [base, mnt]) chmodSync(dir, 0o711);
    dataDir = join(mnt, 'data');
    const m = await openManager(dataDir);
    await m.templates.addBusybox('busybox');
    await m.close();
    key = await createKey(dataDir);
    url = await startServe();
  });
  after(async () => {
    for (const name of existsSync(mnt) ? readdirSync(mnt) : []) if (name.startsWith('fill')) rmSync(join(mnt, name), { force: true });
    if (serve) {
      serve.kill('SIGTERM');
      await waitExit(serve);
    }
    await destroyInstance(undefined, dataDir);
    spawnSync('umount', [mnt]);
    rmSync(base, { recursive: true, force: true });
  });

  it("answers 503 with Retry-After when the host's disk is full, and works again once there is space", async () => {
    const first = await api('POST', '/sandboxes', { templateID: 'busybox', timeout: 120 });
    assert.equal(first.status, 201, JSON.stringify(first.body));
    // a path on a sandbox's own disk, made before the filesystem fills
    const sandboxDisk = join(mnt, 'elsewhere', 'sandboxes', 'abc123', 'disk');
    mkdirSync(sandboxDisk, { recursive: true });

    assert.equal(fill(join(mnt, 'fill'))?.code, 'ENOSPC');
    const refused = await api('POST', '/sandboxes', { templateID: 'busybox', timeout: 120 });
    assert.equal(refused.status, 503, JSON.stringify(refused.body));
    assert.equal(refused.retryAfter, String(DISK_FULL_RETRY_SEC));
    assert.match(refused.body.message ?? '', /out of disk space/);

    // the same error on a sandbox's own disk is the sandbox's to fix: 507
    // The refused create gave back the few blocks it had taken, so fill again until a mkdir is refused.
    let own: unknown;
    for (let i = 0; i < 5 && !own; i++) {
      fill(join(mnt, `fill-more-${i}`));
      try {
        mkdirSync(join(sandboxDisk, `d${i}`)); // an error that names its path
      } catch (err) {
        own = err;
      }
    }
    assert.equal((own as NodeJS.ErrnoException | undefined)?.code, 'ENOSPC');
    const kind = diskFull(own)?.kind;
    assert.equal(kind && HTTP_STATUS[kind], 507);

    for (const name of readdirSync(mnt)) if (name.startsWith('fill')) rmSync(join(mnt, name));
    const again = await api('POST', '/sandboxes', { templateID: 'busybox', timeout: 120 });
    assert.equal(again.status, 201, JSON.stringify(again.body));
    for (const id of [first.body.sandboxID, again.body.sandboxID]) assert.equal((await api('DELETE', `/sandboxes/${id}`)).status, 204);
  });
});
