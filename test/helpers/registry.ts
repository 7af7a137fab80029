// A real image registry for tests: Debian's docker-registry on a loopback port, in a temporary
// directory, with TLS (a CA and a server certificate made here with openssl) and htpasswd basic
// auth; images pushed with skopeo from OCI layouts the test makes with umoci. stop() ends the
// registry and removes everything. No traffic leaves loopback.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { createServer } from 'node:net';
import { join } from 'node:path';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

export interface TestRegistry {
  /** 127.0.0.1:<port> */
  host: string;
  /** The CA that signed the registry's certificate (PEM file). */
  caFile: string;
  username: string;
  password: string;
  /** Pushes an OCI layout's image or index (`<layout>:<tag>`) as `<host>/<repo>`; resolves to its digest in the registry. */
  push(layout: string, tag: string, repo: string): Promise<string>;
  /** The registry's access log so far: one `METHOD path status` per request. */
  requests(): string[];
  /** Where the registry keeps its blobs and manifests. */
  storage: string;
  stop(): Promise<void>;
}

function run(file: string, args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(file, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.on('error', reject);
    c.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    if (input !== undefined) c.stdin!.end(input);
  });
}

export async function runOk(file: string, args: string[], input?: string): Promise<string> {
  const r = await run(file, args, input);
  assert.equal(r.code, 0, `${file} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** A port nothing listens on right now (the kernel's choice, released at once). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** A CA and a certificate for 127.0.0.1 and localhost signed by it. */
async function makeCertificates(dir: string): Promise<void> {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await runOk('openssl', [
    'req',
    '-x509',
    ...ec,
    '-keyout',
    join(dir, 'ca.key'),
    '-out',
    join(dir, 'ca.crt'),
    '-days',
    '2',
    '-subj',
    '/CN=cubebox test registry CA',
  ]);
  await runOk('openssl', ['req', ...ec, '-keyout', join(dir, 'server.key'), '-out', join(dir, 'server.csr'), '-subj', '/CN=localhost']);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  await runOk('openssl', [
    'x509',
    '-req',
    '-in',
    join(dir, 'server.csr'),
    '-CA',
    join(dir, 'ca.crt'),
    '-CAkey',
    join(dir, 'ca.key'),
    '-CAcreateserial',
    '-out',
    join(dir, 'server.crt'),
    '-days',
    '2',
    '-extfile',
    join(dir, 'ext.cnf'),
  ]);
}

function ping(port: number, ca: Buffer): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/v2/', ca, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(undefined));
    req.on('timeout', () => req.destroy());
  });
}

/**
 * plainHttp: no TLS and no authentication (as a cluster's private template registry may run),
 * the registry's storage under `<dataDir>`; else TLS and basic auth.
 */
export async function startRegistry(opts: { plainHttp?: boolean } = {}): Promise<TestRegistry> {
  const dir = mkdtempSync('/var/tmp/cubebox-registry-test-');
  let child: ChildProcess | undefined;
  const stop = async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child!.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    if (!opts.plainHttp) await makeCertificates(dir);
    const username = 'cubebox-test';
    const password = `pw-${Math.random().toString(36).slice(2)}`;
    // bcrypt at the lowest cost: the registry checks it on every request
    if (!opts.plainHttp) writeFileSync(join(dir, 'htpasswd'), await runOk('htpasswd', ['-niBC', '4', username], `${password}\n`));
    const port = await freePort();
    writeFileSync(
      join(dir, 'config.yml'),
      [
        'version: 0.1',
        'log: {level: info, formatter: text, accesslog: {disabled: false}}',
        `storage: {filesystem: {rootdirectory: ${join(dir, 'data')}}}`,
        ...(opts.plainHttp
          ? [`http: {addr: "127.0.0.1:${port}", secret: test-only}`]
          : [
              `http: {addr: "127.0.0.1:${port}", secret: test-only, tls: {certificate: ${join(dir, 'server.crt')}, key: ${join(dir, 'server.key')}}}`,
              `auth: {htpasswd: {realm: cubebox-test, path: ${join(dir, 'htpasswd')}}}`,
            ]),
        '',
      ].join('\n'),
    );
    const log: string[] = [];
    child = spawn(REGISTRY_BIN, ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.on('error', () => undefined);
    let partial = '';
    const collect = (d: Buffer) => {
      const lines = (partial + d.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) {
        // the access log: 127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 ...
        const m = /"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP\/[\d.]+" (\d+)/.exec(l);
        if (m) log.push(`${m[1]} ${m[2]} ${m[3]}`);
      }
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const ca = opts.plainHttp ? Buffer.alloc(0) : readFileSync(join(dir, 'ca.crt'));
    for (let i = 0; ; i++) {
      if (child.exitCode !== null) throw new Error(`docker-registry exited with ${child.exitCode}`);
      if (
        opts.plainHttp
          ? (await fetch(`http://127.0.0.1:${port}/v2/`).then(
              (r) => r.status,
              () => 0,
            )) === 200
          : (await ping(port, ca)) === 401
      )
        break;
      if (i > 200) throw new Error('docker-registry did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
    const host = `127.0.0.1:${port}`;
    // the pushes' own auth file (0600, in the registry's directory), never a command-line password
    const authFile = join(dir, 'push-auth.json');
    writeFileSync(authFile, JSON.stringify({ auths: { [host]: { auth: Buffer.from(`${username}:${password}`).toString('base64') } } }), { mode: 0o600 });
    const certs = join(dir, 'certs');
    mkdirSync(certs);
    if (!opts.plainHttp) writeFileSync(join(certs, 'ca.crt'), ca);
    chmodSync(dir, 0o700);
    return {
      host,
      caFile: join(dir, 'ca.crt'),
      username,
      password,
      async push(layout, tag, repo) {
        const digestFile = join(dir, 'digest');
        await runOk('skopeo', [
          'copy',
          '--dest-authfile',
          authFile,
          '--dest-cert-dir',
          certs,
          '--all',
          '--digestfile',
          digestFile,
          `oci:${layout}:${tag}`,
          `docker://${host}/${repo}`,
        ]);
        return readFileSync(digestFile, 'utf8').trim();
      },
      requests: () => [...log],
      storage: join(dir, 'data'),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * A tiny image as an OCI layout (tag v1): busybox and a few files in one layer, a second
 * layer replacing one of them and adding another; env GREETING, workdir /data, cmd sleep.
 */
export async function makeTestImage(work: string): Promise<string> {
  const img = join(work, 'img');
  await runOk('sh', [
    '-ec',
    `
    cd "$1"
    umoci init --layout img
    umoci new --image img:v1
    umoci unpack --image img:v1 b1
    mkdir -p b1/rootfs/bin b1/rootfs/etc b1/rootfs/data b1/rootfs/tmp
    cp /bin/busybox b1/rootfs/bin/
    for a in sh cat ls sleep test echo pwd id; do ln -s busybox b1/rootfs/bin/$a; done
    echo 'root:x:0:0:root:/root:/bin/sh' > b1/rootfs/etc/passwd
    echo 'root:x:0:' > b1/rootfs/etc/group
    echo first > b1/rootfs/data/replaced
    umoci repack --image img:v1 b1
    umoci unpack --image img:v1 b2
    echo second > b2/rootfs/data/replaced
    echo hello from the registry > b2/rootfs/data/hello
    umoci repack --image img:v1 b2
    umoci config --image img:v1 --config.env GREETING=from-the-registry --config.workingdir /data --config.cmd sleep --config.cmd 100000
    rm -rf b1 b2
    `,
    'sh',
    work,
  ]);
  return img;
}

/** Tags (as newTag) a multi-platform index in the layout whose entries all point at fromTag's manifest, one per platform. */
export function addIndex(layout: string, fromTag: string, newTag: string, platforms: { os: string; architecture: string }[]): void {
  const REF = 'org.opencontainers.image.ref.name';
  const top = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: Record<string, unknown>[] };
  const from = top.manifests.find((d) => (d.annotations as Record<string, string> | undefined)?.[REF] === fromTag);
  assert.ok(from, `no ${fromTag} in ${layout}`);
  const { annotations: _a, ...desc } = from;
  const index = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: platforms.map((platform) => ({ ...desc, platform })) }),
  );
  const hex = createHash('sha256').update(index).digest('hex');
  writeFileSync(join(layout, 'blobs', 'sha256', hex), index);
  top.manifests.push({ mediaType: 'application/vnd.oci.image.index.v1+json', digest: `sha256:${hex}`, size: index.length, annotations: { [REF]: newTag } });
  writeFileSync(join(layout, 'index.json'), JSON.stringify(top));
}
