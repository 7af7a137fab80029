import { existsSync, readFileSync } from 'node:fs';

/**
 * The seccomp filter: the maintained default profile that podman uses (Debian package
 * golang-github-containers-common), converted from its Docker format to the OCI form
 * for this architecture and the capability set cubebox grants.
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

let cached: { key: string; value: OciSeccomp | undefined } | undefined;

/** The converted default profile, or undefined when the host has none (doctor warns). */
export function defaultSeccomp(capabilities: string[], file = DEFAULT_PROFILE): OciSeccomp | undefined {
  const key = file + '|' + capabilities.join(',');
  if (cached?.key === key) return cached.value;
  const value = existsSync(file) ? convertProfile(JSON.parse(readFileSync(file, 'utf8')) as DockerProfile, capabilities) : undefined;
  cached = { key, value };
  return value;
}
