// `cubebox bench`: the measurements of src/bench/, each figure next to a bare baseline of the same run.
import pino from 'pino';
import { Option, type Command } from 'commander';
import { hostConfig, managerOptions } from '../app/config.js';
import type { BenchRunOptions } from '../bench/bench.js';
import { parseRuntimeName } from '../runtime/registry.js';
import type { SandboxManager } from '../sandbox/manager.js';
import { CubeboxError } from '../util/errors.js';

type BenchOpts = Omit<BenchRunOptions, 'defaultPool' | 'node'> & { profile?: boolean; cluster?: boolean };

export function registerBenchCommand(program: Command, num: (name: string) => (v: string) => number): void {
  program
    .command('bench')
    .description('measure cubebox against bare baselines taken in the same run (runtime, service, network, bursts, throughput, density)')
    .option('-n, --iterations <n>', 'iterations of the sequential measurements', num('--iterations'), 20)
    .addOption(
      new Option('--only <part>', 'run only one part').choices([
        'runtime',
        'runtimes',
        'service',
        'network',
        'burst',
        'throughput',
        'density',
        'floor',
        'profile',
        'cluster',
      ]),
    )
    .option('--profile', "only where a cold create's CPU goes: the service's JS by phase, each kind of process it spawns, the sandbox's own (-n creates)")
    .option(
      '--cluster',
      'only a local cluster (PostgreSQL, 3 nodes, 2 API replicas, from scripts/cluster-local.sh) against a single node: create and commands.run through a replica, a burst, the database statements per create and heartbeat',
    )
    .option('--burst <n>', 'concurrent creates in a burst', num('--burst'), 50)
    .option('--sandboxes <m>', 'idle sandboxes for the density part', num('--sandboxes'), 100)
    .option('--clients <c>', 'concurrent SDK clients for the throughput part', num('--clients'), 100)
    .option('--client-sandboxes <s>', 'sandboxes the throughput clients share', num('--client-sandboxes'), 20)
    .option('--seconds <t>', 'seconds the throughput loops run', num('--seconds'), 20)
    .option('--json', 'print one JSON document on stdout (progress stays on stderr)')
    .option(
      '--runtimes <names>',
      'runtimes measured side by side, comma separated: the runtime part, and the runtimes part (service figures, only with this option)',
      (v: string) => v.split(',').map((n) => parseRuntimeName(n.trim())),
    )
    .action(async (opts: BenchOpts) => {
      for (const k of ['iterations', 'burst', 'sandboxes', 'clients', 'clientSandboxes', 'seconds'] as const) {
        if (!Number.isInteger(opts[k]) || opts[k] < 1)
          throw new CubeboxError('invalid_argument', `--${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} must be a positive integer`);
      }
      if (opts.profile) {
        if (opts.only && opts.only !== 'profile') throw new CubeboxError('invalid_argument', '--profile runs only the profile part: leave out --only');
        opts.only = 'profile';
      }
      if (opts.cluster) {
        if (opts.only && opts.only !== 'cluster') throw new CubeboxError('invalid_argument', '--cluster runs only the cluster part: leave out --only');
        if (opts.profile) throw new CubeboxError('invalid_argument', '--cluster and --profile are separate runs');
        opts.only = 'cluster';
      }
      const { runBench } = await import('../bench/bench.js');
      const { serveConfig } = await import('../app/config.js');
      const { serveNode } = await import('../app/node.js');
      const { openSecretKey } = await import('../secrets/key.js');
      // the pool `cubebox serve` would start with here (its default, or CUBEBOX_POOL), and its configuration
      const config = serveConfig({});
      const host = hostConfig();
      const node = {
        manager: { ...managerOptions(host), logger: pino({ level: host.logLevel ?? 'warn' }, pino.destination(2)) },
        cacheDir: config.cacheDir,
        serve: (m: SandboxManager, o: { host: string; port: number }) => {
          const key = openSecretKey(m.paths.dataDir);
          return serveNode(m, { ...o, log: m.log, volumeSizeMB: config.volumeSizeMB, sealingKey: () => key });
        },
      };
      const ok = await runBench({ ...opts, defaultPool: config.pool, node });
      if (!ok) process.exitCode = 1;
    });
}
