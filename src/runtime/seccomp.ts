import { existsSync, readFileSync } from 'node:fs';

/**
 * The seccomp filter: the maintained default profile that podman uses (Debian package
 * golang-github-containers-common), converted from its Docker format to the OCI form
 * for this architecture and the capability set cubebox grants, then tightened to
 * Docker's (moby's) rules for namespaces, mounts and the kernel keyring (hardenProfile).
 */
export const DEFAULT_PROFILE = '/usr/share/containers/seccomp.json';

interface DockerRule {
  names?: string[];
  name?: string;
  action: string;
  args?: unknown[] | null;
  errnoRet?: number;
  includes?: { arches?: string[]; caps?: string[]; minKernel?: string };
  excludes?: { arches?: string[]; caps?: string[] };
}

interface DockerProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  archMap?: { architecture: string; subArchitectures?: string[] }[];
  syscalls: DockerRule[];
}

export interface OciSeccomp {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures: string[];
  syscalls: { names: string[]; action: string; args?: unknown[]; errnoRet?: number }[];
}

const NODE_TO_DOCKER_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', ia32: 'x86' };
const NODE_TO_SCMP_ARCH: Record<string, string> = { x64: 'SCMP_ARCH_X86_64', arm64: 'SCMP_ARCH_AARCH64', ia32: 'SCMP_ARCH_X86' };

export function convertProfile(profile: DockerProfile, capabilities: string[], arch = process.arch): OciSeccomp {
  const dockerArch = NODE_TO_DOCKER_ARCH[arch] ?? arch;
  const scmpArch = NODE_TO_SCMP_ARCH[arch];
  const caps = new Set(capabilities);
  const entry = profile.archMap?.find((a) => a.architecture === scmpArch);
  const architectures = entry ? [entry.architecture, ...(entry.subArchitectures ?? [])] : scmpArch ? [scmpArch] : [];
  const syscalls: OciSeccomp['syscalls'] = [];
  for (const rule of profile.syscalls) {
    const inc = rule.includes ?? {};
    const exc = rule.excludes ?? {};
    if (inc.arches?.length && !inc.arches.includes(dockerArch)) continue;
    if (inc.caps?.length && !inc.caps.every((c) => caps.has(c))) continue;
    if (exc.arches?.length && exc.arches.includes(dockerArch)) continue;
    if (exc.caps?.length && exc.caps.some((c) => caps.has(c))) continue;
    const names = rule.names ?? (rule.name ? [rule.name] : []);
    if (!names.length) continue;
    const out: OciSeccomp['syscalls'][number] = { names, action: rule.action };
    if (rule.args?.length) out.args = rule.args;
    if (rule.errnoRet !== undefined) out.errnoRet = rule.errnoRet;
    syscalls.push(out);
  }
  const result: OciSeccomp = { defaultAction: profile.defaultAction, architectures, syscalls };
  if (profile.defaultErrnoRet !== undefined) result.defaultErrnoRet = profile.defaultErrnoRet;
  return result;
}

/**
 * Podman's profile allows clone, clone3, unshare, setns, mount, umount2, pivot_root, the
 * new mount API and keyctl to everyone, because podman runs rootless containers that
 * nest user namespaces. Docker allows them only with CAP_SYS_ADMIN: a sandbox that can
 * make a user namespace gets CAP_SYS_ADMIN and CAP_NET_ADMIN over new namespaces, and
 * with them filesystems and nf_tables code that most recent kernel exploits go through.
 */
const NAMESPACE_SYSCALLS = [
  'unshare',
  'setns',
  'mount',
  'umount',
  'umount2',
  'pivot_root',
  'fsopen',
  'fsconfig',
  'fsmount',
  'fspick',
  'move_mount',
  'open_tree',
  'mount_setattr',
  'sethostname',
  'setdomainname',
];
/** Host-wide kernel state (the keyring is not namespaced) or capability-gated in Docker. */
const KERNEL_SYSCALLS: Record<string, string[]> = {
  keyctl: [], // Docker: never
  add_key: [],
  request_key: [],
  bpf: ['CAP_SYS_ADMIN', 'CAP_BPF'],
  perf_event_open: ['CAP_SYS_ADMIN', 'CAP_PERFMON'],
  fanotify_init: ['CAP_SYS_ADMIN'],
  lookup_dcookie: ['CAP_SYS_ADMIN'],
  quotactl: ['CAP_SYS_ADMIN'],
  quotactl_fd: ['CAP_SYS_ADMIN'],
  name_to_handle_at: ['CAP_SYS_ADMIN'],
  open_by_handle_at: ['CAP_DAC_READ_SEARCH'],
  syslog: ['CAP_SYSLOG'],
  userfaultfd: ['CAP_SYS_PTRACE'],
};
/** CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET (NEWTIME shares clone's exit-signal byte; unshare and clone3 carry it, and both are refused). */
const CLONE_NAMESPACE_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000];
const EPERM = 1;
const ENOSYS = 38;

export interface SeccompOptions {
  /**
   * The template allows nested containers: unprivileged user namespaces and mounts inside
   * them (what rootless podman or bwrap need). The keyring, bpf and perf stay refused.
   */
  nestedContainers?: boolean;
}

/**
 * Replaces whatever the profile says about the syscalls above with Docker's rules for
 * this capability set. Without CAP_SYS_ADMIN: clone only without namespace flags (the
 * flags are clone's first argument on the architectures cubebox supports), clone3 ENOSYS
 * (its flags are behind a pointer that seccomp cannot read; libc then falls back to
 * clone), the rest EPERM as if the capability were missing.
 */
export function hardenProfile(profile: OciSeccomp, capabilities: string[], opts: SeccompOptions = {}): OciSeccomp {
  const caps = new Set(capabilities);
  const admin = caps.has('CAP_SYS_ADMIN');
  const nested = admin || opts.nestedContainers === true;
  const ours = new Set([...NAMESPACE_SYSCALLS, 'clone', 'clone3', ...Object.keys(KERNEL_SYSCALLS)]);
  const syscalls: OciSeccomp['syscalls'] = [];
  for (const rule of profile.syscalls) {
    const names = rule.names.filter((n) => !ours.has(n));
    if (names.length) syscalls.push({ ...rule, names });
  }
  const allowed = Object.entries(KERNEL_SYSCALLS)
    .filter(([, need]) => need.some((c) => caps.has(c)))
    .map(([n]) => n);
  const refused = Object.keys(KERNEL_SYSCALLS).filter((n) => !allowed.includes(n));
  if (nested) {
    allowed.push('clone', 'clone3', ...NAMESPACE_SYSCALLS);
  } else {
    const mask = CLONE_NAMESPACE_FLAGS.reduce((a, b) => a + b, 0);
    syscalls.push({ names: ['clone'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: mask, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }] });
    // clone with any namespace flag: EPERM rather than the profile's default ENOSYS
    for (const flag of CLONE_NAMESPACE_FLAGS) {
      syscalls.push({
        names: ['clone'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EPERM,
        args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }],
      });
    }
    syscalls.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS });
    refused.push(...NAMESPACE_SYSCALLS);
  }
  if (allowed.length) syscalls.push({ names: allowed, action: 'SCMP_ACT_ALLOW' });
  if (refused.length) syscalls.push({ names: refused, action: 'SCMP_ACT_ERRNO', errnoRet: EPERM });
  return { ...profile, syscalls };
}

const cache = new Map<string, OciSeccomp | undefined>();

/** The sandbox's filter, or undefined when the host has no profile (doctor warns). */
export function defaultSeccomp(capabilities: string[], opts: SeccompOptions = {}, file = DEFAULT_PROFILE): OciSeccomp | undefined {
  const key = `${file}|${capabilities.join(',')}|${opts.nestedContainers === true}`;
  if (cache.has(key)) return cache.get(key);
  const value = existsSync(file)
    ? hardenProfile(convertProfile(JSON.parse(readFileSync(file, 'utf8')) as DockerProfile, capabilities), capabilities, opts)
    : undefined;
  cache.set(key, value);
  return value;
}
