// A sandbox's side of networking: its slot (namespace, link, policy) and the files that tell
// it its name server and host names. The slot is in the sandbox's resource ledger before it
// is taken (and in the network's own slot table before it is made: network.ts); teardown
// releases it (ledger.ts).
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NetLease } from '../network/network.js';
import { addCaToRoot, CA_FILE, trustEnv } from '../network/egress-trust.js';
import { DEFAULT_NETWORK, egressPolicy, type NetworkSettings } from '../network/policy.js';
import type { BindMount } from '../runtime/bundle.js';
import { capabilitiesOf } from '../runtime/registry.js';
import type { SandboxCore } from './core.js';
import type { StoredSpec } from './types.js';

/** Where the sandbox's resolv.conf and hosts live: on its own disk, in a directory it cannot reach. */
function netFilesDir(core: SandboxCore, id: string): string {
  return join(core.sandboxDir(id), 'disk', 'net');
}

/**
 * Gives a sandbox its slot with the policy of its spec (a slot it already has is kept: a
 * resume, a cold boot) and writes its resolv.conf and hosts. Undefined without networking.
 */
export async function connectNetwork(core: SandboxCore, id: string, spec: StoredSpec): Promise<NetLease | undefined> {
  const net = core.deps.net;
  // only a runtime that can run in a namespace the host prepared; the others keep loopback only
  if (!net || !capabilitiesOf(core.runtimeOf(id).name).preparedNetns) return undefined;
  core.store.recordResource(id, 'network', 'slot'); // in the sandbox's ledger before the slot is taken
  const lease = await net.attach(id, egressPolicy(spec.network ?? DEFAULT_NETWORK));
  const dir = netFilesDir(core, id);
  // the host writes these before every boot, in a directory only the host can reach (no sandbox path is followed)
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(join(dir, 'resolv.conf'), `nameserver ${lease.gateway}\noptions edns0 trust-ad\n`, { mode: 0o644 });
  writeFileSync(join(dir, 'hosts'), `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n${lease.address}\t${id}\n`, { mode: 0o644 });
  if (net.egress) {
    writeFileSync(join(dir, 'egress-ca.crt'), net.egress.caCert, { mode: 0o644 });
    // once, before the sandbox's first boot: later its root is its own (nothing of it is followed)
    if (!existsSync(join(dir, 'egress-ca-added'))) {
      addCaToRoot(join(core.sandboxDir(id), 'rootfs'), spec.layers, net.egress.caCert, core.idMapFor(core.requireRow(id).uidSlot)?.hostId);
      writeFileSync(join(dir, 'egress-ca-added'), '');
    }
  }
  return lease;
}

/** The environment that points Python, Node and curl at the CA (when the egress proxy runs). */
export function egressTrustEnv(core: SandboxCore, layers: string[]): Record<string, string> {
  return core.deps.net?.egress ? trustEnv(layers) : {};
}

/** The bind mounts of a networked sandbox's /etc/resolv.conf and /etc/hosts. */
export function networkBinds(core: SandboxCore, id: string, lease: NetLease | undefined): BindMount[] {
  if (!lease) return [];
  const dir = netFilesDir(core, id);
  const ca = join(dir, 'egress-ca.crt');
  return [
    { source: join(dir, 'resolv.conf'), destination: '/etc/resolv.conf', readonly: true },
    { source: join(dir, 'hosts'), destination: '/etc/hosts', readonly: true },
    ...(core.deps.net?.egress && existsSync(ca) ? [{ source: ca, destination: CA_FILE, readonly: true }] : []),
  ];
}

/** Applies new settings' egress policy to a sandbox's slot, if it has one (live: no restart). */
export async function applyPolicy(core: SandboxCore, id: string, settings: NetworkSettings): Promise<void> {
  const net = core.deps.net;
  if (net?.lease(id)) await net.setPolicy(id, egressPolicy(settings));
}
