import type { RuntimeDefinition } from './types.js';

export const runc: RuntimeDefinition = {
  name: 'runc',
  capabilities: {
    userNamespaces: true,
    // runc 1.1 cannot exec into a sandbox whose user namespace does not own its network
    // namespace (it joins the user namespace first): its sandboxes keep loopback only
    preparedNetns: false,
    freeze: true,
    checkpoint: 'criu',
    rootXattrs: true,
    envdTransport: 'unix',
    // runc refuses every mount inside /proc but a few fixed files (meminfo is one, boot_id is not)
    procMounts: 'lxcfs',
    ownKernel: false,
    checkpointsTcp: false,
  },
  globalArgs: [],
  probeArgs: [],
  hybridCgroupWrapper: false,
};
