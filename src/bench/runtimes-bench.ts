import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ApiKeys } from '../api/keys.js';
import { sqliteSharedStore } from '../store/shared-sqlite.js';
import type { RunningServer } from '../api/server.js';
import type { RuntimeName } from '../runtime/registry.js';
import { SandboxManager } from '../sandbox/manager.js';
import { RUNTIME_METADATA_KEY } from '../sandbox/types.js';
import type { BenchNode } from './harness.js';
import { pssKiB } from './host.js';
import { emptyPart, figure, median, sleep, timed, type Figure, type PartReport, type Unit } from './report.js';

/**
 * The runtimes side by side through the whole service with the published e2b SDK, on one node
 * (each sandbox names its runtime in its metadata): commands.run('true'), a pause with memory
 * (a freeze, or to disk where the runtime checkpoints) and its resume, a snapshot and a create
 * from it (with its memory where the runtime checkpoints: a fork), and what a paused sandbox
 * holds of the host's RAM. Every figure stands next to the first runtime's in the same run.
 */

interface Sample {
  run: number[];
  create: number[];
  pause: number[];
  resume: number[];
  snapshot: number[];
  fromSnapshot: number[];
  pausedKiB: number[];
  imageKiB: number[];
}

const FIGURES: Array<{ key: keyof Sample; id: string; name: string; unit: Unit }> = [
  { key: 'run', id: 'commands-run-true', name: "commands.run('true')", unit: 'ms' },
  { key: 'create', id: 'create', name: 'Sandbox.create()', unit: 'ms' },
  { key: 'pause', id: 'pause', name: 'pause (with memory)', unit: 'ms' },
  { key: 'resume', id: 'resume', name: 'resume (connect)', unit: 'ms' },
  { key: 'snapshot', id: 'snapshot', name: 'createSnapshot()', unit: 'ms' },
  { key: 'fromSnapshot', id: 'create-from-snapshot', name: 'Sandbox.create(snapshot)', unit: 'ms' },
  { key: 'pausedKiB', id: 'paused-host-ram', name: 'host RAM of a paused sandbox (PSS)', unit: 'KiB' },
  { key: 'imageKiB', id: 'paused-disk', name: 'disk of its memory while paused', unit: 'KiB' },
];

export async function runtimesBench(
  node: BenchNode,
  runtimes: RuntimeName[],
  iterations: number,
  log: (s: string) => void = () => undefined,
): Promise<PartReport> {
  const dataDir = mkdtempSync('/var/tmp/cubebox-bench-');
  const manager = await SandboxManager.open({ ...node.manager, dataDir, reaperIntervalMs: 250, deleteStopped: true, network: { warmSlots: 4 } });
  let server: RunningServer | undefined;
  const report = emptyPart();
  try {
    log('preparing the base template');
    await manager.templates.addDebianBase('base', { cacheDir: node.cacheDir });
    server = await node.serve(manager, { host: '127.0.0.1', port: 0 });
    process.env.E2B_API_KEY = (await new ApiKeys(sqliteSharedStore(manager.store)).create('bench')).key;
    process.env.E2B_API_URL = server.url;
    process.env.E2B_SANDBOX_URL = server.url;
    delete process.env.E2B_DEBUG;
    const { Sandbox } = await import('e2b');
    const samples = new Map<RuntimeName, Sample>();
    for (const runtime of runtimes) {
      const s: Sample = { run: [], create: [], pause: [], resume: [], snapshot: [], fromSnapshot: [], pausedKiB: [], imageKiB: [] };
      samples.set(runtime, s);
      const opts = { metadata: { [RUNTIME_METADATA_KEY]: runtime } };
      let sbx!: Awaited<ReturnType<typeof Sandbox.create>>;
      for (let i = 0; i < iterations; i++) {
        s.create.push(await timed(async () => (sbx = await Sandbox.create('base', opts))));
        if (i < iterations - 1) await sbx.kill();
      }
      await sbx.commands.run('true');
      for (let i = 0; i < iterations * 5; i++) s.run.push(await timed(() => sbx.commands.run('true')));
      log(`${runtime}: pause and resume`);
      for (let i = 0; i < iterations; i++) {
        await sleep(500); // an idle sandbox, not one still settling from its last resume
        s.pause.push(await timed(() => sbx.pause()));
        // what it holds once paused a while (a runtime's processes may take a moment to be reaped)
        await sleep(3000);
        s.pausedKiB.push(
          manager
            .cgroup(sbx.sandboxId)
            .pids()
            .reduce((n, p) => n + pssKiB(p), 0),
        );
        s.imageKiB.push(dirKiB(join(manager.sandboxDir(sbx.sandboxId), 'checkpoint')));
        s.resume.push(await timed(() => sbx.connect()));
      }
      log(`${runtime}: snapshots`);
      for (let i = 0; i < Math.min(iterations, 3); i++) {
        let snap!: Awaited<ReturnType<typeof sbx.createSnapshot>>;
        s.snapshot.push(await timed(async () => (snap = await sbx.createSnapshot())));
        for (let j = 0; j < Math.max(1, Math.floor(iterations / 3)); j++) {
          let child!: typeof sbx;
          s.fromSnapshot.push(await timed(async () => (child = await Sandbox.create(snap.snapshotId))));
          await child.kill();
        }
        await Sandbox.deleteSnapshot(snap.snapshotId);
      }
      await sbx.kill();
    }
    const first = runtimes[0]!;
    for (const runtime of runtimes) {
      const s = samples.get(runtime)!;
      for (const f of FIGURES) {
        const base = runtime === first ? undefined : { name: first, value: median(samples.get(first)![f.key]) };
        const fig: Figure = figure(`runtimes.${runtime}.${f.id}`, `${runtime}: ${f.name}`, 'median', median(s[f.key]), f.unit, base);
        report.figures.push(fig);
      }
    }
    report.notes.push(
      'pause with memory: a freeze where the runtime cannot checkpoint (its memory stays in RAM), to disk where it can (gVisor); ' +
        'a snapshot keeps memory only where the runtime checkpoints (else files only: a create from it boots)',
    );
    return report;
  } finally {
    for (const s of manager.list()) await manager.delete(s.id).catch(() => undefined);
    await server?.close();
    const runRoot = manager.paths.runRoot;
    await manager.close();
    rmSync(runRoot, { recursive: true, force: true });
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** The size of the files in a directory, KiB (0 when it does not exist). */
function dirKiB(dir: string): number {
  try {
    return readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).blocks / 2, 0);
  } catch {
    return 0;
  }
}
