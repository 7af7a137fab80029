// What a runtime declares about itself. The registry (../registry.ts) lists one definition per
// runtime; the rest of cubebox asks it what a runtime can do rather than testing its name.

/** What sandboxes of a runtime can have, and how the host reaches them. */
export interface RuntimeCapabilities {
  /** Sandbox root is an unprivileged block of host ids (a user namespace of its own). */
  userNamespaces: boolean;
  /** It runs a sandbox in a network namespace the host prepared (a slot: sandbox networking); otherwise loopback only. */
  preparedNetns: boolean;
  /** It pauses a sandbox with its memory kept (the cgroup freezer, or its own). */
  freeze: boolean;
  /** Checkpoint to disk and restore: through CRIU (when `criu check` passes), by itself, or not at all. */
  checkpoint: 'criu' | 'builtin' | false;
  /** The sandbox's root keeps user.* extended attributes (files' metadata). */
  rootXattrs: boolean;
  /** How the host reaches envd in the sandbox: a unix socket on the sandbox's disk (vsock or TCP for a VM). */
  envdTransport: 'unix' | 'vsock' | 'tcp';
  /**
   * Host files it binds over files in /proc: any (boot_id, meminfo), only the fixed few that
   * lxcfs binds (meminfo, not boot_id), or none.
   */
  procMounts: 'any' | 'lxcfs' | 'none';
  /**
   * A kernel of its own (a user-space kernel, a VM) gives the sandbox its /proc, /sys, cgroups
   * and syscall filter: no cgroup namespace or mount and no seccomp filter from cubebox.
   */
  ownKernel: boolean;
  /**
   * Its checkpoint saves TCP connections through the sandbox's link. Neither gVisor's nor CRIU's as
   * called here (no --tcp-established) does: gVisor's fails on one that is open or in TIME_WAIT and
   * takes the sandbox down with it, so a sandbox is saved only when the host tracks none. A VM
   * snapshot would.
   */
  checkpointsTcp: boolean;
}

/** One runtime: its binary, its capabilities, and what differs in how it is called and probed. */
export interface RuntimeDefinition {
  /** Its name in configuration, the store and its state root (/run/cubebox/<instance>/<name>). */
  readonly name: string;
  /** The binary (default /usr/bin/<name>; env CUBEBOX_<NAME>_BIN overrides both). */
  readonly binary?: string;
  readonly capabilities: RuntimeCapabilities;
  /** Global flags of every call of the binary. */
  readonly globalArgs: readonly string[];
  /** Global flags of the doctor's probe, which runs a bare container (no sandbox around it). */
  readonly probeArgs: readonly string[];
  /** On hosts with hybrid cgroups every call runs in a private mount namespace without the cgroup2 mount. */
  readonly hybridCgroupWrapper: boolean;
  /**
   * Its create runs where /proc/sys/net is hidden (the helper's --hide-proc-sys-net): it takes a
   * namespace that shows /proc/sys/net/core/rmem_default for the host's own and refuses it.
   * The host then checks by itself that the namespace it hands over is not its own.
   */
  readonly hideProcSysNet?: boolean;
  /** Global flags of a sandbox's start when it has no prepared network namespace (loopback only). */
  readonly loopbackArgs?: readonly string[];
  /**
   * The container a file in its state root belongs to, for a runtime that keeps files rather
   * than a directory per container; undefined: not a container's file.
   */
  stateFileOwner?(entry: string): string | undefined;
  /**
   * false when `exec --detach` cannot be used (gVisor's build here always exits 128 from it):
   * callers that start something in the background let a shell background it instead.
   */
  readonly detachedExec?: false;
  /** What `cubebox doctor` says of its isolation when it does not rest on a user namespace and seccomp. */
  readonly isolationNote?: string;
}
