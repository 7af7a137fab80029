import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { promisify } from 'node:util';
import type { RunningServer } from '../api/server.js';
import { SandboxManager } from '../sandbox/manager.js';
import { egressBench } from './egress-bench.js';
import type { BenchNode } from './harness.js';
import { median, timed, type BenchRow } from './report.js';

const execFileP = promisify(execFile);

/**
 * Downloads a URL to nowhere with curl, in its own process like any client (a download in this
 * process would share the proxy's thread and halve what it measures); the time it took, ms.
 */
async function download(url: string, headers: Record<string, string> = {}): Promise<number> {
  const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  const { stdout } = await execFileP('curl', ['-sS', '--fail', '--max-time', '120', ...h, '-o', '/dev/null', '-w', '%{time_total}', url]);
  return Number(stdout) * 1000;
}

async function run(m: SandboxManager, id: string, script: string): Promise<void> {
  const p = await m.exec(id, ['/bin/sh', '-c', script], { stdio: 'ignore' });
  await new Promise<void>((resolve, reject) => p.on('close', (c) => (c === 0 ? resolve() : reject(new Error(`'${script}' exited ${c}`)))));
}

/**
 * Networking's cost: an agent-less create with a network slot against one without (two
 * managers in the same run), and a sandbox port through the data-plane proxy against a
 * direct connection from the host to the same server (throughput of a large file, latency
 * of a small one); and HTTPS through the egress proxy against the same GET direct (egress-bench.ts).
 */
export async function networkBench(
  node: BenchNode,
  iterations: number,
  log: (s: string) => void = () => undefined,
): Promise<{ rows: BenchRow[]; notes: string[] }> {
  const dirs = [mkdtempSync('/var/tmp/cubebox-bench-'), mkdtempSync('/var/tmp/cubebox-bench-')];
  const withNet = await SandboxManager.open({ ...node.manager, dataDir: dirs[0]!, network: { ...node.manager.network, warmSlots: 4 } });
  const noNet = await SandboxManager.open({ ...node.manager, dataDir: dirs[1]!, network: false });
  let server: RunningServer | undefined;
  try {
    await withNet.templates.addBusybox('busybox');
    await noNet.templates.addBusybox('busybox');
    const on: number[] = [];
    const off: number[] = [];
    for (let i = 0; i < iterations; i++) {
      let id = '';
      on.push(await timed(async () => (id = (await withNet.create({ template: 'busybox', agent: false })).id)));
      await withNet.delete(id);
      off.push(await timed(async () => (id = (await noNet.create({ template: 'busybox', agent: false })).id)));
      await noNet.delete(id);
      log(`create with and without network ${i + 1}/${iterations}`);
    }

    const sbx = await withNet.create({ template: 'busybox', agent: false });
    await run(withNet, sbx.id, 'dd if=/dev/zero of=/tmp/blob bs=1M count=64 2>/dev/null && echo small > /tmp/small && busybox httpd -p 8000 -h /tmp');
    const address = withNet.get(sbx.id).address!;
    server = await node.serve(withNet, { host: '127.0.0.1', port: 0 });
    const via = { 'E2b-Sandbox-Id': sbx.id, 'E2b-Sandbox-Port': '8000' };
    for (let i = 0; i < 50 && !(await download(`http://${address}:8000/small`).catch(() => 0)); i++) await new Promise((r) => setTimeout(r, 100));
    const mbps = (ms: number) => (64 / (ms / 1000)).toFixed(0);
    const direct: number[] = [];
    const proxied: number[] = [];
    for (let i = 0; i < Math.max(3, Math.min(iterations, 10)); i++) {
      direct.push(await download(`http://${address}:8000/blob`));
      proxied.push(await download(`${server!.url}/blob`, via));
      log(`64 MiB download ${i + 1}`);
    }
    const smallDirect: number[] = [];
    const smallProxied: number[] = [];
    for (let i = 0; i < iterations * 5; i++) {
      smallDirect.push(await download(`http://${address}:8000/small`));
      smallProxied.push(await download(`${server!.url}/small`, via));
    }
    const egress = await egressBench(iterations, log);
    return {
      rows: [
        { name: 'create, no envd, with network', medianMs: median(on), baselineName: 'the same without network', baselineMs: median(off) },
        { name: 'GET 64 MiB through the proxy', medianMs: median(proxied), baselineName: 'direct to the sandbox address', baselineMs: median(direct) },
        { name: 'GET small through the proxy', medianMs: median(smallProxied), baselineName: 'direct to the sandbox address', baselineMs: median(smallDirect) },
        ...egress.rows,
      ],
      notes: [
        `port throughput: ${mbps(median(proxied))} MiB/s through the proxy, ${mbps(median(direct))} MiB/s direct (64 MiB, busybox httpd in the sandbox)`,
        ...egress.notes,
      ],
    };
  } finally {
    await server?.close();
    for (const m of [withNet, noNet]) {
      for (const s of m.list()) await m.delete(s.id).catch(() => undefined);
      const runRoot = m.paths.runRoot;
      await m.close();
      rmSync(runRoot, { recursive: true, force: true });
    }
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}
