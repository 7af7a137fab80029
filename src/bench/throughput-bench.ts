// Commands through the service: commands.run('true') with the published SDK at c=1 and under
// C concurrent clients over S sandboxes for T seconds, next to local spawns of the shell the
// sandbox runs, at the same concurrency for the same time, in the same run. Then a file round
// trip (files.write and files.read of a small file, as the sandbox's default user) at c=1 and
// under the same C clients, next to commands.run at the same concurrency.
import type { BenchService, SdkSandbox } from './harness.js';
import { LocalLogin } from './host.js';
import { emptyPart, figure, mapLimit, now, percentile, timed, type PartReport } from './report.js';

export interface ThroughputOptions {
  clients: number;
  sandboxes: number;
  seconds: number;
  /** Runs at c=1 are five times this. */
  iterations: number;
}

/** The argv the sandbox's shell was started with for a command, read from inside: ['/bin/bash', '-l', '-c']. */
export async function sandboxShell(sbx: SdkSandbox): Promise<string[]> {
  // the command substitution is a child of that shell, so $$ is still the shell (not an exec'd command)
  const r = await sbx.commands.run('echo $(base64 -w0 < /proc/$$/cmdline)');
  const argv = Buffer.from(r.stdout.trim(), 'base64').toString('utf8').split('\0');
  const c = argv.indexOf('-c');
  return c > 0 ? argv.slice(0, c + 1) : argv;
}

/** A small file written and read back by one client (a path of its own, in the user's home). */
async function fileRoundTrip(sbx: SdkSandbox, client: number): Promise<void> {
  const path = `bench-files-${client}.txt`;
  const text = `client ${client} ${'x'.repeat(1000)}`;
  await sbx.files.write(path, text);
  if ((await sbx.files.read(path)) !== text) throw new Error(`${path} read back other content`);
}

/** Loops op from `clients` concurrent loops for `seconds`; counts, latencies and errors. */
async function loop(clients: number, seconds: number, op: (client: number) => Promise<unknown>) {
  const ms: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const t0 = now();
  const deadline = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      while (now() < deadline) {
        const t = now();
        try {
          await op(c);
          ms.push(now() - t);
        } catch (err) {
          errors++;
          firstError ??= (err as Error).message;
        }
      }
    }),
  );
  const elapsedS = (now() - t0) / 1000;
  return { ops: ms.length, perS: ms.length / elapsedS, ms, errors, firstError, elapsedS };
}

export async function throughputBench(svc: BenchService, o: ThroughputOptions, log: (s: string) => void = () => undefined): Promise<PartReport> {
  const part = emptyPart();
  const made: SdkSandbox[] = [];
  const login = new LocalLogin(svc.manager.templates.get('base').layers);
  try {
    log(`creating ${o.sandboxes} sandboxes`);
    const outcomes = await mapLimit(Array.from({ length: o.sandboxes }), 4, () => svc.create({ timeoutMs: (o.seconds + 600) * 1000 }));
    for (const x of outcomes) if (x.sandbox) made.push(x.sandbox);
    const failed = outcomes.filter((x) => x.error);
    if (!made.length) throw new Error(`no sandbox could be created: ${failed[0]?.error}`);
    if (failed.length) part.notes.push(`${failed.length} of ${o.sandboxes} sandboxes could not be created: ${failed[0]!.error}`);

    // 5. one command at a time, next to the same shell form spawned locally
    const first = made[0]!;
    const shell = await sandboxShell(first);
    part.facts.sandboxRuns = `${shell.join(' ')} <cmd>`;
    const flags = shell.slice(1); // ['-l', '-c']
    const other = flags.includes('-l') ? ['-c'] : ['-l', '-c'];
    const runs: number[] = [];
    const files1: number[] = [];
    const local: number[] = [];
    const localOther: number[] = [];
    await first.commands.run('true');
    for (let i = 0; i < o.iterations * 5; i++) {
      const t = now();
      await first.commands.run('true');
      runs.push(now() - t);
      local.push(await login.run(flags));
      localOther.push(await login.run(other));
      files1.push(await timed(() => fileRoundTrip(first, 0)));
    }
    // the host's shell with the sandbox user's dotfiles (see LocalLogin)
    const localName = (f: string[]) => `local bash ${f.join(' ')} true`;
    part.figures.push(
      figure('throughput.run1.p50', "commands.run('true') c=1", 'p50', percentile(runs, 50), 'ms', {
        name: `${localName(flags)} p50`,
        value: percentile(local, 50),
      }),
      figure('throughput.run1.other.p50', "commands.run('true') c=1", 'p50', percentile(runs, 50), 'ms', {
        name: `${localName(other)} p50`,
        value: percentile(localOther, 50),
      }),
      figure('throughput.files1.p50', 'files.write + files.read c=1', 'p50', percentile(files1, 50), 'ms', {
        name: "commands.run('true') c=1 p50",
        value: percentile(runs, 50),
      }),
    );

    // 6. C clients, each its own SDK object, over S sandboxes for T seconds
    log(`${o.clients} clients connecting`);
    const clients = await Promise.all(Array.from({ length: o.clients }, (_, c) => svc.Sandbox.connect(made[c % made.length]!.sandboxId)));
    log(`${o.clients} clients x commands.run('true') for ${o.seconds} s`);
    const sdk = await loop(o.clients, o.seconds, (c) => clients[c]!.commands.run('true'));
    log(`${o.clients} local loops x bash ${flags.join(' ')} true for ${o.seconds} s`);
    const base = await loop(o.clients, o.seconds, () => login.run(flags));
    const label = `commands.run('true'), ${o.clients} clients / ${made.length} sandboxes`;
    const baseName = `${localName(flags)}, ${o.clients} at once`;
    part.figures.push(
      figure('throughput.rate', label, 'rate', sdk.perS, 'ops/s', { name: baseName, value: base.perS }),
      figure('throughput.p50', label, 'p50', percentile(sdk.ms, 50), 'ms', { name: baseName, value: percentile(base.ms, 50) }),
      figure('throughput.p99', label, 'p99', percentile(sdk.ms, 99), 'ms', { name: baseName, value: percentile(base.ms, 99) }),
    );
    part.counts['load.ops'] = sdk.ops;
    part.counts['load.errors'] = sdk.errors;
    part.counts['local.spawns'] = base.ops;
    part.counts['local.errors'] = base.errors;
    if (sdk.firstError) part.notes.push(`first command error under load: ${sdk.firstError}`);
    part.facts.secondsMeasured = Math.round(sdk.elapsedS * 100) / 100;

    // 7. the same clients, each a file round trip on a file of its own, for T s
    log(`${o.clients} clients x files.write + files.read for ${o.seconds} s`);
    const files = await loop(o.clients, o.seconds, (c) => fileRoundTrip(clients[c]!, c));
    const filesLabel = `files.write + files.read, ${o.clients} clients / ${made.length} sandboxes`;
    part.figures.push(
      figure('throughput.files.p50', filesLabel, 'p50', percentile(files.ms, 50), 'ms', { name: `${label} p50`, value: percentile(sdk.ms, 50) }),
      figure('throughput.files.p99', filesLabel, 'p99', percentile(files.ms, 99), 'ms', { name: `${label} p99`, value: percentile(sdk.ms, 99) }),
      figure('throughput.files.rate', filesLabel, 'rate', files.perS, 'ops/s', { name: label, value: sdk.perS }),
    );
    part.counts['files.ops'] = files.ops;
    part.counts['files.errors'] = files.errors;
    if (files.firstError) part.notes.push(`first file error under load: ${files.firstError}`);

    // 8. both at once, as test/e2e/load does: each client runs three commands.run, then a file
    // round trip, and again, for T s; each kind timed apart
    log(`${o.clients} clients, commands.run and file round trips mixed, for ${o.seconds} s`);
    const mixed = { files: [] as number[], runs: [] as number[] };
    const turns = new Array<number>(o.clients).fill(0);
    const mix = await loop(o.clients, o.seconds, async (c) => {
      const t = now();
      if (turns[c]!++ % 4 === 3) {
        await fileRoundTrip(clients[c]!, c);
        mixed.files.push(now() - t);
      } else {
        await clients[c]!.commands.run('true');
        mixed.runs.push(now() - t);
      }
    });
    const mixLabel = `files.write + files.read, ${o.clients} clients each 1 in 4 (else commands.run)`;
    const mixBase = `commands.run('true') in the same load`;
    part.figures.push(
      figure('throughput.mixed.files.p50', mixLabel, 'p50', percentile(mixed.files, 50), 'ms', { name: `${mixBase} p50`, value: percentile(mixed.runs, 50) }),
      figure('throughput.mixed.files.p99', mixLabel, 'p99', percentile(mixed.files, 99), 'ms', { name: `${mixBase} p99`, value: percentile(mixed.runs, 99) }),
    );
    part.counts['mixed.files'] = mixed.files.length;
    part.counts['mixed.runs'] = mixed.runs.length;
    part.counts['mixed.errors'] = mix.errors;
    if (mix.firstError) part.notes.push(`first error in the mixed load: ${mix.firstError}`);
    return part;
  } finally {
    login.close();
    await svc.kill(made);
  }
}
