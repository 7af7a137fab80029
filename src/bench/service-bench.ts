import { mkdtempSync, rmSync } from 'node:fs';
import { ApiKeys } from '../api/keys.js';
import { sqliteSharedStore } from '../store/shared-sqlite.js';
import type { RunningServer } from '../api/server.js';
import { SandboxManager } from '../sandbox/manager.js';
import type { BenchNode } from './harness.js';
import { anonPssKiB, isEnvd, LocalLogin, pssKiB } from './host.js';
import { median, timed, type BenchRow } from './report.js';

/**
 * Through the whole service with the published e2b SDK: Sandbox.create() (from the warm
 * pool and cold), commands.run('true'), envd's start-to-ready and idle memory inside a
 * sandbox; next to a local spawn of the same command in the same run.
 */
export async function serviceBench(
  node: BenchNode,
  iterations: number,
  log: (s: string) => void = () => undefined,
): Promise<{ rows: BenchRow[]; notes: string[] }> {
  const dataDir = mkdtempSync('/var/tmp/cubebox-bench-');
  const manager = await SandboxManager.open({ ...node.manager, dataDir, reaperIntervalMs: 250, deleteStopped: true, network: { warmSlots: 4 } });
  const notes: string[] = [];
  let server: RunningServer | undefined;
  try {
    log('preparing the base template');
    await manager.templates.addDebianBase('base', { cacheDir: node.cacheDir });
    await manager.templates.addBusybox('busybox');
    server = await node.serve(manager, { host: '127.0.0.1', port: 0 });
    const key = (await new ApiKeys(sqliteSharedStore(manager.store)).create('bench')).key;
    process.env.E2B_API_KEY = key;
    process.env.E2B_API_URL = server.url;
    process.env.E2B_SANDBOX_URL = server.url;
    delete process.env.E2B_DEBUG;
    const { Sandbox } = await import('e2b');

    const cold: number[] = [];
    for (let i = 0; i < iterations; i++) {
      const t = await timed(async () => (await Sandbox.create('base')).kill());
      cold.push(t);
      log(`cold create ${i + 1}/${iterations}`);
    }
    // create alone (kill outside the timing)
    const coldCreate: number[] = [];
    for (let i = 0; i < iterations; i++) {
      let s: Awaited<ReturnType<typeof Sandbox.create>> | undefined;
      coldCreate.push(await timed(async () => (s = await Sandbox.create('base'))));
      await s!.kill();
    }

    manager.setPool({ base: 1 });
    const warm: number[] = [];
    for (let i = 0; i < iterations; i++) {
      for (let w = 0; w < 600 && !manager.list().some((s) => s.state === 'pooled'); w++) await new Promise((r) => setTimeout(r, 50));
      let s: Awaited<ReturnType<typeof Sandbox.create>> | undefined;
      warm.push(await timed(async () => (s = await Sandbox.create('base'))));
      await s!.kill();
      log(`warm create ${i + 1}/${iterations}`);
    }
    manager.setPool({});
    for (const s of manager.list()) if (s.state === 'pooled') await manager.delete(s.id);

    const sbx = await Sandbox.create('base');
    await sbx.commands.run('true');
    const runTrue: number[] = [];
    for (let i = 0; i < iterations * 5; i++) runTrue.push(await timed(() => sbx.commands.run('true')));
    // the same command on the host, as a login shell with the sandbox user's dotfiles, and without a login shell
    const login = new LocalLogin(manager.templates.get('base').layers);
    const spawnTrue: number[] = [];
    const spawnPlain: number[] = [];
    try {
      for (let i = 0; i < iterations * 5; i++) {
        spawnTrue.push(await login.run(['-l', '-c']));
        spawnPlain.push(await login.run(['-c']));
      }
    } finally {
      login.close();
    }
    // envd's idle memory: the sandbox's process running envd
    await new Promise((r) => setTimeout(r, 2000));
    const envdPids = manager.cgroup(sbx.sandboxId).pids().filter(isEnvd);
    const sumMiB = (kib: (pid: number) => number) => (envdPids.reduce((n, p) => n + kib(p), 0) / 1024).toFixed(1);
    // the anonymous part is what each sandbox adds; the rest is node's pages, shared by every sandbox's envd
    if (envdPids.length)
      notes.push(
        `envd idle inside a sandbox after ${runTrue.length + 1} commands: PSS ${sumMiB(pssKiB)} MiB, of it anonymous ${sumMiB(anonPssKiB)} MiB (${envdPids.length} processes)`,
      );
    await sbx.kill();

    // envd's start-to-ready: a busybox sandbox with envd against one without
    const withAgent: number[] = [];
    const withoutAgent: number[] = [];
    for (let i = 0; i < iterations; i++) {
      let id = '';
      withAgent.push(await timed(async () => (id = (await manager.create({ template: 'busybox' })).id)));
      await manager.delete(id);
      withoutAgent.push(await timed(async () => (id = (await manager.create({ template: 'busybox', agent: false })).id)));
      await manager.delete(id);
    }
    notes.push(`envd start-to-ready inside a sandbox (create with envd minus create without): ${(median(withAgent) - median(withoutAgent)).toFixed(1)} ms`);

    return {
      rows: [
        { name: 'Sandbox.create() cold', medianMs: median(coldCreate) },
        { name: 'Sandbox.create()+kill cold', medianMs: median(cold) },
        { name: 'Sandbox.create() warm pool', medianMs: median(warm) },
        { name: "commands.run('true')", medianMs: median(runTrue), baselineName: 'local bash -l -c true', baselineMs: median(spawnTrue) },
        { name: "commands.run('true')", medianMs: median(runTrue), baselineName: 'local bash -c true', baselineMs: median(spawnPlain) },
      ],
      notes,
    };
  } finally {
    for (const s of manager.list()) await manager.delete(s.id).catch(() => undefined);
    await server?.close();
    const runRoot = manager.paths.runRoot;
    await manager.close();
    rmSync(runRoot, { recursive: true, force: true });
    rmSync(dataDir, { recursive: true, force: true });
  }
}
