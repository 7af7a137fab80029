// Test harness for envd: runs the built bundle (dist/envd, copied into a temporary directory with
// no node_modules around it) on a unix socket, as the host runs it, and forwards
// 127.0.0.1/::1:49983 (where the SDK's debug mode looks) to that socket, as the host's proxy
// does (envd's own TCP listener needs a token: see test/security/envd-users.test.ts). It has its
// own passwd/group files: the user `user` gets a uid and gid that are free
// on this host and a home inside the temporary directory, so nothing outside it is touched.
// stop() kills envd (which kills every process it started) and removes the directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox } from 'e2b';
import { ENVD_NODE_FLAGS } from '../../src/envd/host-contract.js';

export const ENVD_PORT = 49983;
export const BASE_URL = `http://127.0.0.1:${ENVD_PORT}`;

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const bundleDir = join(repoRoot, 'dist', 'envd');

export interface TestEnvd {
  dir: string;
  home: string;
  rootHome: string;
  socket: string;
  uid: number;
  gid: number;
  extraGid: number;
  extraGroup: string;
  pid: number;
  stderr(): string;
  stop(): Promise<void>;
}

function usedIds(file: string, field: number): Set<number> {
  const ids = new Set<number>();
  try {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const v = Number(line.split(':')[field]);
      if (Number.isInteger(v)) ids.add(v);
    }
  } catch {
    /* none */
  }
  return ids;
}

/** Two ids free as uid and gid on this host. */
function freeIds(): [number, number] {
  const used = new Set([...usedIds('/etc/passwd', 2), ...usedIds('/etc/passwd', 3), ...usedIds('/etc/group', 2)]);
  const out: number[] = [];
  for (let id = 61000 + (process.pid % 2000); out.length < 2; id++) if (!used.has(id)) out.push(id);
  return [out[0] as number, out[1] as number];
}

async function canBind(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/** GET path on the unix socket; resolves with the status (0 when unreachable). */
export function socketGet(socketPath: string, path: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request({ socketPath, path, method: 'GET' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
    req.end();
  });
}

/**
 * `entry`: how node starts envd from its directory (a copy of dist/envd): the CommonJS bundle by
 * default (what sandboxes run), e.g. ['envd.mjs'] for the ES-module entry. `nodeFlags`: Node's
 * flags, by default those sandboxes run envd with.
 */
export async function startTestEnvd(
  extraArgs: string[] = [],
  nodeFlags: readonly string[] = ENVD_NODE_FLAGS,
  entry: string[] = ['envd.cjs'],
  env: Record<string, string> = {},
): Promise<TestEnvd> {
  if (!existsSync(join(bundleDir, 'envd.cjs'))) throw new Error('dist/envd/envd.cjs is missing: run npm run build');
  if (!(await canBind('127.0.0.1', ENVD_PORT))) throw new Error(`port ${ENVD_PORT} on 127.0.0.1 is busy`);
  const hosts = ['127.0.0.1'];
  if (await canBind('::1', ENVD_PORT)) hosts.push('::1');

  const dir = mkdtempSync(join(tmpdir(), 'envd-test-'));
  chmodSync(dir, 0o755);
  const [uid, extraGid] = freeIds();
  const gid = uid;
  const home = join(dir, 'home', 'user');
  const rootHome = join(dir, 'root');
  mkdirSync(home, { recursive: true });
  mkdirSync(rootHome, { recursive: true, mode: 0o700 });
  chownSync(home, uid, gid);
  const extraGroup = `envdtest${extraGid}`;
  writeFileSync(join(dir, 'passwd'), `root:x:0:0:root:${rootHome}:/bin/bash\nuser:x:${uid}:${gid}:Sandbox user:${home}:/bin/bash\n`);
  writeFileSync(join(dir, 'group'), `root:x:0:\nuser:x:${gid}:\n${extraGroup}:x:${extraGid}:user\n`);
  const bin = join(dir, 'bin');
  cpSync(bundleDir, bin, { recursive: true });
  const socket = join(dir, 'envd.sock');

  const child: ChildProcess = spawn(
    process.execPath,
    [
      ...nodeFlags,
      ...entry.map((a) => (a.startsWith('-') ? a : join(bin, a))),
      '--socket',
      socket,
      '--passwd',
      join(dir, 'passwd'),
      '--group',
      join(dir, 'group'),
      '--state-dir',
      join(dir, 'state'),
      ...extraArgs,
    ],
    { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout?.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => child.once('exit', () => ((exited = true), resolve())));

  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  // Readiness: /health answers 204 on the socket.
  let ready = false;
  for (let i = 0; i < 400 && !exited; i++) {
    if ((await socketGet(socket, '/health')) === 204) {
      ready = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!ready) {
    if (!exited) {
      child.kill('SIGKILL');
      await exitPromise;
    }
    cleanup();
    throw new Error(`envd did not become ready: ${stderr}`);
  }

  // TCP on the SDK's debug address, forwarded to the socket.
  const forwarders: Server[] = [];
  for (const host of hosts) {
    const srv = createServer((c) => {
      const up = connect(socket);
      c.on('error', () => up.destroy());
      up.on('error', () => c.destroy());
      c.pipe(up);
      up.pipe(c);
    });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ host, port: ENVD_PORT, exclusive: true }, () => resolve());
    });
    forwarders.push(srv);
  }

  return {
    dir,
    home,
    rootHome,
    socket,
    uid,
    gid,
    extraGid,
    extraGroup,
    pid: child.pid as number,
    stderr: () => stderr,
    async stop() {
      for (const f of forwarders) {
        f.close();
      }
      if (!exited) {
        child.kill('SIGTERM');
        const t = setTimeout(() => {
          if (!exited) child.kill('SIGKILL');
        }, 5000);
        await exitPromise;
        clearTimeout(t);
      }
      cleanup();
    },
  };
}

/** The SDK in debug mode (envd at localhost:49983), optionally with an access token. */
export async function sdk(accessToken?: string): Promise<Sandbox> {
  if (!accessToken) return Sandbox.create({ debug: true });
  const Ctor = Sandbox as unknown as new (o: Record<string, unknown>) => Sandbox;
  return new Ctor({ sandboxId: 'debug_sandbox_id', envdVersion: '0.6.13', envdAccessToken: accessToken, debug: true });
}

/** POST /init over the unix socket (as the service would). */
export function initEnvd(socketPath: string, body: Record<string, unknown>): Promise<number> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = request(
      { socketPath, path: '/init', method: 'POST', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** Whether a process exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Poll a condition a bounded number of times (no assertion on elapsed time). */
export async function eventually(cond: () => boolean | Promise<boolean>, tries = 200, everyMs = 50): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return false;
}

// --- Raw Connect protocol helpers -------------------------------------------------------------

export function envelope(msg: unknown, flags = 0): Buffer {
  const json = Buffer.from(JSON.stringify(msg));
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(json.length, 1);
  return Buffer.concat([head, json]);
}

export interface Envelope {
  flags: number;
  json: Record<string, unknown>;
}

/** Reads envelopes from a streaming response body as they arrive. */
export async function* readEnvelopes(body: ReadableStream<Uint8Array>): AsyncGenerator<Envelope> {
  let buf = Buffer.alloc(0);
  const reader = body.getReader();
  try {
    while (true) {
      while (buf.length >= 5) {
        const len = buf.readUInt32BE(1);
        if (buf.length < 5 + len) break;
        const flags = buf.readUInt8(0);
        const json = JSON.parse(buf.subarray(5, 5 + len).toString('utf8')) as Record<string, unknown>;
        buf = buf.subarray(5 + len);
        yield { flags, json };
      }
      const { done, value } = await reader.read();
      if (done) {
        if (buf.length) throw new Error(`trailing ${buf.length} bytes in stream`);
        return;
      }
      buf = Buffer.concat([buf, Buffer.from(value)]);
    }
  } finally {
    reader.releaseLock();
  }
}

export function streamRequest(path: string, msg: unknown, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(`${BASE_URL}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/connect+json', 'Connect-Protocol-Version': '1', ...headers },
    body: new Uint8Array(envelope(msg)),
    signal,
  });
}

export function unaryRequest(path: string, msg: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${BASE_URL}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', ...headers },
    body: JSON.stringify(msg),
  });
}
