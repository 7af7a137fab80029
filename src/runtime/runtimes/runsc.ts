import type { RuntimeDefinition } from './types.js';

/** gVisor: a user-space kernel (ptrace platform) between the sandbox and the host. */
export const runsc: RuntimeDefinition = {
  name: 'runsc',
  capabilities: {
    // its kernel is the isolation layer
    userNamespaces: false,
    // gVisor refuses a prepared namespace on this kind of host ("cannot run with network
    // enabled in root network namespace"): its sandboxes keep loopback only
    preparedNetns: false,
    freeze: true,
    checkpoint: 'builtin',
    // its file proxy refuses user.* attributes on the root (EOPNOTSUPP): files keep no metadata
    rootXattrs: false,
    envdTransport: 'unix',
    // binds over files in its own /proc work (a boot id per boot); meminfo needs none, its kernel knows the sandbox's memory
    procMounts: 'any',
    ownKernel: true,
  },
  // host-uds=create: envd's socket in the shared directory must be reachable from the host (a
  // stale one there makes envd's listen fail: a pause without memory clears the directory);
  // network=none: loopback only (see preparedNetns)
  globalArgs: ['--platform=ptrace', '--network=none', '--host-uds=create'],
  probeArgs: ['--platform=ptrace', '--network=none'],
  hybridCgroupWrapper: false,
  // `runsc exec --detach` exits 128 whatever happens (and waits ~10 s for a shell that forks)
  detachedExec: false,
  // files named `<id>_sandbox:<sandbox id>.state` (and .lock), not a directory per container
  stateFileOwner: (entry) => /^(.+)_sandbox:.*\.(state|lock)$/.exec(entry)?.[1],
  isolationNote: "gVisor's user-space kernel is the boundary: no user namespace and no seccomp profile from cubebox (runsc filters its own syscalls)",
};
