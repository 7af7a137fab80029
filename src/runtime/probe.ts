import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HELPER_BIN, type RuntimeName } from '../config.js';
import { run } from '../util/exec.js';
import { detectCgroupMode, v1Hierarchies, type CgroupMode } from './cgroups.js';
import { mountRootfs, rootfsLayout, unmountRootfs } from './rootfs.js';
import { DEFAULT_PROFILE } from './seccomp.js';

export interface Check {
  name: string;
  ok: boolean;
  essential: boolean;
  detail: string;
}

export interface RuntimeProbe {
  name: RuntimeName;
  installed: boolean;
  version?: string;
  works: boolean;
  needsWrapper: boolean;
  detail: string;
}

export interface HostReport {
  kernel: string;
  cgroupMode: CgroupMode;
  runtimes: RuntimeProbe[];
  criu: { installed: boolean; usable: boolean; detail: string };
  checks: Check[];
  ready: boolean;
}

const TINI = '/usr/bin/tini-static';

/** Probes the host for everything cubebox depends on, by trying it. */
export async function probeHost(opts: { runtimes?: RuntimeName[] } = {}): Promise<HostReport> {
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
  const unshareU = isRoot ? await run('unshare', ['--user', '--map-root-user', 'true']).catch(() => ({ code: 1, stderr: 'unshare missing' })) : { code: 1, stderr: '' };
  add('user namespaces', maxUserNs > 0 && unshareU.code === 0, false, maxUserNs > 0 ? (unshareU.code === 0 ? `max ${maxUserNs}` : `unshare --user failed: ${unshareU.stderr.trim()}`) : 'disabled (max_user_namespaces = 0)');

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
  add('loop devices', loop, true, loop ? '/dev/loop-control (each sandbox disk is a loop-mounted image)' : 'no /dev/loop-control: sandbox disks need loop devices (modprobe loop)');
  add('tini', existsSync(TINI), true, existsSync(TINI) ? TINI : `${TINI} missing: install the tini package`);
  add('seccomp profile', existsSync(DEFAULT_PROFILE), false, existsSync(DEFAULT_PROFILE) ? DEFAULT_PROFILE : `${DEFAULT_PROFILE} missing (package golang-github-containers-common): sandboxes would run without a seccomp filter`);

  const runtimes: RuntimeProbe[] = [];
  for (const name of opts.runtimes ?? (['crun', 'runc', 'runsc'] as RuntimeName[])) runtimes.push(await probeRuntime(name, cgroupMode, isRoot));
  const crun = runtimes.find((r) => r.name === 'crun');
  if (crun) add('default runtime (crun)', crun.works, true, crun.detail);

  const criu = await probeCriu();
  const kernel = readOr('/proc/sys/kernel/osrelease', '?').trim();
  return { kernel, cgroupMode, runtimes, criu, checks, ready: checks.every((c) => c.ok || !c.essential) };
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
  const binary = `/usr/bin/${name}`;
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
    const extra = name === 'runsc' ? ['--platform=ptrace', '--network=none'] : [];
    const id = `cubebox-probe-${process.pid}`;
    const tryRun = async (wrapped: boolean) => {
      const argv = [...extra, '--root', root, 'run', '--bundle', dir, id];
      const r = wrapped ? await run(HELPER_BIN, ['run-runtime', '--private-cgroupv1', binary, ...argv], { timeoutMs: 30_000 }) : await run(binary, argv, { timeoutMs: 30_000 });
      // clean whatever a failed run left behind
      if (r.code !== 0) await (wrapped ? run(HELPER_BIN, ['run-runtime', '--private-cgroupv1', binary, ...extra, '--root', root, 'delete', '--force', id]) : run(binary, [...extra, '--root', root, 'delete', '--force', id]));
      return r;
    };
    const direct = await tryRun(false);
    if (direct.code === 0 && direct.stdout.includes('tini')) return { name, installed: true, version, works: true, needsWrapper: false, detail: 'runs containers' };
    const reason = (direct.stderr || direct.stdout).trim().split('\n').pop() ?? '';
    if (name === 'crun' && mode === 'hybrid') {
      const wrapped = await tryRun(true);
      if (wrapped.code === 0) return { name, installed: true, version, works: true, needsWrapper: true, detail: `refuses hybrid cgroups directly (${reason}); works through the private-mount wrapper` };
      return { name, installed: true, version, works: false, needsWrapper: true, detail: `fails even through the wrapper: ${(wrapped.stderr || wrapped.stdout).trim()}` };
    }
    return { name, installed: true, version, works: false, needsWrapper: false, detail: `cannot run a container: ${reason}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function probeCriu(): Promise<HostReport['criu']> {
  const bin = ['/usr/sbin/criu', '/usr/bin/criu'].find((p) => existsSync(p));
  if (!bin) return { installed: false, usable: false, detail: 'not installed: checkpoint-to-disk with crun/runc is unavailable' };
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
  lines.push(r.ready ? 'host is ready for cubebox' : 'host is NOT ready: fix the FAIL lines above');
  return lines.join('\n');
}
