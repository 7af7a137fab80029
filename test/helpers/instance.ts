import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import pino from 'pino';
import { hostConfig, managerOptions } from '../../src/app/config.js';
import { PROJECT_ROOT } from '../../src/config.js';
import { formatLeaks, LeakChecker } from '../../src/sandbox/leaks.js';
import { SandboxManager, type ManagerOptions } from '../../src/sandbox/manager.js';
import { Store } from '../../src/store/store.js';
import { openPaths, type Paths } from '../../src/config.js';

export const CLI = join(PROJECT_ROOT, 'dist', 'src', 'cli', 'main.js');

/** A fresh data directory (its own instance id) under /var/tmp, removed by destroy(). */
export function newDataDir(): string {
  return mkdtempSync('/var/tmp/cubebox-test-');
}

/**
 * The manager of a data directory, configured as the CLI's would be from this process's
 * environment (CUBEBOX_RUNTIME, CUBEBOX_NETWORK, ...), then the given options.
 */
export async function openManager(dataDir: string, opts: Partial<ManagerOptions> = {}): Promise<SandboxManager> {
  const config = hostConfig({ dataDir });
  return SandboxManager.open({ ...managerOptions(config), logger: pino({ level: config.logLevel ?? 'warn' }, pino.destination(2)), ...opts });
}

/** A manager on a new data directory with a busybox template named `busybox`. */
export async function newInstance(opts: Partial<ManagerOptions> = {}): Promise<SandboxManager> {
  const m = await openManager(newDataDir(), opts);
  await m.templates.addBusybox('busybox');
  return m;
}

/** Asserts that nothing of the sandbox remains on the host or in the store. */
export function assertNoSandboxLeaks(paths: Paths, id: string): void {
  const store = new Store(paths.db);
  try {
    const leaks = new LeakChecker(paths, store).sandbox(id);
    assert.equal(leaks.length, 0, `leaks of sandbox ${id}:\n${formatLeaks(leaks)}`);
  } finally {
    store.close();
  }
}

export function instanceLeaks(paths: Paths) {
  const store = new Store(paths.db);
  try {
    return new LeakChecker(paths, store).instance();
  } finally {
    store.close();
  }
}

/**
 * Deletes every sandbox of the instance, closes its manager, asserts that the instance
 * left nothing on the host, and removes its data directory and runtime state root.
 */
export async function destroyInstance(m: SandboxManager | undefined, dataDir?: string): Promise<void> {
  let paths: Paths;
  if (m) {
    paths = m.paths;
    m.setPool({}); // stop refilling before deleting what is there
    for (const s of m.list()) await m.delete(s.id).catch((e: Error) => assert.match(e.message, /not found/));
    await m.close();
  } else {
    paths = openPaths(dataDir!, false);
    const again = await openManager(dataDir!);
    for (const s of again.list()) await again.delete(s.id);
    await again.close();
  }
  const leaks = instanceLeaks(paths);
  assert.equal(leaks.length, 0, `instance ${paths.instanceId} leaked:\n${formatLeaks(leaks)}`);
  rmSync(paths.runRoot, { recursive: true, force: true });
  rmSync(paths.dataDir, { recursive: true, force: true });
  try {
    rmdirSync(dirname(paths.runRoot)); // /run/cubebox, once no instance uses it
  } catch {
    /* other instances remain */
  }
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function cli(dataDir: string, args: string[], env: NodeJS.ProcessEnv = {}, input?: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, ...args], {
      env: { ...process.env, ...env },
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    if (input !== undefined) child.stdin!.end(input);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Starts `cubebox serve` on a data directory and waits until its control socket answers. */
export async function startServe(dataDir: string, env: NodeJS.ProcessEnv = {}): Promise<ChildProcess> {
  // the manager alone: no base build, no warm pool, an ephemeral port
  const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--no-base', '--port', '0'], {
    env: { ...process.env, CUBEBOX_LOG_LEVEL: 'warn', CUBEBOX_POOL: '', ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const { RemoteApi } = await import('../../src/api/control-client.js');
  const socket = join(dataDir, 'manager.sock');
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`cubebox serve exited with ${child.exitCode}`);
    if (await RemoteApi.reachable(socket)) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error('cubebox serve did not become ready');
}

export function waitExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((r) => child.once('exit', () => r()));
}

/** Collects a command's output and exit code from a sandbox. */
export async function execIn(m: SandboxManager, id: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = await m.exec(id, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number>((resolve) => child.on('close', (c, s) => resolve(c ?? (s ? 128 + 9 : -1))));
  return { code, stdout, stderr };
}
