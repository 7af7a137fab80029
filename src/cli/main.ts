import { Command, Option } from 'commander';
import pino from 'pino';
import { openPaths } from '../config.js';
import { faultOf, hostConfig, managerOptions } from '../app/config.js';
import { formatReport, probeHost } from '../runtime/probe.js';
import { registerBenchCommand } from './bench.js';
import { registerKeysCommand, registerTeamsCommand } from './keys.js';
import { RemoteApi } from '../api/control-client.js';
import { ControlServer } from '../api/control-socket.js';
import { LocalApi, type ManagerApi, type TemplateSource } from '../api/manager-api.js';
import type { ServeFlags } from '../app/serve.js';
import { formatNetworkReport } from './net-report.js';
import { runtimeOption } from './runtime-option.js';
import { formatLeaks, LeakChecker } from '../sandbox/leaks.js';
import { SandboxManager } from '../sandbox/manager.js';
import { Store } from '../store/store.js';
import { CubeboxError, errorMessage, type ErrorKind } from '../util/errors.js';
import { armFault } from '../util/fault.js';
import { createReadStream, existsSync, readFileSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { dirname, join, resolve } from 'node:path';

const EXIT: Record<ErrorKind, number> = { internal: 1, invalid_argument: 2, not_found: 3, conflict: 4, unavailable: 5, busy: 6, insufficient_storage: 7 };

function dataDirOf(cmd: Command): string {
  return hostConfig({ dataDir: (cmd.optsWithGlobals() as { dataDir?: string }).dataDir }).dataDir;
}

/**
 * Runs fn against the manager of a data directory: through a running manager's control
 * socket when there is one, otherwise as a short-lived manager in this process (which
 * serves the socket meanwhile, so concurrent CLI calls queue behind it).
 */
async function withApi<T>(dataDir: string, fn: (api: ManagerApi) => Promise<T>, logLevel = 'warn'): Promise<T> {
  const config = hostConfig({ dataDir });
  const paths = openPaths(dataDir);
  for (let attempt = 0; ; attempt++) {
    if (await RemoteApi.reachable(paths.socket)) {
      try {
        return await fn(new RemoteApi(paths.socket));
      } catch (err) {
        // the manager we reached was a short-lived CLI one that has just finished: go again
        if ((err as { retryable?: boolean }).retryable && attempt < 100) continue;
        throw err;
      }
    }
    let manager: SandboxManager;
    try {
      manager = await SandboxManager.open({ ...managerOptions(config), logger: pino({ level: config.logLevel ?? logLevel }, pino.destination(2)) });
    } catch (err) {
      // Another manager holds the lock but has not bound its socket yet: wait for it.
      if (err instanceof CubeboxError && err.kind === 'unavailable' && /another cubebox manager/.test(err.message) && attempt < 100) {
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      throw err;
    }
    const api = new LocalApi(manager, { cacheDir: config.cacheDir, registry: config.registry });
    const server = new ControlServer(api, paths.socket);
    try {
      await server.listen();
      return await fn(api);
    } finally {
      await server.close();
      await manager.close();
    }
  }
}

/** This command's stdin (a password: never on the command line), up to 64 KiB. */
async function readStdin(): Promise<string> {
  let text = '';
  for await (const chunk of process.stdin) {
    text += (chunk as Buffer).toString('utf8');
    if (text.length > 65536) throw new CubeboxError('invalid_argument', 'stdin is longer than 64 KiB');
  }
  return text;
}

function parseEnv(pairs: string[] = []): Record<string, string> {
  const env: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf('=');
    if (i <= 0) throw new CubeboxError('invalid_argument', `bad --env '${p}': use KEY=VALUE`);
    env[p.slice(0, i)] = p.slice(i + 1);
  }
  return env;
}

function num(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new CubeboxError('invalid_argument', `${name} must be a number, got '${v}'`);
    return n;
  };
}

armFault(faultOf()); // the crash tests' CUBEBOX_FAULT

const program = new Command();
program
  .name('cubebox')
  .description('Self-hosted, E2B-compatible sandboxes on OCI runtimes')
  .addOption(new Option('--data-dir <dir>', 'data directory (env CUBEBOX_DATA_DIR, default /var/lib/cubebox)'))
  .showHelpAfterError();

program
  .command('doctor')
  .description('probe this host and report what cubebox can use')
  .option('--leaks', 'list host resources left by sandboxes of this data directory that no live sandbox owns')
  .option('--json', 'print the report as JSON')
  .action(async (opts: { leaks?: boolean; json?: boolean }, cmd: Command) => {
    if (opts.leaks) {
      const dataDir = dataDirOf(cmd);
      if (!existsSync(dataDir)) throw new CubeboxError('not_found', `${dataDir} is not a cubebox data directory`);
      const paths = openPaths(dataDir, false);
      const store = existsSync(paths.db) ? new Store(paths.db) : undefined;
      try {
        const known = new Set((store?.listSandboxes() ?? []).filter((r) => r.state !== 'deleting' && r.state !== 'failed').map((r) => r.id));
        const leaks = new LeakChecker(paths, store).instance(known);
        if (opts.json) console.log(JSON.stringify(leaks, null, 2));
        else console.log(leaks.length ? formatLeaks(leaks) : `no leaks for instance ${paths.instanceId} (${dataDir})`);
        process.exitCode = leaks.length ? 1 : 0;
      } finally {
        store?.close();
      }
      return;
    }
    const report = await probeHost({ nestedTemplates: nestedContainerTemplates(dataDirOf(cmd)) });
    console.log(opts.json ? JSON.stringify(report, null, 2) : formatReport(report));
    process.exitCode = report.ready ? 0 : 1;
  });

/** Templates of a data directory that allow nested containers; undefined when it has no store yet. */
function nestedContainerTemplates(dataDir: string): string[] | undefined {
  if (!existsSync(join(dataDir, 'instance-id'))) return undefined; // doctor before any data directory exists
  const paths = openPaths(dataDir, false);
  if (!existsSync(paths.db)) return undefined;
  const store = new Store(paths.db);
  try {
    return store
      .listTemplates()
      .filter((t) => (JSON.parse(t.config) as { nestedContainers?: boolean }).nestedContainers === true)
      .map((t) => t.name);
  } finally {
    store.close();
  }
}

const template = program.command('template').description('manage templates (read-only root filesystems)');
template
  .command('add <name> <source>')
  .description('register a root filesystem directory or tarball as a template')
  .option('--user <user>', 'default user for commands')
  .option('--nested-containers', "let its sandboxes create user namespaces and mount in them (Docker's default refuses; see cubebox doctor)")
  .action(async (name: string, source: string, opts: { user?: string; nestedContainers?: boolean }, cmd: Command) => {
    const config = { ...(opts.user ? { user: opts.user } : {}), ...(opts.nestedContainers ? { nestedContainers: true } : {}) };
    const t = await withApi(dataDirOf(cmd), (api) => api.addTemplate(name, { dir: source }, config));
    console.log(t.id);
  });
template
  .command('import <name> <source>')
  .description('import an OCI image: an OCI layout directory, a `docker save` tarball, or docker://<reference> (through skopeo)')
  .option('--ref <ref>', 'which image: a tag or digest in an OCI layout, repo:tag in a docker save')
  .option('--username <user>', 'docker:// only: registry user, with the password read from stdin (default: the host logins)')
  .action(async (name: string, source: string, opts: { ref?: string; username?: string }, cmd: Command) => {
    const image = source.startsWith('docker://') ? source : resolve(source);
    const registry = opts.username ? { username: opts.username, password: (await readStdin()).replace(/\r?\n$/, '') } : undefined;
    const t = await withApi(dataDirOf(cmd), (api) => api.addTemplate(name, { image, ref: opts.ref, registry }));
    console.log(t.id);
  });
template
  .command('build <kind-or-name>')
  .description(
    "build a template: base (Debian, E2B-style, with debootstrap), code-interpreter (E2B's code-interpreter-v1 on base), busybox (tiny, for tests), or <name> --recipe <file.json>",
  )
  .option('--name <name>', 'template name (default: the kind)')
  .option(
    '--recipe <file>',
    'a JSON recipe: {"from": "<template>", "steps": [{"run": "..."}, {"copy": {"src", "dest"}}, {"env": {}}, {"workdir"}, {"user"}, {"start"}, {"ready"}]}',
  )
  .option('--context <dir>', "directory that copy steps take files from (default: the recipe file's directory)")
  .action(async (kind: string, opts: { name?: string; recipe?: string; context?: string }, cmd: Command) => {
    if (opts.recipe) {
      const { parseRecipe } = await import('../builder/recipe.js');
      if (!existsSync(opts.recipe)) throw new CubeboxError('invalid_argument', `recipe file ${opts.recipe} not found`);
      const recipe = parseRecipe(readFileSync(opts.recipe, 'utf8'));
      const context = resolve(opts.context ?? dirname(resolve(opts.recipe)));
      // the steps' progress (numbers, output, timings) at info; through a running serve, in its log
      const started = Date.now();
      const r = await withApi(dataDirOf(cmd), (api) => api.buildRecipe(opts.name ?? kind, recipe, context), 'info');
      r.steps.forEach((st, i) => console.error(`[${i + 1}/${r.steps.length}] ${st.cached ? 'cached' : 'built '}  ${st.step}`));
      console.error(`built '${opts.name ?? kind}' in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      console.log(r.template.id);
      return;
    }
    const kinds: Record<string, TemplateSource> = { base: { base: true }, busybox: { busybox: true }, 'code-interpreter': { codeInterpreter: true } };
    const source = kinds[kind];
    if (!source) throw new CubeboxError('invalid_argument', `unknown template kind '${kind}' (known: ${Object.keys(kinds).join(', ')})`);
    const name = opts.name ?? (kind === 'code-interpreter' ? 'code-interpreter-v1' : kind);
    // a build shows its progress (at info) unless CUBEBOX_LOG_LEVEL says otherwise
    const t = await withApi(dataDirOf(cmd), (api) => api.addTemplate(name, source), kind !== 'busybox' ? 'info' : undefined);
    console.log(t.id);
  });
template
  .command('alias <template> <alias>')
  .description('give a template another name (E2B templateID aliases)')
  .action(async (ref: string, alias: string, _o: unknown, cmd: Command) => {
    await withApi(dataDirOf(cmd), (api) => api.tagTemplate(ref, { alias }));
  });
template
  .command('tag <template> <tag>')
  .description('tag a template: <name>:<tag> then resolves to it')
  .action(async (ref: string, tag: string, _o: unknown, cmd: Command) => {
    await withApi(dataDirOf(cmd), (api) => api.tagTemplate(ref, { tag }));
  });
template
  .command('list')
  .option('--json')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    const list = await withApi(dataDirOf(cmd), (api) => api.listTemplates());
    if (opts.json) return console.log(JSON.stringify(list, null, 2));
    for (const t of list) {
      const names = [...(t.config.aliases ?? []), ...(t.config.tags ?? []).map((g) => `${t.name}:${g}`)];
      console.log(`${t.id}  ${t.name.padEnd(20)} ${String(t.layers.length).padStart(2)} layer(s)${names.length ? `  also: ${names.join(', ')}` : ''}`);
    }
  });
template
  .command('rm <name>')
  .description('delete a template (refused while sandboxes use it)')
  .action(async (name: string, _opts: unknown, cmd: Command) => {
    await withApi(dataDirOf(cmd), (api) => api.removeTemplate(name));
  });

const sandbox = program.command('sandbox').description('manage sandboxes');
sandbox
  .command('create')
  .description('create and start a sandbox; prints its id on the last line')
  .requiredOption('--template <name>', 'template name or id')
  .option('--memory <MB>', 'memory limit in MB', num('--memory'))
  .option('--cpus <n>', 'CPU limit', num('--cpus'))
  .option('--pids <n>', 'process limit', num('--pids'))
  .option('--env <KEY=VALUE...>', 'environment variables')
  .action(async (opts: { template: string; memory?: number; cpus?: number; pids?: number; env?: string[] }, cmd: Command) => {
    const info = await withApi(dataDirOf(cmd), (api) =>
      api.create({ template: opts.template, limits: { memoryMB: opts.memory, cpuCount: opts.cpus, pids: opts.pids }, env: parseEnv(opts.env) }),
    );
    console.log(info.id);
  });
sandbox
  .command('list')
  .option('--json')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    const list = await withApi(dataDirOf(cmd), (api) => api.list());
    if (opts.json) return console.log(JSON.stringify(list, null, 2));
    for (const s of list) console.log(`${s.id}  ${s.state.padEnd(9)} ${new Date(s.createdAt).toISOString()}${s.lastError ? `  (${s.lastError})` : ''}`);
  });
sandbox.command('inspect <id>').action(async (id: string, _o: unknown, cmd: Command) => {
  console.log(JSON.stringify(await withApi(dataDirOf(cmd), (api) => api.get(id)), null, 2));
});
sandbox
  .command('net <id>')
  .description("a sandbox's addresses, effective egress policy and counters")
  .option('--json')
  .action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
    const r = await withApi(dataDirOf(cmd), (api) => api.network(id));
    if (opts.json) return console.log(JSON.stringify(r, null, 2));
    console.log(formatNetworkReport(r));
  });
sandbox
  .command('logs <id>')
  .description("print a sandbox's console output (envd and its main process)")
  .action(async (id: string, _o: unknown, cmd: Command) => {
    const dataDir = dataDirOf(cmd);
    await withApi(dataDir, (api) => api.get(id)); // a clear error for unknown ids
    // on the sandbox's own disk; streamed, so a large log costs no memory
    const file = join(openPaths(dataDir, false).sandboxesDir, id, 'disk', 'console.log');
    if (existsSync(file)) await pipeline(createReadStream(file), process.stdout, { end: false });
  });
sandbox
  .command('exec <id> <command...>')
  .description('run a command in a sandbox (use -- before the command); passes output and exit code through')
  .option('--env <KEY=VALUE...>', 'environment variables')
  .option('--cwd <dir>', 'working directory')
  .option('-i, --interactive', "pass this command's stdin to the sandbox command")
  .action(async (id: string, command: string[], opts: { env?: string[]; cwd?: string; interactive?: boolean }, cmd: Command) => {
    const stdin = opts.interactive ? process.stdin : undefined;
    const code = await withApi(dataDirOf(cmd), (api) =>
      api.exec(id, command, process.stdout, process.stderr, { env: parseEnv(opts.env), cwd: opts.cwd, stdin }),
    );
    process.exitCode = code;
    if (stdin) process.stdin.destroy(); // let the process exit even if stdin stays open
  });
for (const op of ['pause', 'resume', 'rm'] as const) {
  sandbox
    .command(`${op} <id>`)
    .description(op === 'rm' ? 'delete a sandbox from any state' : `${op} a sandbox`)
    .action(async (id: string, _o: unknown, cmd: Command) => {
      await withApi(dataDirOf(cmd), async (api) => {
        if (op === 'pause') await api.pause(id);
        else if (op === 'resume') await api.resume(id);
        else await api.delete(id);
      });
    });
}

program
  .command('serve')
  .description('run the E2B-compatible service (control plane, data-plane proxy, sandbox manager) until SIGTERM; sandboxes survive restarts')
  .addOption(new Option('--host <host>', 'listen address (env CUBEBOX_HOST, default 127.0.0.1)'))
  .addOption(new Option('--port <port>', 'listen port for both planes (env CUBEBOX_PORT, default 3000)'))
  .addOption(new Option('--data-port <port>', 'also serve the data plane alone on this port (env CUBEBOX_DATA_PORT)'))
  .addOption(new Option('--domain <domain>', 'sandbox domain reported to the SDK (env CUBEBOX_DOMAIN; default localhost:<port>)'))
  .addOption(runtimeOption())
  .option('--no-base', 'do not build the base template on first start')
  .addOption(new Option('--templates <names>', 'templates built at start: base, code-interpreter (env CUBEBOX_TEMPLATES; default base)'))
  .addOption(
    new Option(
      '--pool <template=size|min:max,...>',
      'warm pool: sandboxes prepared ahead of requests; min:max grows after bursts and shrinks when idle (env CUBEBOX_POOL, default base=2:32; "" for none)',
    ),
  )
  .addOption(new Option('--max-creating <n>', 'sandboxes provisioned at once (env CUBEBOX_MAX_CREATING; default twice the CPUs)'))
  .addOption(new Option('--create-queue <n>', 'creates that may wait for a turn; more get 429 with Retry-After (env CUBEBOX_CREATE_QUEUE, default 256)'))
  .addOption(
    new Option(
      '--paused-lifetime <duration>',
      'paused sandboxes are deleted this long after their pause: seconds or 30d, 12h, 90m (env CUBEBOX_PAUSED_LIFETIME, default 30d)',
    ),
  )
  .addOption(new Option('--subnet <cidr>', 'addresses of sandboxes, a /31 each (env CUBEBOX_SUBNET, default 10.200.0.0/16)'))
  .addOption(new Option('--dns-upstream <ip[:port],...>', "where sandbox DNS is forwarded (env CUBEBOX_DNS_UPSTREAM; default the host's resolv.conf)"))
  .addOption(
    new Option(
      '--allow-private <cidr,...>',
      'private networks sandboxes may reach: whole ranges from 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 (env CUBEBOX_ALLOW_PRIVATE)',
    ),
  )
  .option('--no-network', 'sandboxes get loopback only (env CUBEBOX_NETWORK=off)')
  .addOption(
    new Option('--egress-ca <file>', "CA certificates (PEM) the egress proxy verifies destinations with instead of the host's (env CUBEBOX_EGRESS_CA)"),
  )
  .addOption(new Option('--tls-cert <file>', 'serve both planes over HTTPS with this certificate chain (PEM; env CUBEBOX_TLS_CERT)'))
  .addOption(new Option('--tls-key <file>', 'the private key of --tls-cert (PEM; env CUBEBOX_TLS_KEY)'))
  .addOption(new Option('--max-connections <n>', 'open connections per listener (env CUBEBOX_MAX_CONNECTIONS, default 8192)'))
  .addOption(
    new Option('--max-connections-per-address <n>', 'open connections from one client address (env CUBEBOX_MAX_CONNECTIONS_PER_ADDRESS, default 1024)'),
  )
  .addOption(new Option('--header-timeout <s>', 'seconds a new connection may take to send its request headers (env CUBEBOX_HEADER_TIMEOUT, default 10)'))
  .addOption(new Option('--fd-reserve <n>', "file descriptors kept from connections for the service's own work (env CUBEBOX_FD_RESERVE, default 4096)"))
  .addOption(new Option('--shutdown-timeout <s>', 'seconds a graceful stop may take (env CUBEBOX_SHUTDOWN_TIMEOUT, default 20)'))
  .addOption(new Option('--database <url>', 'teams, API keys and secrets in PostgreSQL (postgres://...; env CUBEBOX_DATABASE; default: the data directory)'))
  .addOption(new Option('--role <role>', 'all (one process, the default), api (routes to nodes, no sandboxes) or node (runs sandboxes) (env CUBEBOX_ROLE)'))
  .addOption(new Option('--cluster-secret-file <file>', 'the secret API replicas and nodes authenticate to each other with (env CUBEBOX_CLUSTER_SECRET_FILE)'))
  .addOption(
    new Option(
      '--node-lease <seconds>',
      "an API replica: seconds without a heartbeat before a node's sandboxes are reported lost (env CUBEBOX_NODE_LEASE, default 30)",
    ),
  )
  .addOption(new Option('--node-url <url>', 'a node: how API replicas reach it (env CUBEBOX_NODE_URL, default http://<host>:<port>)'))
  .addOption(
    new Option(
      '--registry <url>',
      "a node: the OCI registry the cluster shares teams' templates through, http(s)://[user:pw@]host[:port][/prefix] (plain http: loopback or a private network only; env CUBEBOX_REGISTRY)",
    ),
  )
  .addOption(new Option('--registry-ca <file>', 'PEM bundle trusted for image registries besides the system CAs (env CUBEBOX_REGISTRY_CA)'))
  .addOption(new Option('--insecure-registry <host:port...>', 'registries pulled from over plain HTTP or unverified TLS (env CUBEBOX_INSECURE_REGISTRY)'))
  .action(async (opts: Omit<ServeFlags, 'dataDir'>, cmd: Command) => {
    const { serve } = await import('../app/serve.js');
    await serve({ ...opts, dataDir: (cmd.optsWithGlobals() as { dataDir?: string }).dataDir });
  });

registerKeysCommand(program, dataDirOf);
registerTeamsCommand(program, dataDirOf);

registerBenchCommand(program, num);

program.parseAsync(process.argv).catch((err: unknown) => {
  const kind: ErrorKind = err instanceof CubeboxError ? err.kind : 'internal';
  console.error(`cubebox: ${errorMessage(err)}`);
  process.exit(EXIT[kind]);
});
