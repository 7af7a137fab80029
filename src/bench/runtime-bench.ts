import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { OciRuntime } from '../runtime/oci-runtime.js';
import { SandboxManager } from '../sandbox/manager.js';

export interface BenchRow {
  name: string;
  medianMs: number;
  baselineName?: string;
  baselineMs?: number;
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}

/**
 * Medians of the sandbox lifecycle through the manager, next to the same steps done by
 * the bare runtime binary on a plain bundle (no overlay, no user namespace, no ledger)
 * in the same run, so that the ratio shows what cubebox adds.
 */
export async function runtimeBench(iterations: number, log: (s: string) => void = () => undefined): Promise<BenchRow[]> {
  const dataDir = mkdtempSync('/var/tmp/cubebox-bench-');
  let m: SandboxManager | undefined;
  const t = { createBare: [] as number[], create: [] as number[], exec: [] as number[], pause: [] as number[], resume: [] as number[], delete: [] as number[] };
  const b = { run: [] as number[], exec: [] as number[], pause: [] as number[], resume: [] as number[], delete: [] as number[] };
  try {
    m = await SandboxManager.open({ dataDir, network: { warmSlots: 4 } });
    const tpl = await m.templates.addBusybox('busybox');

    // bare runtime baseline: same binary, same wrapper, the busybox layer as a plain rootfs
    const bare = new OciRuntime(m.runtime.name, join(m.paths.runRoot, 'bare'), m.cgroupMode);
    const bundle = join(dataDir, 'bare-bundle');
    mkdirSync(bundle);
    writeFileSync(
      join(bundle, 'config.json'),
      JSON.stringify({
        ociVersion: '1.0.2',
        process: { terminal: false, user: { uid: 0, gid: 0 }, args: ['/bin/sleep', '1000'], cwd: '/', env: ['PATH=/bin:/usr/bin'] },
        root: { path: tpl.layers[0], readonly: true },
        mounts: [{ destination: '/proc', type: 'proc', source: 'proc' }],
        linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'ipc' }, { type: 'uts' }, { type: 'network' }] },
      }),
    );
    const log0 = join(dataDir, 'bare.log');
    for (let i = 0; i < iterations; i++) {
      const cid = `cubebox-bench-${process.pid}-${i}`;
      b.run.push(await timed(() => bare.run(cid, bundle, log0)));
      b.exec.push(await timed(() => waitClose(bare.exec(cid, ['/bin/true'], { stdio: 'ignore' }))));
      b.pause.push(await timed(() => bare.pause(cid)));
      b.resume.push(await timed(() => bare.resume(cid)));
      b.delete.push(await timed(() => bare.forceDelete(cid)));

      let id = '';
      t.createBare.push(await timed(async () => (id = (await m!.create({ template: 'busybox', agent: false })).id)));
      await m.delete(id);
      t.create.push(await timed(async () => (id = (await m!.create({ template: 'busybox' })).id)));
      t.exec.push(await timed(async () => waitClose(await m!.exec(id, ['/bin/true'], { stdio: 'ignore' }))));
      t.pause.push(await timed(() => m!.pause(id)));
      t.resume.push(await timed(() => m!.resume(id)));
      t.delete.push(await timed(() => m!.delete(id)));
      log(`iteration ${i + 1}/${iterations}`);
    }
  } finally {
    if (m) {
      for (const s of m.list()) await m.delete(s.id).catch(() => undefined);
      const runRoot = m.paths.runRoot;
      await m.close();
      rmSync(runRoot, { recursive: true, force: true });
    }
    rmSync(dataDir, { recursive: true, force: true });
  }
  const rt = m?.runtime.name ?? 'crun';
  return [
    { name: 'sandbox create, no envd', medianMs: median(t.createBare), baselineName: `bare ${rt} run -d`, baselineMs: median(b.run) },
    { name: 'sandbox create', medianMs: median(t.create), baselineName: `bare ${rt} run -d`, baselineMs: median(b.run) },
    { name: 'sandbox exec true', medianMs: median(t.exec), baselineName: `bare ${rt} exec true`, baselineMs: median(b.exec) },
    { name: 'sandbox pause', medianMs: median(t.pause), baselineName: `bare ${rt} pause`, baselineMs: median(b.pause) },
    { name: 'sandbox resume', medianMs: median(t.resume), baselineName: `bare ${rt} resume`, baselineMs: median(b.resume) },
    { name: 'sandbox delete', medianMs: median(t.delete), baselineName: `bare ${rt} delete --force`, baselineMs: median(b.delete) },
  ];
}

function waitClose(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`exec exited ${code}`))));
  });
}

export function formatBench(rows: BenchRow[]): string {
  const lines = [`${'operation'.padEnd(28)} ${'median'.padStart(9)}   ${'baseline (same run)'.padEnd(26)} ${'median'.padStart(9)}   ratio`];
  for (const r of rows) {
    const ratio = r.baselineMs ? (r.medianMs / r.baselineMs).toFixed(2) + 'x' : '';
    lines.push(
      `${r.name.padEnd(28)} ${r.medianMs.toFixed(1).padStart(7)}ms   ${(r.baselineName ?? '').padEnd(26)} ${r.baselineMs !== undefined ? r.baselineMs.toFixed(1).padStart(7) + 'ms' : ''}   ${ratio}`,
    );
  }
  return lines.join('\n');
}
