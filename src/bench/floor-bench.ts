// The Node-per-sandbox floor: what a sandbox's own agent costs, and what the three ways to lower
// it would save, each measured in the same run on bare containers of the node's runtime (no
// overlay, network or service, so the agent's own cost is what differs):
// - today's envd (Node, through the support tree's loader) started as a container's process,
//   until it answers /health on its socket: wall time, the CPU it used, its memory; then its
//   memory and a command's latency after it has run commands. Memory is the anonymous part of
//   the PSS: the binaries' pages are shared by every sandbox on the host;
// - a static init (native/floor-probe.c `init`): what a create would cost if envd started only
//   on first use, and what an idle sandbox would hold;
// - a fork server (`spawner`): a command run by a tiny process instead of forked from Node;
// - the shared host-side envd's in-sandbox part is the static init's size: its host part is one
//   envd for many sandboxes (not measured here).
import http from 'node:http';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { PROJECT_ROOT } from '../config.js';
import { ENVD_ENV, ENVD_NODE_FLAGS } from '../envd/host-contract.js';
import { healthy } from '../sandbox/envd-client.js';
import { connectGuarded, type GuardedSocket } from '../util/safe-socket.js';
import type { BareRuntime } from './bare.js';
import type { BenchService } from './harness.js';
import { anonPssKiB } from './host.js';
import { emptyPart, figure, median, now, sleep, type PartReport } from './report.js';

const PROBE = join(PROJECT_ROOT, 'dist', 'native', 'floor-probe');
/** Where a container sees the probe, the support tree and its socket directory (under a tmpfs /run: nothing is made in the shared root). */
const IN = { probe: '/run/floor', support: '/run/support', sock: '/run/sock' };
const READY_TIMEOUT_MS = 30_000;
/** Commands run through each agent before its memory is read "after use", and timed. */
const COMMANDS = 50;
const CLK_TCK = 100;

/** envd as sandboxes run it; envd-full: without V8's lite mode (its optimizing compilers on), to show what lite mode saves. */
type Variant = 'envd' | 'envd-full' | 'init' | 'spawner';

function argsOf(v: Variant): string[] {
  if (v === 'envd' || v === 'envd-full')
    return [
      `${IN.support}/lib/ld.so`,
      '--library-path',
      `${IN.support}/lib`,
      `${IN.support}/bin/node`,
      ...(v === 'envd' ? ENVD_NODE_FLAGS : ENVD_NODE_FLAGS.filter((f) => f !== '--lite-mode' && f !== '--no-expose-wasm')),
      `${IN.support}/envd/envd.cjs`,
      '--socket',
      `${IN.sock}/agent.sock`,
    ];
  return [`${IN.probe}/floor-probe`, v, `${IN.sock}/agent.sock`];
}

/** CPU time (user + system) a process has used so far, ms; NaN when it is gone. */
function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** Waits until check() says the agent answers, polling every 2 ms. */
async function untilReady(what: string, check: () => Promise<boolean>): Promise<void> {
  const until = Date.now() + READY_TIMEOUT_MS;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`${what} did not answer in ${READY_TIMEOUT_MS / 1000} s`);
    await sleep(2);
  }
}

/** Whether a connection to the socket is accepted. */
function accepts(socket: GuardedSocket): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connectGuarded(socket);
    probe.once('connect', () => (probe.destroy(), resolve(true))).once('error', () => resolve(false));
  });
}

/** One `/bin/true` through envd's process API (Connect, JSON), as root; resolves when the stream ends. */
function envdRunTrue(socket: GuardedSocket): Promise<void> {
  const msg = Buffer.from(JSON.stringify({ process: { cmd: '/bin/true', args: [] } }));
  const frame = Buffer.alloc(5 + msg.length);
  frame.writeUInt32BE(msg.length, 1);
  msg.copy(frame, 5);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        createConnection: () => connectGuarded(socket),
        method: 'POST',
        path: '/process.Process/Start',
        timeout: 10_000,
        headers: {
          'content-type': 'application/connect+json',
          'connect-protocol-version': '1',
          authorization: `Basic ${Buffer.from('root:').toString('base64')}`,
        },
      },
      (res) => {
        let body = '';
        res.setEncoding('latin1').on('data', (d: string) => (body = (body + d).slice(-4096)));
        // the stream's last events: the process's end, then the stream's own end
        res.on('end', () =>
          res.statusCode === 200 && body.includes('"end"') ? resolve() : reject(new Error(`envd ${res.statusCode}: ${body.slice(0, 200)}`)),
        );
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('envd: no answer in 10 s')));
    req.end(frame);
  });
}

/** A connection to the fork server: run(path) resolves to the exit status of one run. */
async function spawnerClient(socket: GuardedSocket): Promise<{ run: (file: string) => Promise<number>; close: () => void }> {
  const sock = connectGuarded(socket);
  await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
  let buf = '';
  const waiting: ((status: number) => void)[] = [];
  sock.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      waiting.shift()?.(Number(line));
    }
  });
  return {
    run: (file) => new Promise((resolve) => (waiting.push(resolve), sock.write(`${file}\n`))),
    close: () => sock.destroy(),
  };
}

interface Started {
  id: string;
  pid: number;
  socket: GuardedSocket;
  wallMs: number;
  cpuMs: number;
  pssKiB: number;
}

/** Runs one container of a variant and waits until its agent answers (the spawner: until it accepts). */
async function start(bare: BareRuntime, support: string, v: Variant): Promise<Started> {
  const c = bare.prepare({
    process: { args: argsOf(v), env: Object.entries(ENVD_ENV).map(([k, val]) => `${k}=${val}`) },
    mounts: [
      { destination: '/run', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=755', 'size=16m'] },
      { destination: IN.probe, type: 'bind', source: dirname(PROBE), options: ['rbind', 'ro'] },
      { destination: IN.support, type: 'bind', source: support, options: ['rbind', 'ro'] },
    ],
    socketDir: IN.sock,
  });
  // the container can write its socket directory: connections never follow a link there and
  // reach only a socket on that directory's filesystem (as the host reaches a sandbox's envd)
  const socket: GuardedSocket = { path: join(c.sockDir, 'agent.sock'), device: statSync(c.sockDir).dev };
  const t = now();
  const pid = await bare.run(c);
  await untilReady(v, () => (v === 'spawner' ? accepts(socket) : healthy(socket)));
  const wallMs = now() - t;
  return { id: c.id, pid, socket, wallMs, cpuMs: cpuMs(pid), pssKiB: anonPssKiB(pid) };
}

export async function floorBench(svc: BenchService, iterations: number, log: (s: string) => void = () => undefined): Promise<PartReport> {
  const part = emptyPart();
  const bare = svc.bare;
  const support = svc.manager.deps.supportDir;
  if (!existsSync(PROBE)) throw new Error(`${PROBE} is missing: run npm run build`);
  const samples: Record<'bare' | 'envd' | 'init', { wall: number[]; cpu: number[]; pss: number[] }> = {
    bare: { wall: [], cpu: [], pss: [] },
    envd: { wall: [], cpu: [], pss: [] },
    init: { wall: [], cpu: [], pss: [] },
  };
  // interleaved, so that the host's noise falls on every variant alike
  for (let i = 0; i < iterations; i++) {
    log(`floor: start ${i + 1}/${iterations}`);
    const b = bare.prepare();
    const t = now();
    await bare.run(b);
    samples.bare.wall.push(now() - t);
    await bare.delete(b.id);
    for (const v of ['init', 'envd'] as const) {
      const s = await start(bare, support, v);
      samples[v].wall.push(s.wallMs);
      samples[v].cpu.push(s.cpuMs);
      samples[v].pss.push(s.pssKiB);
      await bare.delete(s.id);
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
  const MiB = (kib: number) => kib / 1024;
  const bareRun = { name: `bare ${bare.name} run -d (busybox sleep)`, value: median(samples.bare.wall) };
  part.figures.push(
    figure('floor.start.envd', 'envd (Node) started as the process: run -d until /health', 'p50', median(samples.envd.wall), 'ms', bareRun),
    figure('floor.start.init', 'a static init as the process: run -d until /health', 'p50', median(samples.init.wall), 'ms', bareRun),
    figure('floor.cpu.envd', "envd's CPU until it answers /health", 'mean', mean(samples.envd.cpu), 'ms', {
      name: "the static init's",
      value: mean(samples.init.cpu),
    }),
    figure('floor.pss.envd', 'envd anonymous memory (PSS), just started', 'mean', MiB(mean(samples.envd.pss)), 'MiB', {
      name: 'the static init',
      value: MiB(mean(samples.init.pss)),
    }),
  );

  // after use: commands through envd (as sandboxes run it, and without lite mode) and through a
  // fork server, each in a container of its own
  log('floor: commands through envd and through a fork server');
  const timeCommands = async (run: () => Promise<void>): Promise<number[]> => {
    const ms: number[] = [];
    for (let i = 0; i < COMMANDS; i++) {
      const t = now();
      await run();
      ms.push(now() - t);
    }
    return ms;
  };
  const used: Partial<Record<Variant, { p50: number; pss: number; cpuPerRun: number }>> = {};
  for (const v of ['envd', 'envd-full', 'spawner'] as const) {
    const s = await start(bare, support, v);
    try {
      const cpu0 = cpuMs(s.pid);
      let ms: number[];
      if (v === 'spawner') {
        const client = await spawnerClient(s.socket);
        try {
          ms = await timeCommands(async () => {
            const status = await client.run('/bin/true');
            if (status !== 0) throw new Error(`the fork server ran /bin/true with status ${status}`);
          });
        } finally {
          client.close();
        }
      } else ms = await timeCommands(() => envdRunTrue(s.socket));
      const cpuPerRun = (cpuMs(s.pid) - cpu0) / COMMANDS;
      await sleep(1000);
      used[v] = { p50: median(ms), pss: anonPssKiB(s.pid), cpuPerRun };
    } finally {
      await bare.delete(s.id);
    }
  }
  const u = used as Record<'envd' | 'envd-full' | 'spawner', { p50: number; pss: number; cpuPerRun: number }>;
  part.figures.push(
    figure('floor.run.envd', "`/bin/true` through envd's process API on its socket", 'p50', u.envd.p50, 'ms', {
      name: 'through a fork server on its socket',
      value: u.spawner.p50,
    }),
    figure('floor.runcpu.envd', "the agent's CPU per `/bin/true`: envd", 'mean', u.envd.cpuPerRun, 'ms', {
      name: 'the fork server',
      value: u.spawner.cpuPerRun,
    }),
    figure('floor.pss.envd.used', `envd anonymous memory after ${COMMANDS} commands`, 'mean', MiB(u.envd.pss), 'MiB', {
      name: `the fork server after ${COMMANDS}`,
      value: MiB(u.spawner.pss),
    }),
    figure('floor.pss.envd.full', `envd without V8's lite mode: anonymous memory after ${COMMANDS} commands`, 'mean', MiB(u['envd-full'].pss), 'MiB', {
      name: 'envd (lite mode)',
      value: MiB(u.envd.pss),
    }),
    figure('floor.runcpu.envd.full', "envd without V8's lite mode: its CPU per `/bin/true`", 'mean', u['envd-full'].cpuPerRun, 'ms', {
      name: 'envd (lite mode)',
      value: u.envd.cpuPerRun,
    }),
  );
  part.notes.push(
    'A static init that starts envd on first use would make a create cost about the static init start; the first command then pays the envd start.',
    "A shared host-side envd would leave about the static init's PSS in each sandbox; its own PSS divides over the sandboxes it serves.",
  );
  return part;
}
