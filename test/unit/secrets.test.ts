// The secret key file (made once, 0600, never through a link; anything unsound refuses) and the
// sealing of values (AES-256-GCM bound to the secret it belongs to).
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { seal, unseal } from '../../src/secrets/cipher.js';
import { openSecretKey, SECRET_KEY_FILE } from '../../src/secrets/key.js';

const dirs: string[] = [];
const newDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'cubebox-secrets-'));
  dirs.push(d);
  return d;
};
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('the secret key file', () => {
  it('is made on first use, 0600, 32 bytes, and read back the same', () => {
    const dir = newDir();
    const key = openSecretKey(dir);
    const st = statSync(join(dir, SECRET_KEY_FILE));
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(st.size, 32);
    assert.deepEqual(openSecretKey(dir), key);
    assert.deepEqual(readdirSync(dir), [SECRET_KEY_FILE], 'no temporary file left');
  });

  it('refuses a key others can read, of the wrong size, or that is a link or not a file', () => {
    const dir = newDir();
    openSecretKey(dir);
    const file = join(dir, SECRET_KEY_FILE);
    chmodSync(file, 0o644);
    assert.throws(() => openSecretKey(dir), /has mode 0644: it must be 0600/);
    chmodSync(file, 0o600);

    const short = newDir();
    writeFileSync(join(short, SECRET_KEY_FILE), 'x'.repeat(31), { mode: 0o600 });
    assert.throws(() => openSecretKey(short), /is 31 bytes, a key is 32/);

    const linked = newDir();
    symlinkSync(file, join(linked, SECRET_KEY_FILE));
    assert.throws(() => openSecretKey(linked), /is a symbolic link/);

    const dangling = newDir();
    symlinkSync(join(dangling, 'elsewhere'), join(dangling, SECRET_KEY_FILE));
    assert.throws(() => openSecretKey(dangling), /is a symbolic link/, 'a dangling link is not written through');
    assert.deepEqual(readdirSync(dangling), [SECRET_KEY_FILE]);

    const notFile = newDir();
    mkdirSync(join(notFile, SECRET_KEY_FILE), { mode: 0o700 });
    assert.throws(() => openSecretKey(notFile), /is not a regular file/);
  });
});

describe('sealed values', () => {
  const key = Buffer.alloc(32, 7);
  const owner = { team: 't1', secretId: 'sec_1', version: 1 };

  it('open with the same key and owner only', () => {
    const sealed = seal(key, 'hunter2', owner);
    assert.ok(!sealed.includes('hunter2') && !Buffer.from(sealed.slice(3), 'base64').includes('hunter2'));
    assert.notEqual(seal(key, 'hunter2', owner), sealed, 'a fresh nonce each time');
    assert.equal(unseal(key, sealed, owner), 'hunter2');
    assert.throws(() => unseal(Buffer.alloc(32, 8), sealed, owner), /does not open/);
    assert.throws(() => unseal(key, sealed, { ...owner, team: 't2' }), /does not open/, "another team's row");
    assert.throws(() => unseal(key, sealed, { ...owner, version: 2 }), /does not open/, 'another version');
    const raw = Buffer.from(sealed.slice(3), 'base64');
    raw[raw.length - 1]! ^= 1;
    assert.throws(() => unseal(key, `v1:${raw.toString('base64')}`, owner), /does not open/, 'altered bytes');
  });
});
