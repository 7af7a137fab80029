import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { capabilitiesOf, DEFAULT_RUNTIME } from '../runtime/registry.js';
import { SandboxManager } from '../sandbox/manager.js';
import type { BenchNode } from './harness.js';
import { BareRuntime } from './bare.js';
import { median, timed, type BenchRow } from './report.js';

/**
 * Medians of the sandbox lifecycle through the manager, next to the same steps done by
 * the bare runtime binary on a plain bundle (no overlay, no user namespace, no ledger)
 * in the same run, so that the ratio shows what cubebox adds.
 */
export async function runtimeBench(node: BenchNode, iterations: number, log: (s: string) => void = () => undefined): Promise<BenchRow[]> {
  const dataDir = mkdtempSync('/var/tmp/cubebox-bench-');
  let m: SandboxManager | undefined;
  let bare: BareRuntime | undefined;
  let toDisk = false;
  const t = { createBare: [] as number[], create: [] as number[], exec: [] as number[], pause: [] as number[], resume: [] as number[], delete: [] as number[] };
  const b = { run: [] as number[], exec: [] as number[], pause: [] as number[], resume: [] as number[], delete: [] as number[] };
  try {
    m = await SandboxManager.open({ ...node.manager, dataDir, network: { ...node.manager.network, warmSlots: 4 } });
    const tpl = await m.templates.addBusybox('busybox');
    // a runtime that checkpoints by itself pauses to disk (see sandbox/checkpoint.ts)
    toDisk = capabilitiesOf(m.runtime.name).checkpoint === 'builtin';

    // bare runtime baseline: same binary, same wrapper, the busybox layer as a plain rootfs
    const br = (bare = new BareRuntime(m, dataDir, tpl.layers[0]!, node.manager.runtimeBinaries?.[m.runtime.name]));
    for (let i = 0; i < iterations; i++) {
      const c = br.prepare();
      const cid = c.id;
      b.run.push(await timed(() => br.run(c)));
      b.exec.push(await timed(() => waitClose(br.runtime.exec(cid, ['/bin/true'], { stdio: 'ignore' }))));
      if (toDisk) {
        // what a pause to disk is made of, bare: checkpoint and delete, then restore
        const image = join(c.bundle, 'checkpoint');
        mkdirSync(image);
        b.pause.push(await timed(async () => (await br.runtime.checkpoint(cid, image), await br.runtime.forceDelete(cid))));
        b.resume.push(await timed(() => br.runtime.restore(cid, c.bundle, image, c.log)));
      } else {
        b.pause.push(await timed(() => br.runtime.pause(cid)));
        b.resume.push(await timed(() => br.runtime.resume(cid)));
      }
      b.delete.push(await timed(() => br.delete(cid)));

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
    await bare?.deleteAll();
    if (m) {
      for (const s of m.list()) await m.delete(s.id).catch(() => undefined);
      const runRoot = m.paths.runRoot;
      await m.close();
      rmSync(runRoot, { recursive: true, force: true });
    }
    rmSync(dataDir, { recursive: true, force: true });
  }
  const rt = m?.runtime.name ?? DEFAULT_RUNTIME;
  return [
    { name: 'sandbox create, no envd', medianMs: median(t.createBare), baselineName: `bare ${rt} run -d`, baselineMs: median(b.run) },
    { name: 'sandbox create', medianMs: median(t.create), baselineName: `bare ${rt} run -d`, baselineMs: median(b.run) },
    { name: 'sandbox exec true', medianMs: median(t.exec), baselineName: `bare ${rt} exec true`, baselineMs: median(b.exec) },
    {
      name: toDisk ? 'sandbox pause (to disk)' : 'sandbox pause',
      medianMs: median(t.pause),
      baselineName: toDisk ? `bare ${rt} checkpoint + delete` : `bare ${rt} pause`,
      baselineMs: median(b.pause),
    },
    {
      name: toDisk ? 'sandbox resume (from disk)' : 'sandbox resume',
      medianMs: median(t.resume),
      baselineName: toDisk ? `bare ${rt} restore` : `bare ${rt} resume`,
      baselineMs: median(b.resume),
    },
    { name: 'sandbox delete', medianMs: median(t.delete), baselineName: `bare ${rt} delete --force`, baselineMs: median(b.delete) },
  ];
}

function waitClose(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`exec exited ${code}`))));
  });
}
