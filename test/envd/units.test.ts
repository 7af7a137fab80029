// Unit tests of envd's building blocks (no server).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileSignature } from '../../src/protocol/signature.js';
import { basicAuthUser } from '../../src/envd/auth.js';
import { permissionString } from '../../src/envd/fs/entry.js';
import { MultipartParser, multipartBoundary, parseContentDisposition, type PartInfo } from '../../src/envd/http/multipart.js';
import { parseArgs, UsageError } from '../../src/envd/options.js';
import { resolvePath } from '../../src/envd/paths.js';
import { Code } from '@connectrpc/connect';
import { endInfo, spawnError } from '../../src/envd/process/manager.js';
import { UserDb } from '../../src/envd/users.js';

async function parseAll(body: Buffer, boundary: string, chunk: number): Promise<{ part: PartInfo; data: string }[]> {
  const parts: { part: PartInfo; data: Buffer[] }[] = [];
  const p = new MultipartParser(boundary, {
    begin: (part) => void parts.push({ part, data: [] }),
    data: (d) => void parts[parts.length - 1]?.data.push(Buffer.from(d)),
    end: () => {},
  });
  for (let i = 0; i < body.length; i += chunk) await p.write(body.subarray(i, i + chunk));
  await p.finish();
  return parts.map((x) => ({ part: x.part, data: Buffer.concat(x.data).toString('latin1') }));
}

describe('envd units', () => {
  test('multipart: any split of the body gives the same parts', async () => {
    const b = 'XyZ--boundary';
    const body = Buffer.from(
      `preamble\r\n--${b}\r\nContent-Disposition: form-data; name="file"; filename="a/b.txt"\r\nContent-Type: text/plain\r\n\r\n` +
        `line1\r\n--not-the-boundary\r\n\r\n--${b}\r\nContent-Disposition: form-data; name="file"; filename="c %22q%22.bin"\r\n\r\n` +
        `\r\n\x00\xff--${b.slice(0, 5)}\r\n--${b}--\r\nepilogue`,
      'latin1',
    );
    const expected = [
      { part: { name: 'file', filename: 'a/b.txt', contentType: 'text/plain' }, data: 'line1\r\n--not-the-boundary\r\n' },
      { part: { name: 'file', filename: 'c "q".bin' }, data: `\r\n\x00\xff--${b.slice(0, 5)}` },
    ];
    for (const chunk of [1, 2, 3, 7, 16, 1000]) assert.deepEqual(await parseAll(body, b, chunk), expected, `chunk ${chunk}`);
  });

  test('multipart: truncated body is an error; boundary parsing', async () => {
    const p = new MultipartParser('b', { begin() {}, data() {}, end() {} });
    await p.write(Buffer.from('--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc'));
    await assert.rejects(p.finish());
    assert.equal(multipartBoundary('multipart/form-data; boundary=----abc'), '----abc');
    assert.equal(multipartBoundary('multipart/form-data; boundary="q b"'), 'q b');
    assert.equal(multipartBoundary('application/octet-stream'), undefined);
    assert.deepEqual(parseContentDisposition(`form-data; name="file"; filename*=UTF-8''%C3%A9.txt`), { name: 'file', filename: 'é.txt' });
  });

  test('permission strings are ls-style', () => {
    assert.equal(permissionString(0o100644), '-rw-r--r--');
    assert.equal(permissionString(0o040755), 'drwxr-xr-x');
    assert.equal(permissionString(0o120777), 'lrwxrwxrwx');
    assert.equal(permissionString(0o104755), '-rwsr-xr-x');
    assert.equal(permissionString(0o041777), 'drwxrwxrwt');
    assert.equal(permissionString(0o102644), '-rw-r-Sr--');
  });

  test('signature test vector and Basic auth parsing', () => {
    assert.equal(fileSignature('hello.txt', 'read', 'user', '0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0'), 'v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E');
    assert.equal(basicAuthUser('Basic ' + Buffer.from('root:').toString('base64')), 'root');
    assert.equal(basicAuthUser('basic ' + Buffer.from('user:pw').toString('base64')), 'user');
    assert.equal(basicAuthUser(undefined), undefined);
    assert.equal(basicAuthUser('Bearer x'), undefined);
  });

  test('end status text like Go', () => {
    assert.deepEqual(endInfo(0, null), { exitCode: 0, exited: true, status: 'exit status 0' });
    assert.deepEqual(endInfo(3, null), { exitCode: 3, exited: true, status: 'exit status 3', error: 'exit status 3' });
    assert.deepEqual(endInfo(null, 9), { exitCode: -1, exited: false, status: 'signal: killed', error: 'signal: killed' });
    assert.equal(endInfo(null, 15).status, 'signal: terminated');
    assert.equal(endInfo(null, 2).status, 'signal: interrupt');
  });

  test('paths resolve against the home', () => {
    assert.equal(resolvePath('a/b', '/home/user'), '/home/user/a/b');
    assert.equal(resolvePath('~', '/home/user'), '/home/user');
    assert.equal(resolvePath('~/x/../y', '/home/user'), '/home/user/y');
    assert.equal(resolvePath('/etc//passwd', '/home/user'), '/etc/passwd');
    assert.equal(resolvePath('', '/home/user'), '/home/user');
  });

  test('users from passwd and group files', () => {
    const dir = mkdtempSync(join(tmpdir(), 'envd-users-'));
    try {
      writeFileSync(join(dir, 'passwd'), 'user:x:1000:1000::/home/user:/bin/bash\n# comment\nbad line\nsvc:x:999:999::/:/bin/false\n');
      writeFileSync(join(dir, 'group'), 'user:x:1000:\nwheel:x:10:user,svc\ndocker:x:998:user\n');
      const db = new UserDb(join(dir, 'passwd'), join(dir, 'group'));
      assert.deepEqual(db.lookup('user'), { name: 'user', uid: 1000, gid: 1000, home: '/home/user', shell: '/bin/bash', groups: [1000, 10, 998] });
      assert.equal(db.lookup('root')?.uid, 0); // synthesized when missing
      assert.equal(db.lookup('nobody'), undefined);
      assert.equal(db.userName(999), 'svc');
      assert.equal(db.groupName(10), 'wheel');
      assert.equal(db.groupName(4242), '4242');
      // Changes are picked up.
      writeFileSync(join(dir, 'passwd'), 'user:x:1001:1000::/home/u2:/bin/sh\n');
      assert.equal(db.lookup('user')?.uid, 1001);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('command line', () => {
    const o = parseArgs(['--socket', '/run/e.sock', '--port=0', '--passwd', '/p', '--state-dir', '', '--exec-helper', process.execPath]);
    assert.equal(o.socketPath, '/run/e.sock');
    assert.equal(o.port, 0);
    assert.equal(o.passwdPath, '/p');
    assert.equal(o.stateDir, '');
    assert.equal(o.helperPath, process.execPath);
    // No TCP unless asked for.
    assert.equal(parseArgs(['--socket', '/run/e.sock']).port, 0);
    assert.equal(parseArgs(['--port', '49983']).port, 49983);
    assert.throws(() => parseArgs([]), UsageError);
    assert.throws(() => parseArgs(['--port', '0']), UsageError);
    assert.throws(() => parseArgs(['--bogus']), UsageError);
  });

  test('a fork refused under the pids limit is resource_exhausted, naming the limit', () => {
    const e = spawnError(Object.assign(new Error('spawn EAGAIN'), { code: 'EAGAIN' }));
    assert.equal(e.code, Code.ResourceExhausted);
    assert.match(e.message, /pids limit/);
    assert.equal(spawnError(new Error('posix_spawnp failed: EAGAIN')).code, Code.ResourceExhausted);
    assert.equal(spawnError(Object.assign(new Error('spawn ENOENT'), { code: 'ENOENT' })).code, Code.InvalidArgument);
  });
});
