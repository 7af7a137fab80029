import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Command } from 'commander';
import { serveConfig } from '../../src/app/serve.js';
import { runtimeOption } from '../../src/cli/runtime-option.js';
import { naming, openPaths, PROJECT_ROOT } from '../../src/config.js';
import type { NetLease } from '../../src/network/network.js';
import { buildConfig, type BundleSpec } from '../../src/runtime/bundle.js';
import { OciRuntime } from '../../src/runtime/oci-runtime.js';
import { capabilitiesOf, DEFAULT_RUNTIME, parseRuntimeName, registerRuntime, runtimeDefinition, runtimeNames } from '../../src/runtime/registry.js';
import type { SandboxCore } from '../../src/sandbox/core.js';
import { ociRuntimes } from '../../src/sandbox/deps.js';
import { LeakChecker } from '../../src/sandbox/leaks.js';
import { connectNetwork } from '../../src/sandbox/networking.js';
import type { StoredSpec } from '../../src/sandbox/types.js';

/** The bundle of a sandbox with a user namespace, a slot and both /proc files. */
function spec(runtime: string): BundleSpec {
  return {
    runtime,
    hostname: 'sbx',
    rootfs: '/r',
    command: ['/bin/envd'],
    env: [],
    cwd: '/',
    idMap: { hostId: 2 ** 31, size: 65536 },
    limits: { memoryMB: 512, cpuCount: 1, pids: 100 },
    binds: [],
    cgroupsPath: '/cubebox-i/sbx',
    tiniPath: '/.cubebox/tini',
    netns: '/run/netns/x',
    bootIdFile: '/b/boot_id',
    meminfoFile: '/b/meminfo',
  };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const config = (runtime: string) => buildConfig(spec(runtime)) as Record<string, any>;
const destinations = (runtime: string): string[] => config(runtime).mounts.map((m: { destination: string }) => m.destination);

/** connectNetwork over a fake network: whether the sandbox got a slot. */
async function getsSlot(runtime: string): Promise<boolean> {
  const dir = mkdtempSync(join(tmpdir(), 'cubebox-registry-'));
  const attached: string[] = [];
  const lease: NetLease = { slot: 0, netns: '/run/netns/x', address: '10.0.0.2', gateway: '10.0.0.1', hostLink: 'l' };
  const core = {
    deps: { net: { attach: async (id: string) => (attached.push(id), lease) } },
    store: { recordResource: () => undefined },
    runtimeOf: () => ({ name: runtime }),
    sandboxDir: () => dir,
  } as unknown as SandboxCore;
  try {
    const got = await connectNetwork(core, 'sbx', {} as StoredSpec);
    assert.equal(got !== undefined, attached.length === 1);
    return got !== undefined;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('the runtime registry', () => {
  it('lists crun, runc and runsc, crun the default', () => {
    assert.deepEqual(runtimeNames(), ['crun', 'runc', 'runsc']);
    assert.equal(DEFAULT_RUNTIME, 'crun');
    assert.equal(parseRuntimeName(undefined), 'crun');
    assert.throws(() => parseRuntimeName('kata'), /unknown runtime 'kata' \(crun, runc or runsc\)/);
  });

  it('refuses a detached exec where the runtime cannot detach one, before running anything', () => {
    const root = mkdtempSync(join(tmpdir(), 'cubebox-detach-'));
    try {
      for (const name of runtimeNames()) {
        const rt = new OciRuntime(name, root, 'v2', { binary: '/nonexistent/runtime' });
        if (runtimeDefinition(name).detachedExec === false) assert.throws(() => rt.exec('c', ['true'], { detach: true }), /cannot detach an exec/);
        else rt.exec('c', ['true'], { detach: true, stdio: 'ignore' }).on('error', () => undefined); // spawned (and fails: no binary)
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('declares what each runtime can do', () => {
    assert.deepEqual(
      runtimeNames().map((n) => [n, capabilitiesOf(n).userNamespaces, capabilitiesOf(n).preparedNetns, capabilitiesOf(n).ownKernel]),
      [
        ['crun', true, true, false],
        ['runc', true, false, false],
        ['runsc', false, true, true],
      ],
    );
    for (const n of runtimeNames()) assert.equal(capabilitiesOf(n).envdTransport, 'unix');
    assert.deepEqual(
      runtimeNames().filter((n) => capabilitiesOf(n).rootXattrs),
      ['crun', 'runc'],
    );
    // no checkpoint here saves a TCP connection (gVisor's, CRIU's without --tcp-established)
    assert.deepEqual(
      runtimeNames().filter((n) => !capabilitiesOf(n).checkpointsTcp),
      ['crun', 'runc', 'runsc'],
    );
    assert.equal(runtimeDefinition('runsc').isolationNote !== undefined, true);
  });

  it("shapes each runtime's bundle by its capabilities", () => {
    const boot = '/proc/sys/kernel/random/boot_id';
    assert.ok(destinations('crun').includes(boot) && destinations('crun').includes('/proc/meminfo'));
    assert.ok(!destinations('runc').includes(boot) && destinations('runc').includes('/proc/meminfo'), 'runc refuses boot_id, takes meminfo');
    assert.ok(destinations('runsc').includes(boot) && !destinations('runsc').includes('/proc/meminfo'), "gVisor's /proc knows its memory");
    assert.ok(config('crun').linux.seccomp && !config('runsc').linux.seccomp);
    assert.ok(!config('runsc').linux.namespaces.some((n: { type: string }) => n.type === 'cgroup'));
    assert.equal(config('crun').mounts.find((m: { destination: string }) => m.destination === '/sys').type, 'bind', 'a slot owned by the host: its /sys');
    assert.equal(config('runsc').mounts.find((m: { destination: string }) => m.destination === '/sys').type, 'sysfs');
  });

  it('gives a prepared network namespace only to runtimes that can join one', async () => {
    assert.deepEqual(await Promise.all(runtimeNames().map(getsSlot)), [true, false, true]);
  });

  it('is the only place outside the runtime modules that names a runtime', () => {
    const src = join(PROJECT_ROOT, 'src');
    const named: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(dir)) {
        const p = join(dir, e);
        if (statSync(p).isDirectory()) {
          if (p !== join(src, 'runtime', 'runtimes')) walk(p);
        } else if (p !== join(src, 'runtime', 'registry.ts') && /\b(crun|runc|runsc)\b/.test(readFileSync(p, 'utf8'))) named.push(p.slice(src.length + 1));
      }
    };
    walk(src);
    assert.deepEqual(named, []);
  });
});

describe('a fourth runtime', () => {
  let unregister: () => void;
  let dir: string;
  before(() => {
    // all it takes: a definition (a copy of crun's under another name, driving the crun binary) and its registration
    unregister = registerRuntime({ ...runtimeDefinition('crun'), name: 'crun2', binary: '/usr/bin/crun' });
    dir = mkdtempSync(join(tmpdir(), 'cubebox-registry-'));
  });
  after(() => {
    unregister();
    rmSync(dir, { recursive: true, force: true });
  });

  it('is refused twice, and gone once removed', () => {
    assert.throws(() => registerRuntime({ ...runtimeDefinition('crun'), name: 'crun2' }), /registered already/);
    const remove = registerRuntime({ ...runtimeDefinition('runc'), name: 'runc2' });
    remove();
    assert.ok(!runtimeNames().includes('runc2'));
  });

  it('is accepted by serve configuration and named in its error', () => {
    assert.equal(serveConfig({ dataDir: '/tmp/d' }, { CUBEBOX_RUNTIME: 'crun2' }).runtime, 'crun2');
    assert.equal(serveConfig({ dataDir: '/tmp/d', runtime: 'crun2' }, {}).runtime, 'crun2');
    assert.throws(() => serveConfig({ dataDir: '/tmp/d' }, { CUBEBOX_RUNTIME: 'kata' }), /\(crun, runc, runsc or crun2\)/);
  });

  it("is one of the CLI's --runtime choices", () => {
    assert.deepEqual(runtimeOption().argChoices, ['crun', 'runc', 'runsc', 'crun2']);
    const cmd = new Command().exitOverride().addOption(runtimeOption());
    assert.equal(cmd.parse(['--runtime', 'crun2'], { from: 'user' }).opts().runtime, 'crun2');
  });

  it('drives its own binary with its own state root', () => {
    const runRoot = join(dir, 'run');
    const runtimes = ociRuntimes('crun2', runRoot, 'v2');
    assert.equal(runtimes.default.name, 'crun2');
    assert.equal(runtimes.default.userNamespaces, true);
    assert.deepEqual((runtimes.default as OciRuntime).command(['state', 'c']), ['/usr/bin/crun', ['--root', join(runRoot, 'crun2'), 'state', 'c']]);
    assert.deepEqual(
      ociRuntimes('crun', runRoot, 'v2')
        .all()
        .map((r) => r.name),
      ['crun', 'crun2'],
      'a manager finds its sandboxes by its state root',
    );
  });

  it('gets the bundle of the runtime it copies', () => {
    assert.deepEqual(config('crun2'), config('crun'));
  });

  it('has its state found by the leak checker', () => {
    const paths = { ...openPaths(join(dir, 'data')), runRoot: join(dir, 'leaks-run') };
    const state = join(paths.runRoot, 'crun2', naming.containerId(paths.instanceId, 'sbx'));
    mkdirSync(state, { recursive: true });
    const leaks = new LeakChecker(paths).sandbox('sbx');
    assert.deepEqual(
      leaks.map((l) => [l.kind, l.what]),
      [['runtime-state', state]],
    );
  });

  it('gets a network slot, as the runtime it copies', async () => {
    assert.equal(await getsSlot('crun2'), true);
  });
});
