import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { defaultSeccomp } from './seccomp.js';
import { sandboxCpuCeiling } from './cgroups.js';
import { capabilitiesOf, type RuntimeName } from './registry.js';

/** The capabilities a sandbox's root keeps (podman's default set, without MKNOD, NET_RAW, AUDIT_WRITE). */
export const SANDBOX_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_NET_BIND_SERVICE',
  'CAP_SETFCAP',
  'CAP_SETGID',
  'CAP_SETPCAP',
  'CAP_SETUID',
  'CAP_SYS_CHROOT',
];

export const MASKED_PATHS = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/fs/selinux',
  '/sys/dev/block',
];

export const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

export interface Limits {
  memoryMB: number;
  cpuCount: number;
  pids: number;
}

export interface BindMount {
  source: string;
  destination: string;
  readonly: boolean;
}

export interface BundleSpec {
  runtime: RuntimeName;
  hostname: string;
  rootfs: string;
  /** The sandbox's main process; tini (PID 1) runs it and reaps every orphan. */
  command: string[];
  env: string[];
  cwd: string;
  /** Sandbox root maps to hostId..hostId+size-1; undefined = no user namespace. */
  idMap?: { hostId: number; size: number };
  limits: Limits;
  binds: BindMount[];
  cgroupsPath: string;
  tiniPath: string; // path of tini inside the sandbox
  /** The template allows nested containers: user namespaces and mounts in them (seccomp.ts). */
  nestedContainers?: boolean;
  /** The network namespace to join (the sandbox's slot); undefined: a new one with loopback only. */
  netns?: string;
  /**
   * A host file bind-mounted read-only over /proc/sys/kernel/random/boot_id, so that each boot
   * of the sandbox has its own boot id (as a VM's has). Ignored with a runtime that refuses it
   * (capability procMounts).
   */
  bootIdFile?: string;
  /**
   * A host file bind-mounted read-only over /proc/meminfo (see procMeminfo), so that `free`
   * and the runtimes that size themselves from it see the sandbox's memory, not the host's.
   * Ignored with a runtime whose kernel has a /proc of its own (capability ownKernel).
   */
  meminfoFile?: string;
}

/** Builds an OCI config.json with cubebox's secure defaults, as the spec's runtime can take it (registry.ts). */
export function buildConfig(spec: BundleSpec): Record<string, unknown> {
  const runtime = capabilitiesOf(spec.runtime);
  // a kernel of its own gives the sandbox its cgroups, sysfs and syscall filter
  const ownKernel = runtime.ownKernel;
  const caps = SANDBOX_CAPABILITIES;
  const namespaces: { type: string; path?: string }[] = [
    { type: 'pid' },
    spec.netns ? { type: 'network', path: spec.netns } : { type: 'network' }, // no slot: loopback only
    { type: 'ipc' },
    { type: 'uts' },
    { type: 'mount' },
  ];
  if (!ownKernel) namespaces.push({ type: 'cgroup' });
  if (spec.idMap) namespaces.push({ type: 'user' });

  const joinsForeignNetns = !!spec.netns && !!spec.idMap && !ownKernel;
  const mounts: Record<string, unknown>[] = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    // sysfs can only be mounted by a user namespace that owns the network namespace; a sandbox
    // joining its pre-made slot (owned by the host) gets the host's /sys read-only instead (what
    // some runtimes do by themselves, others not), without its submounts (cheaper, and less of the
    // host: debugfs, securityfs, the host's cgroups stay out) and with its network devices masked
    joinsForeignNetns
      ? { destination: '/sys', type: 'bind', source: '/sys', options: ['bind', 'nosuid', 'noexec', 'nodev', 'ro'] }
      : { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
  ];
  if (!ownKernel) {
    mounts.push({ destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] });
  }
  for (const b of spec.binds) {
    mounts.push({
      destination: b.destination,
      type: 'bind',
      source: b.source,
      options: ['rbind', 'nosuid', 'nodev', b.readonly ? 'ro' : 'rw'],
    });
  }

  if (spec.bootIdFile && runtime.procMounts === 'any') {
    mounts.push({
      destination: '/proc/sys/kernel/random/boot_id',
      type: 'bind',
      source: spec.bootIdFile,
      options: ['bind', 'ro', 'nosuid', 'nodev', 'noexec'],
    });
  }

  // a kernel of its own shows the sandbox's memory by itself
  if (spec.meminfoFile && runtime.procMounts !== 'none' && !ownKernel) {
    mounts.push({ destination: '/proc/meminfo', type: 'bind', source: spec.meminfoFile, options: ['bind', 'ro', 'nosuid', 'nodev', 'noexec'] });
  }

  const cpus = Math.min(spec.limits.cpuCount, sandboxCpuCeiling());
  const linux: Record<string, unknown> = {
    namespaces,
    cgroupsPath: spec.cgroupsPath,
    resources: {
      devices: [{ allow: false, access: 'rwm' }],
      memory: { limit: spec.limits.memoryMB * 1024 * 1024 },
      // never the whole host: it keeps a tenth of its CPUs whatever a template asks; under
      // contention sandboxes share by their vCPUs, so a CPU storm in a small one weighs little
      cpu: { period: 100000, quota: Math.round(cpus * 100000), shares: cpuShares(cpus) },
      pids: { limit: spec.limits.pids },
    },
    maskedPaths: joinsForeignNetns ? [...MASKED_PATHS, '/sys/class/net', '/sys/devices/virtual/net'] : MASKED_PATHS,
    readonlyPaths: READONLY_PATHS,
  };
  if (spec.idMap) {
    const map = [{ containerID: 0, hostID: spec.idMap.hostId, size: spec.idMap.size }];
    linux.uidMappings = map;
    linux.gidMappings = map;
  }
  if (!ownKernel) {
    const seccomp = defaultSeccomp(caps, { nestedContainers: spec.nestedContainers });
    if (seccomp) linux.seccomp = seccomp;
  }

  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: [spec.tiniPath, '-s', '-g', '--', ...spec.command],
      env: spec.env,
      cwd: spec.cwd,
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: nofile(), soft: nofile() }],
      // Left off on purpose: `sudo` in templates needs setuid to work (the user namespace
      // and the bounding set above still cap what it can gain).
      noNewPrivileges: false,
      // tini and envd keep score 0; the commands run in the sandbox get a higher one (the
      // runtime exec through the helper, envd's children through envd-exec), so that inside
      // the sandbox's memory limit the OOM killer takes a hog rather than envd.
      oomScoreAdj: 0,
    },
    root: { path: spec.rootfs, readonly: false },
    hostname: spec.hostname,
    mounts,
    linux,
  };
}

/**
 * Writes the bundle for one boot of a sandbox: its config.json and, unless the spec names
 * one, a new boot id (bundle/boot_id) that the config mounts over the kernel's.
 */
export function writeBundle(bundleDir: string, spec: BundleSpec): void {
  if (spec.bootIdFile === undefined && capabilitiesOf(spec.runtime).procMounts === 'any') {
    spec = { ...spec, bootIdFile: join(bundleDir, 'boot_id') };
    writeFileSync(spec.bootIdFile!, `${randomUUID()}\n`, { mode: 0o644 });
  }
  writeFileSync(join(bundleDir, 'config.json'), JSON.stringify(buildConfig(spec), null, 1), { mode: 0o600 });
}

/**
 * /proc/meminfo as a sandbox with this memory limit should see it (what lxcfs shows in a
 * container): the limit as its total, all of it free at boot, no swap. The kernel's own fields
 * are kept so that parsers expecting them find them.
 */
export function procMeminfo(memoryMB: number): string {
  const kb = memoryMB * 1024;
  const fields: [string, number][] = [
    ['MemTotal', kb],
    ['MemFree', kb],
    ['MemAvailable', kb],
    ['Buffers', 0],
    ['Cached', 0],
    ['SwapCached', 0],
    ['Active', 0],
    ['Inactive', 0],
    ['Active(anon)', 0],
    ['Inactive(anon)', 0],
    ['Active(file)', 0],
    ['Inactive(file)', 0],
    ['Unevictable', 0],
    ['Mlocked', 0],
    ['SwapTotal', 0],
    ['SwapFree', 0],
    ['Dirty', 0],
    ['Writeback', 0],
    ['AnonPages', 0],
    ['Mapped', 0],
    ['Shmem', 0],
    ['KReclaimable', 0],
    ['Slab', 0],
    ['SReclaimable', 0],
    ['SUnreclaim', 0],
    ['KernelStack', 0],
    ['PageTables', 0],
    ['CommitLimit', kb],
    ['Committed_AS', 0],
  ];
  return fields.map(([k, v]) => `${`${k}:`.padEnd(16)}${String(v).padStart(8)} kB\n`).join('');
}

/** CPU shares (v1's unit, which the runtimes map to v2's weight): 1024 per vCPU, within the kernel's bounds. */
export function cpuShares(cpus: number): number {
  return Math.min(262144, Math.max(2, Math.round(cpus * 1024)));
}

/** 65536 open files, or the host's hard limit when lower (raising it needs CAP_SYS_RESOURCE). */
function nofile(): number {
  const m = readFileSync('/proc/self/limits', 'utf8').match(/Max open files\s+\S+\s+(\S+)/);
  const hard = m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity;
  return Math.min(65536, hard);
}
