import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HELPER_BIN } from '../config.js';
import { run } from '../util/exec.js';
import { detectCgroupMode, v1Hierarchies, type CgroupMode } from './cgroups.js';
import { DEFAULT_RUNTIME, isRuntimeName, runtimeDefinition, runtimeNames, runtimesWith, type RuntimeName } from './registry.js';
import { guardSandboxDir, mountRootfs, rootfsLayout, unmountRootfs } from './rootfs.js';
import { DEFAULT_PROFILE } from './seccomp.js';
import type { Check } from '../protocol/host-status.js';

export type { Check };

export interface RuntimeProbe {
  name: RuntimeName;
  installed: boolean;
  version?: string;
  works: boolean;
  needsWrapper: boolean;
  detail: string;
  /** Runs a container in a user namespace behind a sandbox-style directory guard (undefined: not tried). */
  userns?: boolean;
}

export interface HostReport {
  kernel: string;
  cgroupMode: CgroupMode;
  runtimes: RuntimeProbe[];
  criu: { installed: boolean; usable: boolean; detail: string };
  checks: Check[];
  /** Host settings that weaken the isolation of sandboxes (ok: false means a warning). */
  isolation: Check[];
  /** Templates of the data directory that allow nested containers (when the caller gave them). */
  nestedTemplates?: string[];
  ready: boolean;
}

const TINI = '/usr/bin/tini-static';
/** The host id the runtime probe maps container root to (as a sandbox's would be: unprivileged, high). */
const PROBE_HOST_ID = 3_000_000_000;

/** Probes the host for everything cubebox depends on, by trying it. */
export async function probeHost(opts: { runtimes?: RuntimeName[]; nestedTemplates?: string[] } = {}): Promise<HostReport> {
  const checks: Check[] = [];
  const add = (name: string, ok: boolean, essential: boolean, detail: string) => checks.push({ name, ok, essential, detail });

  const isRoot = process.getuid?.() === 0;
  add('root', isRoot, true, isRoot ? 'running as root' : 'cubebox must run as root (namespaces, cgroups, mounts)');

  const cgroupMode = detectCgroupMode();
  const v1 = cgroupMode === 'v2' ? [] : v1Hierarchies();
  const v2Controllers = cgroupMode === 'v2' ? readOr('/sys/fs/cgroup/cgroup.controllers', '').trim().split(/\s+/) : [];
  const needed = ['memory', 'pids', 'cpu', 'freezer'];
  const have = cgroupMode === 'v2' ? [...v2Controllers, 'freezer' /* v2 freezes with cgroup.freeze */] : v1.flatMap((h) => h.split(','));
  const missing = needed.filter((c) => !have.includes(c));
  add(
    'cgroups',
    missing.length === 0,
    true,
    `${cgroupMode}${cgroupMode === 'hybrid' ? ' (v1 controllers; cgroup2 at /sys/fs/cgroup/unified without controllers)' : ''}` +
      (missing.length ? `; missing controllers: ${missing.join(', ')}` : ''),
  );

  const maxUserNs = Number(readOr('/proc/sys/user/max_user_namespaces', '0'));
  const unshareU = isRoot
    ? await run('unshare', ['--user', '--map-root-user', 'true']).catch(() => ({ code: 1, stderr: 'unshare missing' }))
    : { code: 1, stderr: '' };
  add(
    'user namespaces',
    maxUserNs > 0 && unshareU.code === 0,
    false,
    maxUserNs > 0 ? (unshareU.code === 0 ? `max ${maxUserNs}` : `unshare --user failed: ${unshareU.stderr.trim()}`) : 'disabled (max_user_namespaces = 0)',
  );

  const helper = existsSync(HELPER_BIN);
  add('native helper', helper, true, helper ? HELPER_BIN : `${HELPER_BIN} missing: run npm run build`);

  const overlay = readOr('/proc/filesystems', '').includes('overlay');
  let overlayDetail = overlay ? 'overlay filesystem available' : 'no overlay in /proc/filesystems';
  let overlayOk = overlay;
  if (overlay && isRoot && helper) {
    const r = await tryIdmappedOverlay();
    overlayOk = r.ok;
    overlayDetail = r.detail;
  }
  add('overlay over idmapped layers', overlayOk, true, overlayDetail);

  const loop = existsSync('/dev/loop-control');
  add(
    'loop devices',
    loop,
    true,
    loop ? '/dev/loop-control (each sandbox disk is a loop-mounted image)' : 'no /dev/loop-control: sandbox disks need loop devices (modprobe loop)',
  );
  add('tini', existsSync(TINI), true, existsSync(TINI) ? TINI : `${TINI} missing: install the tini package`);

  // sandbox networking: namespaces and veth pairs (iproute2), the policy (nftables), flow cleanup (conntrack)
  const nft = isRoot ? await run('nft', ['list', 'tables']).catch(() => ({ code: 1, stderr: 'nft missing' })) : { code: 1, stderr: 'needs root' };
  add(
    'nftables',
    nft.code === 0,
    false,
    nft.code === 0 ? 'nft works (the sandbox network policy)' : `nft failed: ${nft.stderr.trim()} (install nftables, or serve --no-network)`,
  );
  const ipOk = existsSync('/usr/sbin/ip') || existsSync('/sbin/ip') || existsSync('/bin/ip');
  add('iproute2', ipOk, false, ipOk ? 'ip (network namespaces and veth pairs)' : 'ip missing: install iproute2, or serve --no-network');
  const ct = ['/usr/sbin/conntrack', '/sbin/conntrack'].some((f) => existsSync(f));
  add(
    'conntrack',
    ct,
    false,
    ct ? "conntrack (a deleted sandbox's flows are dropped at once)" : 'conntrack missing: flows of deleted sandboxes time out instead of being dropped',
  );
  const fwd = readOr('/proc/sys/net/ipv4/ip_forward', '0').trim() === '1';
  add('IPv4 forwarding', true, false, fwd ? 'on' : 'off now; serve turns it on for sandbox networking (net.ipv4.ip_forward=1)');

  const runtimes: RuntimeProbe[] = [];
  for (const name of opts.runtimes ?? runtimeNames()) runtimes.push(await probeRuntime(name, cgroupMode, isRoot));
  const byDefault = runtimes.find((r) => r.name === DEFAULT_RUNTIME);
  if (byDefault) add(`default runtime (${DEFAULT_RUNTIME})`, byDefault.works, true, byDefault.detail);

  const criu = await probeCriu();
  const kernel = readOr('/proc/sys/kernel/osrelease', '?').trim();
  const isolation = isolationChecks(runtimes, opts.nestedTemplates);
  return { kernel, cgroupMode, runtimes, criu, checks, isolation, nestedTemplates: opts.nestedTemplates, ready: checks.every((c) => c.ok || !c.essential) };
}

/**
 * Host settings that weaken what a sandbox's isolation rests on. None stops cubebox, so
 * each is a warning with what to change. The sandboxes' own seccomp filter refuses user
 * namespaces, bpf, perf and userfaultfd whatever these say (except in templates that allow
 * nested containers); the settings still guard every other process on the host.
 */
export function isolationChecks(runtimes: RuntimeProbe[], nestedTemplates?: string[]): Check[] {
  const out: Check[] = [];
  const add = (name: string, ok: boolean, detail: string) => out.push({ name, ok, essential: false, detail });
  const sysctl = (key: string): number | undefined => {
    const v = readOr(`/proc/sys/${key.replace(/\./g, '/')}`, '').trim();
    return v === '' ? undefined : Number(v);
  };

  const seccompKernel = /^Seccomp:\s/m.test(readOr('/proc/self/status', ''));
  add('kernel seccomp', seccompKernel, seccompKernel ? 'seccomp filters supported' : 'the kernel has no seccomp: sandboxes run without a syscall filter');
  const profile = existsSync(DEFAULT_PROFILE);
  add(
    'seccomp profile',
    profile,
    profile
      ? `${DEFAULT_PROFILE}, tightened to Docker's rules for namespaces, mounts and the keyring`
      : `${DEFAULT_PROFILE} missing (package golang-github-containers-common): sandboxes run WITHOUT a seccomp filter`,
  );

  // Debian/Ubuntu: unprivileged_userns_clone; Ubuntu 23.10+: AppArmor's restriction
  const clone = sysctl('kernel.unprivileged_userns_clone');
  const apparmor = sysctl('kernel.apparmor_restrict_unprivileged_userns');
  const maxNs = sysctl('user.max_user_namespaces') ?? 0;
  const unprivUserns = maxNs > 0 && clone !== 0 && apparmor !== 1;
  add(
    'unprivileged user namespaces',
    !unprivUserns,
    unprivUserns
      ? `enabled for every host user (user.max_user_namespaces = ${maxNs}${clone === undefined ? '' : `, kernel.unprivileged_userns_clone = ${clone}`}): ` +
          'the usual door to kernel exploits (nf_tables, filesystems); cubebox needs user namespaces only as root: set kernel.unprivileged_userns_clone = 0 where the kernel has it (Debian, Ubuntu), or kernel.apparmor_restrict_unprivileged_userns = 1'
      : 'restricted to privileged processes',
  );
  const bpf = sysctl('kernel.unprivileged_bpf_disabled');
  if (bpf !== undefined) add('unprivileged bpf', bpf !== 0, bpf !== 0 ? `disabled (${bpf})` : 'enabled: set kernel.unprivileged_bpf_disabled = 2');
  const uffd = sysctl('vm.unprivileged_userfaultfd');
  if (uffd !== undefined)
    add(
      'unprivileged userfaultfd',
      uffd === 0,
      uffd === 0 ? 'kernel-mode faults need CAP_SYS_PTRACE' : 'enabled (an exploit helper): set vm.unprivileged_userfaultfd = 0',
    );
  const perf = sysctl('kernel.perf_event_paranoid');
  if (perf !== undefined) add('perf events', perf >= 2, perf >= 2 ? `paranoid = ${perf}` : `kernel.perf_event_paranoid = ${perf}: set it to 2 or more`);
  // kallsyms shows real addresses to everyone only with both of these low (KASLR gone)
  const kptr = sysctl('kernel.kptr_restrict');
  if (kptr !== undefined && perf !== undefined) {
    const open = kptr === 0 && perf <= 1;
    add(
      'kernel pointers',
      !open,
      open
        ? `kernel.kptr_restrict = 0 and perf_event_paranoid = ${perf}: /proc/kallsyms shows kernel addresses to every process, sandboxes included: set kptr_restrict to 1`
        : `hidden from unprivileged processes (kptr_restrict = ${kptr}, perf_event_paranoid = ${perf})`,
    );
  }
  const dmesg = sysctl('kernel.dmesg_restrict');
  if (dmesg !== undefined) add('kernel log', dmesg === 1, dmesg === 1 ? 'dmesg_restrict = 1' : 'kernel.dmesg_restrict = 0: set it to 1');
  const links = sysctl('fs.protected_symlinks');
  if (links !== undefined)
    add(
      'protected symlinks',
      links === 1,
      links === 1 ? 'fs.protected_symlinks = 1' : 'fs.protected_symlinks = 0: set it to 1 (symlink races in world-writable directories)',
    );

  for (const rt of runtimes) {
    if (!rt.works) continue;
    const note = isRuntimeName(rt.name) ? runtimeDefinition(rt.name).isolationNote : undefined;
    if (note) {
      add(`${rt.name} isolation`, true, note);
    } else if (rt.userns !== undefined) {
      add(
        `${rt.name} user namespaces`,
        rt.userns,
        rt.userns
          ? 'runs containers in a user namespace, sandbox root unprivileged on the host'
          : 'cannot run a container in a user namespace: sandbox root would be host root',
      );
    }
  }
  if (nestedTemplates) {
    add(
      'nested containers',
      nestedTemplates.length === 0,
      nestedTemplates.length
        ? `allowed in template(s) ${nestedTemplates.join(', ')}: their sandboxes may create user namespaces and mount in them`
        : 'no template allows them',
    );
  }
  return out;
}

async function tryIdmappedOverlay(): Promise<{ ok: boolean; detail: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'cubebox-probe-'));
  const layout = rootfsLayout(dir, 'cubebox-probe', 1);
  try {
    const lower = join(dir, 'lower');
    mkdirSync(lower);
    writeFileSync(join(lower, 'f'), 'x');
    await mountRootfs(layout, [lower], { hostId: 3_000_000_000, size: 65536 });
    return { ok: true, detail: 'overlay over an idmapped read-only layer mounts' };
  } catch (err) {
    return { ok: false, detail: `overlay over an idmapped layer failed: ${(err as Error).message}` };
  } finally {
    await unmountRootfs([layout.target, ...layout.views]).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs a container whose only file is tini-static (`tini --version`) with the runtime. */
async function probeRuntime(name: RuntimeName, mode: CgroupMode, isRoot: boolean): Promise<RuntimeProbe> {
  const def = runtimeDefinition(name);
  const binary = def.binary ?? `/usr/bin/${name}`;
  if (!existsSync(binary)) return { name, installed: false, works: false, needsWrapper: false, detail: `${binary} not installed` };
  const v = await run(binary, ['--version']);
  const version = (v.stdout.split('\n')[0] ?? '').trim();
  if (!isRoot || !existsSync(TINI)) return { name, installed: true, version, works: false, needsWrapper: false, detail: 'not tried (needs root and tini)' };
  const dir = mkdtempSync(join(tmpdir(), `cubebox-probe-${name}-`));
  const root = join(dir, 'state');
  try {
    for (const d of ['proc', 'dev']) mkdirSync(join(dir, 'rootfs', d), { recursive: true });
    copyFileSync(TINI, join(dir, 'rootfs', 'tini'));
    writeFileSync(
      join(dir, 'config.json'),
      JSON.stringify({
        ociVersion: '1.0.2',
        process: { terminal: false, user: { uid: 0, gid: 0 }, args: ['/tini', '--version'], cwd: '/', env: ['PATH=/'] },
        root: { path: join(dir, 'rootfs'), readonly: true },
        mounts: [{ destination: '/proc', type: 'proc', source: 'proc' }],
        linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'ipc' }, { type: 'uts' }, { type: 'network' }] },
      }),
    );
    const extra = [...def.probeArgs];
    const id = `cubebox-probe-${process.pid}`;
    const tryRun = async (wrapped: boolean) => {
      const argv = [...extra, '--root', root, 'run', '--bundle', dir, id];
      const r = wrapped
        ? await run(HELPER_BIN, ['run-runtime', '--private-cgroupv1', binary, ...argv], { timeoutMs: 30_000 })
        : await run(binary, argv, { timeoutMs: 30_000 });
      // clean whatever a failed run left behind
      if (r.code !== 0)
        await (wrapped
          ? run(HELPER_BIN, ['run-runtime', '--private-cgroupv1', binary, ...extra, '--root', root, 'delete', '--force', id])
          : run(binary, [...extra, '--root', root, 'delete', '--force', id]));
      return r;
    };
    // Then as sandboxes run: in a user namespace, behind the sandbox directory's guard.
    const withUserns = async (wrapped: boolean) => {
      if (!def.capabilities.userNamespaces) return undefined;
      const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      const map = [{ containerID: 0, hostID: PROBE_HOST_ID, size: 65536 }];
      config.linux = { ...config.linux, namespaces: [...config.linux.namespaces, { type: 'user' }], uidMappings: map, gidMappings: map };
      // a fresh root: the first run left device nodes in /dev
      for (const d of ['proc', 'dev']) mkdirSync(join(dir, 'rootfs-userns', d), { recursive: true });
      copyFileSync(TINI, join(dir, 'rootfs-userns', 'tini'));
      config.root.path = join(dir, 'rootfs-userns');
      config.mounts.push({ destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'mode=755'] }); // root's /dev is not the container root's
      writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
      guardSandboxDir(dir, { hostId: PROBE_HOST_ID });
      const r = await tryRun(wrapped);
      return r.code === 0 && r.stdout.includes('tini');
    };
    const direct = await tryRun(false);
    if (direct.code === 0 && direct.stdout.includes('tini'))
      return { name, installed: true, version, works: true, needsWrapper: false, detail: 'runs containers', userns: await withUserns(false) };
    const reason = (direct.stderr || direct.stdout).trim().split('\n').pop() ?? '';
    if (def.hybridCgroupWrapper && mode === 'hybrid') {
      const wrapped = await tryRun(true);
      if (wrapped.code === 0)
        return {
          name,
          installed: true,
          version,
          works: true,
          needsWrapper: true,
          detail: `refuses hybrid cgroups directly (${reason}); works through the private-mount wrapper`,
          userns: await withUserns(true),
        };
      return {
        name,
        installed: true,
        version,
        works: false,
        needsWrapper: true,
        detail: `fails even through the wrapper: ${(wrapped.stderr || wrapped.stdout).trim()}`,
      };
    }
    return { name, installed: true, version, works: false, needsWrapper: false, detail: `cannot run a container: ${reason}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function probeCriu(): Promise<HostReport['criu']> {
  const bin = ['/usr/sbin/criu', '/usr/bin/criu'].find((p) => existsSync(p));
  if (!bin)
    return { installed: false, usable: false, detail: `not installed: checkpoint-to-disk with ${runtimesWith('checkpoint', 'criu').join('/')} is unavailable` };
  const r = await run(bin, ['check'], { timeoutMs: 30_000 });
  if (r.code === 0) return { installed: true, usable: true, detail: 'criu check passes' };
  const why = (r.stderr || r.stdout).trim().split('\n').filter(Boolean).slice(-2).join(' | ');
  return { installed: true, usable: false, detail: `criu check fails: ${why}` };
}

function readOr(file: string, fallback: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
}

export function formatReport(r: HostReport): string {
  const lines: string[] = [];
  lines.push(`kernel        ${r.kernel}`);
  lines.push(`cgroups       ${r.cgroupMode}`);
  for (const c of r.checks) lines.push(`${c.ok ? 'ok  ' : c.essential ? 'FAIL' : 'warn'}  ${c.name}: ${c.detail}`);
  lines.push('runtimes:');
  for (const rt of r.runtimes) {
    const status = !rt.installed ? 'missing' : rt.works ? (rt.needsWrapper ? 'works (wrapper needed)' : 'works') : 'broken';
    lines.push(`  ${rt.name.padEnd(6)} ${status.padEnd(24)} ${rt.version ?? ''}${rt.detail ? `  ${rt.detail}` : ''}`);
  }
  lines.push(`criu          ${r.criu.usable ? 'usable' : 'unusable'}: ${r.criu.detail}`);
  lines.push('isolation:');
  for (const c of r.isolation) lines.push(`${c.ok ? 'ok  ' : 'warn'}  ${c.name}: ${c.detail}`);
  lines.push(r.ready ? 'host is ready for cubebox' : 'host is NOT ready: fix the FAIL lines above');
  return lines.join('\n');
}
