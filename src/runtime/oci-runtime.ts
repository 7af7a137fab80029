import type { ChildProcess, StdioOptions } from 'node:child_process';
import { closeSync, constants, existsSync, mkdirSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { HELPER_BIN } from '../config.js';
import type { CgroupMode } from './cgroups.js';
import { runtimeDefinition, type RuntimeDefinition, type RuntimeName } from './registry.js';
import { readLogTail } from '../util/log-tail.js';
import { spawnChild } from '../util/exec.js';

export type ContainerStatus = 'creating' | 'created' | 'running' | 'paused' | 'stopped';

export interface ContainerState {
  status: ContainerStatus;
  pid: number;
}

export interface ExecOptions {
  tty?: boolean;
  cwd?: string;
  env?: Record<string, string>;
  user?: { uid: number; gid: number };
  stdio?: StdioOptions;
  /** Start the process and return at once (the runtime exits; the process stays). */
  detach?: boolean;
  /** Capabilities the process gets beyond the sandbox's own (host-made processes only). */
  caps?: string[];
}

/**
 * The one seam between cubebox and whatever runs a sandbox. An OCI runtime binary
 * implements it here; a VM runtime would implement the same operations.
 */
export interface SandboxRuntime {
  readonly name: RuntimeName;
  /** Whether sandboxes should get a user namespace (the runtime's capability; fakes have none). */
  readonly userNamespaces: boolean;
  /** Starts the container described by bundleDir/config.json in the background. */
  /** Resolves to the host PID of the container's first process (informational only). */
  run(containerId: string, bundleDir: string, logFile: string): Promise<number>;
  exec(containerId: string, args: string[], opts?: ExecOptions): ChildProcess;
  pause(containerId: string): Promise<void>;
  resume(containerId: string): Promise<void>;
  /** null when the runtime has no such container. */
  state(containerId: string): Promise<ContainerState | null>;
  /** Out-of-band teardown that works from every state, including frozen; idempotent. */
  forceDelete(containerId: string): Promise<void>;
  /** Ids of every container in this instance's runtime state root. */
  list(): Promise<string[]>;
  /** Sends a signal to the container's first process. */
  signal?(containerId: string, signal: string): Promise<void>;
  /**
   * Saves the whole container (processes, memory, open files) into imageDir; the container
   * stops. Only runtimes that checkpoint by themselves (capability checkpoint 'builtin').
   */
  checkpoint?(containerId: string, imageDir: string): Promise<void>;
  /** Starts a checkpointed container again from imageDir and its bundle; resolves to its PID. */
  restore?(containerId: string, bundleDir: string, imageDir: string, logFile: string): Promise<number>;
}

/** OOM score of commands run in a sandbox; envd lowers its own to 0 so a hog dies first. */
export const USER_OOM_SCORE_ADJ = 500;

/**
 * How long one runtime call (state, pause, resume, delete, run) may take before its whole
 * process group is killed: shorter than every state's deadline in the manager, so that a
 * hung runtime cannot keep a sandbox in a transitional state past it.
 */
export const RUNTIME_CALL_TIMEOUT_MS = 20_000;

export interface OciRuntimeOptions {
  /** The runtime binary (default the definition's, else /usr/bin/<name>; configuration's CUBEBOX_<NAME>_BIN). */
  binary?: string;
  /** Per-call timeout (default RUNTIME_CALL_TIMEOUT_MS). */
  callTimeoutMs?: number;
}

const GONE_RE = /does not exist|no such file or directory|not found|container .* not exist/i;

/**
 * The network namespace the bundle joins (undefined: a new one); throws if it is the host's own. A runtime whose own check of
 * that is hidden (hideProcSysNet) would take the host's links over, addresses and all.
 */
export function refuseHostNetns(bundleDir: string): string | undefined {
  const config = JSON.parse(readFileSync(join(bundleDir, 'config.json'), 'utf8')) as { linux?: { namespaces?: { type: string; path?: string }[] } };
  const path = config.linux?.namespaces?.find((n) => n.type === 'network')?.path;
  if (!path) return undefined; // none, or a new one: the runtime makes it
  const ns = statSync(path);
  const host = statSync('/proc/self/ns/net');
  if (ns.dev === host.dev && ns.ino === host.ino) throw new Error(`the bundle's network namespace ${path} is the host's`);
  return path;
}

/** The OCI runtimes share one command line; what differs is in each one's definition (runtimes/). */
export class OciRuntime implements SandboxRuntime {
  readonly userNamespaces: boolean;
  private readonly def: RuntimeDefinition;
  private readonly binary: string;
  private readonly globalArgs: string[];
  private readonly wrap: boolean;
  readonly callTimeoutMs: number;

  constructor(
    readonly name: RuntimeName,
    private readonly stateRoot: string,
    cgroupMode: CgroupMode,
    opts: OciRuntimeOptions = {},
  ) {
    this.def = runtimeDefinition(name);
    this.binary = opts.binary ?? this.def.binary ?? `/usr/bin/${name}`;
    this.callTimeoutMs = opts.callTimeoutMs ?? RUNTIME_CALL_TIMEOUT_MS;
    this.globalArgs = ['--root', stateRoot, ...this.def.globalArgs];
    this.wrap = this.def.hybridCgroupWrapper && cgroupMode === 'hybrid';
    this.userNamespaces = this.def.capabilities.userNamespaces;
    mkdirSync(stateRoot, { recursive: true, mode: 0o700 });
  }

  /**
   * The argv that runs the runtime with the given command, through the helper when the
   * hybrid-cgroup wrapper or an OOM score for what it starts is needed.
   */
  command(args: string[], opts: { oomScoreAdj?: number; long?: boolean; create?: boolean } = {}): [string, string[]] {
    const full = [...this.globalArgs, ...args];
    const helperArgs: string[] = [];
    if (opts.create && this.def.hideProcSysNet) helperArgs.push('--hide-proc-sys-net');
    // a long call (exec) drops every sandbox's disk and overlay from its copy of the mount table
    // so that it cannot keep them busy; that costs an unmount per sandbox mount, so short calls
    // (whose copy goes when they exit) skip it
    if (this.wrap) helperArgs.push('--private-cgroupv1', ...(opts.long ? ['--detach-mounts'] : []));
    if (opts.oomScoreAdj !== undefined) helperArgs.push('--oom-score-adj', String(opts.oomScoreAdj));
    return helperArgs.length ? [HELPER_BIN, ['run-runtime', ...helperArgs, this.binary, ...full]] : [this.binary, full];
  }

  private async call(args: string[]): Promise<{ code: number; out: string; err: string }> {
    const [file, argv] = this.command(args);
    let out = '';
    let err = '';
    const code = await this.spawnBounded(
      file,
      argv,
      ['ignore', 'pipe', 'pipe'],
      (child) => {
        child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
        child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
      },
      args[0]!,
    );
    return { code, out, err: err.trim() };
  }

  /**
   * Spawns one runtime call in its own process group and waits for it, at most
   * callTimeoutMs: then the whole group (the runtime and whatever it forked that stayed
   * in the group) is killed and the call fails. The group is the one this call created,
   * so the signal cannot reach anything else.
   */
  private spawnBounded(file: string, argv: string[], stdio: StdioOptions, attach: (c: ChildProcess) => void, what: string): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      // a child that cannot be started (EMFILE, ENOENT) fails this call only: see spawnChild
      const child = spawnChild(file, argv, { stdio, detached: true });
      attach(child);
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        try {
          if (child.pid) process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }, this.callTimeoutMs);
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.on('close', (c) => {
        clearTimeout(timer);
        if (timedOut) reject(new Error(`${this.name} ${what} did not finish in ${this.callTimeoutMs} ms; its process group was killed`));
        else resolve(c ?? -1);
      });
    });
  }

  private async callOk(args: string[]): Promise<string> {
    const r = await this.call(args);
    if (r.code !== 0) throw new Error(`${this.name} ${args[0]}: ${r.err || `exit ${r.code}`}`);
    return r.out;
  }

  async run(containerId: string, bundleDir: string, logFile: string): Promise<number> {
    return this.start('run', [], containerId, bundleDir, logFile);
  }

  async restore(containerId: string, bundleDir: string, imageDir: string, logFile: string): Promise<number> {
    if (this.def.capabilities.checkpoint !== 'builtin') throw new Error(`${this.name} cannot restore a checkpoint by itself`);
    return this.start('restore', [`--image-path=${imageDir}`], containerId, bundleDir, logFile);
  }

  /** run or restore, detached; resolves to the container's first PID. */
  private async start(verb: 'run' | 'restore', extra: string[], containerId: string, bundleDir: string, logFile: string): Promise<number> {
    // The detached container inherits our stdio: give it a log file, never a pipe we wait on.
    const fd = openSync(logFile, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
    const pidFile = join(bundleDir, 'pid');
    try {
      const netns = this.def.hideProcSysNet || this.def.loopbackArgs ? refuseHostNetns(bundleDir) : undefined;
      const loopback = netns ? [] : (this.def.loopbackArgs ?? []);
      const [file, argv] = this.command([...loopback, verb, ...extra, '--detach', '--pid-file', pidFile, '--bundle', bundleDir, containerId], {
        create: true,
      });
      const code = await this.spawnBounded(file, argv, ['ignore', fd, fd], () => undefined, verb);
      if (code !== 0) {
        const tail = readLogTail(logFile, 4096).trim().split('\n').slice(-3).join(' | ');
        throw new Error(`${this.name} ${verb} failed (exit ${code}): ${tail || 'no output'}`);
      }
      return Number(readFileSync(pidFile, 'utf8').trim()) || 0;
    } finally {
      closeSync(fd);
    }
  }

  async checkpoint(containerId: string, imageDir: string): Promise<void> {
    if (this.def.capabilities.checkpoint !== 'builtin') throw new Error(`${this.name} cannot checkpoint by itself`);
    await this.callOk(['checkpoint', `--image-path=${imageDir}`, containerId]);
  }

  async signal(containerId: string, signal: string): Promise<void> {
    await this.callOk(['kill', containerId, signal]);
  }

  exec(containerId: string, args: string[], opts: ExecOptions = {}): ChildProcess {
    // a detached exec that cannot work fails here, not after a silent wait and a meaningless exit code
    if (opts.detach && this.def.detachedExec === false) throw new Error(`${this.name} cannot detach an exec: background the command in a shell instead`);
    const flags: string[] = [];
    if (opts.tty) flags.push('--tty');
    if (opts.detach) flags.push('--detach');
    if (opts.cwd) flags.push('--cwd', opts.cwd);
    for (const [k, v] of Object.entries(opts.env ?? {})) flags.push('--env', `${k}=${v}`);
    if (opts.user) flags.push('--user', `${opts.user.uid}:${opts.user.gid}`);
    for (const c of opts.caps ?? []) flags.push('--cap', c);
    // exec'd commands are preferred OOM victims over envd (see the bundle's oomScoreAdj)
    const [file, argv] = this.command(['exec', ...flags, containerId, ...args], { oomScoreAdj: USER_OOM_SCORE_ADJ, long: true });
    // one that cannot be started closes with a negative code (callers need no 'error' listener)
    return spawnChild(file, argv, { stdio: opts.stdio ?? 'pipe' });
  }

  async pause(containerId: string): Promise<void> {
    await this.callOk(['pause', containerId]);
  }

  async resume(containerId: string): Promise<void> {
    await this.callOk(['resume', containerId]);
  }

  /**
   * Whether the runtime has state for the container: a directory per container, or files
   * of the container's (stateFileOwner) for a runtime that keeps those.
   */
  private known(containerId: string): boolean {
    if (existsSync(join(this.stateRoot, containerId))) return true;
    const owner = this.def.stateFileOwner;
    return owner !== undefined && this.entries().some((e) => owner(e) === containerId);
  }

  private entries(): string[] {
    try {
      return readdirSync(this.stateRoot);
    } catch {
      return [];
    }
  }

  async state(containerId: string): Promise<ContainerState | null> {
    if (!this.known(containerId)) return null;
    const r = await this.call(['state', containerId]);
    if (r.code !== 0) {
      if (GONE_RE.test(r.err)) return null;
      throw new Error(`${this.name} state: ${r.err}`);
    }
    const s = JSON.parse(r.out) as { status: ContainerStatus; pid?: number };
    return { status: s.status, pid: s.pid ?? 0 };
  }

  async forceDelete(containerId: string): Promise<void> {
    if (!this.known(containerId)) return;
    const r = await this.call(['delete', '--force', containerId]);
    if (r.code !== 0 && !GONE_RE.test(r.err)) throw new Error(`${this.name} delete --force: ${r.err}`);
  }

  async list(): Promise<string[]> {
    const ids = new Set<string>();
    for (const e of this.entries()) {
      const owner = this.def.stateFileOwner?.(e);
      if (owner !== undefined) ids.add(owner);
      else if (existsSync(join(this.stateRoot, e, '.'))) ids.add(e);
    }
    return [...ids];
  }
}
