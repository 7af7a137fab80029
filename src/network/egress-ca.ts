// The egress proxy's certificate authority: private to the instance, its key (0600) in the
// data directory and never in a sandbox. Sandboxes trust its certificate; the proxy shows
// them a certificate it issues on the fly (with openssl, cached) for the name they asked for.
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext, type SecureContext } from 'node:tls';
import { promisify } from 'node:util';

const run = promisify(execFile);
/** Names whose certificate is kept (the oldest goes first). */
const CACHE = 1024;
/** openssl processes issuing at once (a sandbox asking for many names waits, it does not fork the host away). */
const ISSUING = 2;
const NAME = /^([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export class EgressCa {
  private readonly contexts = new Map<string, Promise<SecureContext>>();
  private readonly leafKey: string;
  private issuing = 0;
  private readonly waiting: (() => void)[] = [];

  private constructor(
    private readonly dir: string,
    readonly certPem: string,
  ) {
    // one key for every issued certificate, in memory only (written for openssl while it signs)
    this.leafKey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  }

  /** The instance's CA in `<dataDir>/egress-ca` (made on first use). */
  static async open(dataDir: string, instanceId: string): Promise<EgressCa> {
    const dir = join(dataDir, 'egress-ca');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    const key = join(dir, 'ca.key');
    const crt = join(dir, 'ca.crt');
    if (!existsSync(key) || !existsSync(crt)) {
      const pem = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
      writeFileSync(key, pem, { mode: 0o600 });
      await run('openssl', [
        ...['req', '-x509', '-new', '-key', key, '-out', crt, '-days', '3650', '-sha256'],
        ...['-subj', `/CN=cubebox egress CA ${instanceId}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
      ]);
    }
    chmodSync(key, 0o600);
    return new EgressCa(dir, readFileSync(crt, 'utf8'));
  }

  /** The TLS context to show a sandbox for a name (issued once, then cached; the leaf alone: the sandbox has the CA). */
  contextFor(name: string): Promise<SecureContext> {
    if (!NAME.test(name) || name.length > 253) return Promise.reject(new Error('not a host name'));
    let ctx = this.contexts.get(name);
    if (!ctx) {
      if (this.contexts.size >= CACHE) this.contexts.delete(this.contexts.keys().next().value!);
      ctx = this.issue(name).then((cert) => createSecureContext({ key: this.leafKey, cert }));
      ctx.catch(() => this.contexts.delete(name));
      this.contexts.set(name, ctx);
    }
    return ctx;
  }

  private async issue(name: string): Promise<string> {
    if (this.issuing >= ISSUING) await new Promise<void>((r) => this.waiting.push(r));
    this.issuing++;
    try {
      return await this.sign(name);
    } finally {
      this.issuing--;
      this.waiting.shift()?.();
    }
  }

  private async sign(name: string): Promise<string> {
    const keyFile = join(this.dir, `leaf-${randomBytes(6).toString('hex')}.key`);
    writeFileSync(keyFile, this.leafKey, { mode: 0o600 });
    try {
      const { stdout } = await run('openssl', [
        ...['req', '-new', '-x509', '-key', keyFile, '-CA', join(this.dir, 'ca.crt'), '-CAkey', join(this.dir, 'ca.key')],
        ...['-days', '30', '-sha256', '-set_serial', `0x${randomBytes(12).toString('hex')}`, '-subj', `/CN=${name}`],
        ...['-addext', `subjectAltName=DNS:${name}`, '-addext', 'basicConstraints=critical,CA:FALSE'],
        ...['-addext', 'keyUsage=critical,digitalSignature', '-addext', 'extendedKeyUsage=serverAuth'],
        ...['-addext', 'subjectKeyIdentifier=hash', '-addext', 'authorityKeyIdentifier=keyid'],
      ]);
      return stdout;
    } finally {
      rmSync(keyFile, { force: true });
    }
  }
}
