// A standalone envd for the proxy tests: the built bundle on a unix socket only (--port 0), with
// its own passwd/group files (the user `user` gets a uid free on this host and a home inside a
// temporary directory). stop() ends that envd (which kills what it started) and removes the
// directory. Nothing else is touched.
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROJECT_ROOT } from '../../src/config.js';

export const ENVD_BUNDLE = join(PROJECT_ROOT, 'dist', 'envd', 'envd.mjs');

export interface SocketEnvd {
  dir: string;
  home: string;
  socket: string;
  uid: number;
  pid: number;
  stderr(): string;
  stop(): Promise<void>;
}

function usedIds(file: string, fields: number[]): Set<number> {
  const ids = new Set<number>();
  try {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      for (const f of fields) {
        const v = Number(line.split(':')[f]);
        if (Number.isInteger(v)) ids.add(v);
      }
    }
  } catch {
    /* none */
  }
  return ids;
}

let nextOffset = 0;
function freeId(): number {
  const used = new Set([...usedIds('/etc/passwd', [2, 3]), ...usedIds('/etc/group', [2])]);
  for (let id = 63000 + ((process.pid * 7 + nextOffset++ * 13) % 2000); ; id++) if (!used.has(id)) return id;
}

/** Sends one request on the unix socket; resolves with status and body. */
export function socketRequest(
  socketPath: string,
  path: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<{ status: number; body: Buffer; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

// Safety net: if the test process ends without its after() hooks (a runner timeout sends
// SIGTERM), the envd processes it started must not outlive it.
const live = new Map<number, { kill(signal: NodeJS.Signals): boolean; dir: string }>();
const dirs = new Set<string>();
let netInstalled = false;

/** Removes a temporary directory of the test when the process ends, however it ends. */
export function removeOnExit(dir: string): void {
  installSafetyNet();
  dirs.add(dir);
}

function installSafetyNet(): void {
  if (netInstalled) return;
  netInstalled = true;
  const reap = () => {
    for (const [, c] of live) {
      c.kill('SIGKILL');
      rmSync(c.dir, { recursive: true, force: true });
    }
    live.clear();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    dirs.clear();
  };
  process.once('exit', reap);
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      reap();
      process.exit(128 + (sig === 'SIGTERM' ? 15 : 2));
    });
  }
}

export async function startSocketEnvd(init?: Record<string, unknown>): Promise<SocketEnvd> {
  if (!existsSync(ENVD_BUNDLE)) throw new Error(`${ENVD_BUNDLE} is missing: run npm run build`);
  const dir = mkdtempSync(join(tmpdir(), 'proxy-envd-'));
  chmodSync(dir, 0o755);
  const uid = freeId();
  const home = join(dir, 'home', 'user');
  const rootHome = join(dir, 'root');
  mkdirSync(home, { recursive: true });
  mkdirSync(rootHome, { recursive: true, mode: 0o700 });
  chownSync(home, uid, uid);
  writeFileSync(join(dir, 'passwd'), `root:x:0:0:root:${rootHome}:/bin/bash\nuser:x:${uid}:${uid}:Sandbox user:${home}:/bin/bash\n`);
  writeFileSync(join(dir, 'group'), `root:x:0:\nuser:x:${uid}:\n`);
  const socket = join(dir, 'envd.sock');
  const child = spawn(
    process.execPath,
    [ENVD_BUNDLE, '--socket', socket, '--port', '0', '--state-dir', '', '--passwd', join(dir, 'passwd'), '--group', join(dir, 'group')],
    { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  installSafetyNet();
  live.set(child.pid as number, { kill: (sig) => child.kill(sig), dir });
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => ((exited = true), live.delete(child.pid as number), resolve())));
  const kill = async () => {
    if (!exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => !exited && child.kill('SIGKILL'), 5000);
      await exit;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  };

  let ready = false;
  for (let i = 0; i < 400 && !exited && !ready; i++) {
    ready = await socketRequest(socket, '/health').then(
      (r) => r.status === 204,
      () => false,
    );
    if (!ready) await new Promise((r) => setTimeout(r, 25));
  }
  if (!ready) {
    await kill();
    throw new Error(`envd did not become ready: ${stderr}`);
  }
  if (init) {
    const body = JSON.stringify(init);
    const r = await socketRequest(socket, '/init', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
    if (r.status !== 204) {
      await kill();
      throw new Error(`envd /init answered ${r.status}: ${r.body.toString()}`);
    }
  }
  return { dir, home, socket, uid, pid: child.pid as number, stderr: () => stderr, stop: kill };
}
