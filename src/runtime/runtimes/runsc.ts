import type { RuntimeDefinition } from './types.js';

/** gVisor: a user-space kernel (ptrace platform) between the sandbox and the host. */
export const runsc: RuntimeDefinition = {
  name: 'runsc',
  capabilities: {
    // its kernel is the isolation layer
    userNamespaces: false,
    // its netstack takes over the slot's link (see hideProcSysNet)
    preparedNetns: true,
    freeze: true,
    checkpoint: 'builtin',
    // its file proxy refuses user.* attributes on the root (EOPNOTSUPP): envd keeps metadata beside the files
    rootXattrs: false,
    envdTransport: 'unix',
    // binds over files in its own /proc work (a boot id per boot); meminfo needs none, its kernel knows the sandbox's memory
    procMounts: 'any',
    ownKernel: true,
    checkpointsTcp: false,
  },
  // host-uds=create: envd's socket in the shared directory must be reachable from the host (a
  // stale one there makes envd's listen fail: a pause without memory clears the directory);
  // network=sandbox: gVisor's own netstack on the links of the bundle's network namespace (the
  // slot's); a sandbox without one gets network=none, gVisor's loopback (a new namespace's
  // loopback is down, and runsc would copy it so)
  globalArgs: ['--platform=ptrace', '--network=sandbox', '--host-uds=create'],
  loopbackArgs: ['--network=none'],
  probeArgs: ['--platform=ptrace', '--network=none'],
  hybridCgroupWrapper: false,
  // `runsc exec --detach` exits 128 whatever happens (and waits ~10 s for a shell that forks)
  detachedExec: false,
  // gVisor 2022 tells the host's network namespace by /proc/sys/net/core/rmem_default, which
  // kernels since 6.x show in every namespace: it would refuse every slot ("cannot run with
  // network enabled in root network namespace", gvisor#10704)
  hideProcSysNet: true,
  // files named `<id>_sandbox:<sandbox id>.state` (and .lock), not a directory per container
  stateFileOwner: (entry) => /^(.+)_sandbox:.*\.(state|lock)$/.exec(entry)?.[1],
  isolationNote: "gVisor's user-space kernel is the boundary: no user namespace and no seccomp profile from cubebox (runsc filters its own syscalls)",
};
