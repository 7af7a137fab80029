// envd benchmark (run by hand, not part of the test suite):
//   npm run build && node dist/test/envd/bench.js [--runs N] [--node-flags "<flags>"]
// Prints envd's start-to-ready time (median of several starts, readiness = GET /health 204 on the
// unix socket), its idle memory (PSS from /proc/<pid>/smaps_rollup, fresh and after load), and
// the median round trip of the SDK's commands.run('true') next to a local child_process.spawn
// of the same `/bin/bash -l -c true`, measured in the same run.
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ENVD_ENV } from '../../src/envd/host-contract.js';
import { bundleDir, sdk, socketGet, startTestEnvd, type TestEnvd } from './helpers.js';

const args = process.argv.slice(2);
const opt = (name: string, def: string) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? (args[i + 1] as string) : def;
};
const runs = Number(opt('--runs', '30'));
const nodeFlags = opt('--node-flags', '').split(' ').filter(Boolean);

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const sleep = (n: number) => new Promise((r) => setTimeout(r, n));

function pssKiB(pid: number, field = 'Pss'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return Number(m?.[1] ?? NaN);
}
function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? NaN);
}

async function startToReady(dir: string, n: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const sock = join(dir, `bench-${i}.sock`);
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, [...nodeFlags, join(bundleDir, 'envd.cjs'), '--port', '0', '--socket', sock, '--state-dir', ''], {
      stdio: 'ignore',
      env: { ...process.env, ...ENVD_ENV },
    });
    while ((await socketGet(sock, '/health')) !== 204) await sleep(2);
    times.push(ms(t0));
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  return times;
}

/** The same command as envd runs it: same user, home and environment, own session. */
async function localSpawn(envd: TestEnvd): Promise<number> {
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: envd.home, USER: 'user', LOGNAME: 'user' };
  const t0 = process.hrtime.bigint();
  await new Promise<void>((resolve, reject) => {
    const c = spawn('/bin/bash', ['-l', '-c', 'true'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: envd.home,
      env,
      uid: envd.uid,
      gid: envd.gid,
      detached: true,
    });
    c.stdout.resume();
    c.stderr.resume();
    c.once('error', reject);
    c.once('close', () => resolve());
  });
  return ms(t0);
}

async function main(): Promise<void> {
  const envd = await startTestEnvd([], nodeFlags, undefined, { ...ENVD_ENV });
  const tmp = join(envd.dir, 'bench');
  try {
    const { mkdirSync } = await import('node:fs');
    mkdirSync(tmp);
    const ready = await startToReady(tmp, 7);

    await sleep(1000);
    const freshPss = pssKiB(envd.pid);
    const freshAnon = pssKiB(envd.pid, 'Pss_Anon');
    const freshRss = rssKiB(envd.pid);

    const sbx = await sdk();
    for (let i = 0; i < 5; i++) await sbx.commands.run('true');
    const viaEnvd: number[] = [];
    const local: number[] = [];
    for (let i = 0; i < runs; i++) {
      let t0 = process.hrtime.bigint();
      await sbx.commands.run('true');
      viaEnvd.push(ms(t0));
      t0 = process.hrtime.bigint();
      local.push(await localSpawn(envd));
    }
    // Small file operations as `user` (each one round trip through the SDK and envd).
    const fileOps: Record<string, number[]> = { 'files.write 1 KiB': [], 'files.read 1 KiB': [], 'files.list': [], 'files.getInfo': [] };
    const small = 'y'.repeat(1024);
    for (let i = 0; i < runs; i++) {
      let t0 = process.hrtime.bigint();
      await sbx.files.write(`small-${i % 5}.txt`, small);
      fileOps['files.write 1 KiB']?.push(ms(t0));
      t0 = process.hrtime.bigint();
      await sbx.files.read(`small-${i % 5}.txt`);
      fileOps['files.read 1 KiB']?.push(ms(t0));
      t0 = process.hrtime.bigint();
      await sbx.files.list('.');
      fileOps['files.list']?.push(ms(t0));
      t0 = process.hrtime.bigint();
      await sbx.files.getInfo(`small-${i % 5}.txt`);
      fileOps['files.getInfo']?.push(ms(t0));
    }
    // Some file and PTY work, then idle again.
    for (let i = 0; i < 20; i++) await sbx.files.write(`bench-${i}.txt`, 'x'.repeat(100_000));
    for (let i = 0; i < 20; i++) await sbx.files.read(`bench-${i}.txt`);
    await sleep(2000);
    const loadedPss = pssKiB(envd.pid);

    const f = (x: number) => x.toFixed(2);
    console.log(`node ${process.version}${nodeFlags.length ? ' ' + nodeFlags.join(' ') : ''}, ${runs} runs`);
    console.log(`envd start-to-ready (median of ${ready.length}): ${f(median(ready))} ms  [min ${f(Math.min(...ready))}, max ${f(Math.max(...ready))}]`);
    console.log(
      `envd idle memory: PSS ${(freshPss / 1024).toFixed(1)} MiB (anonymous ${(freshAnon / 1024).toFixed(1)} MiB, RSS ${(freshRss / 1024).toFixed(1)} MiB); after load PSS ${(loadedPss / 1024).toFixed(1)} MiB`,
    );
    console.log(`commands.run('true') via SDK+envd, median: ${f(median(viaEnvd))} ms`);
    console.log(`child_process.spawn('/bin/bash -l -c true') locally, median: ${f(median(local))} ms`);
    console.log(`overhead of envd + SDK, median: ${f(median(viaEnvd) - median(local))} ms`);
    for (const [k, v] of Object.entries(fileOps)) console.log(`${k} via SDK+envd, median: ${f(median(v))} ms`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
    await envd.stop();
  }
}

void main();
