import type { RuntimeDefinition } from './types.js';

/** crun, the default: fast, and the only runtime here that joins a prepared network namespace. */
export const crun: RuntimeDefinition = {
  name: 'crun',
  capabilities: {
    userNamespaces: true,
    preparedNetns: true,
    freeze: true,
    checkpoint: 'criu',
    rootXattrs: true,
    envdTransport: 'unix',
    procMounts: 'any',
    ownKernel: false,
    checkpointsTcp: false,
  },
  globalArgs: [],
  probeArgs: [],
  // crun refuses hybrid hosts; in a mount namespace without the cgroup2 mount it sees pure v1
  hybridCgroupWrapper: true,
};
