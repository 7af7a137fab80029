// A sandbox's side of networking: its slot (namespace, link, policy) and the files that tell
// it its name server and host names. The slot is in the sandbox's resource ledger before it
// is taken (and in the network's own slot table before it is made: network.ts); teardown
// releases it (ledger.ts).
import { existsSync, lstatSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NetLease } from '../network/network.js';
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
    const system = templateBundle(spec.layers);
    writeFileSync(join(dir, 'ca-certificates.crt'), (system?.text ?? '') + net.egress.caCert, { mode: 0o644 });
    writeFileSync(join(dir, 'ca-bundle-path'), system?.path ?? '', { mode: 0o644 });
  }
  return lease;
}

/** Where the sandbox finds its CA bundle: the template's, with the egress proxy's CA added. */
const CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';
/** Where distributions keep their system bundle (Debian, Alpine; Fedora, RHEL; others). */
const SYSTEM_BUNDLES = [CA_BUNDLE, '/etc/pki/tls/certs/ca-bundle.crt', '/etc/ssl/ca-bundle.pem', '/etc/ssl/cert.pem'];

/** The template's system CA bundle and where it is, from its topmost read-only layer that has one (never the sandbox's own files). */
function templateBundle(layers: string[]): { path: string; text: string } | undefined {
  for (const path of SYSTEM_BUNDLES)
    for (const l of layers) {
      try {
        const full = join(l, path);
        // a symlink anywhere on the way (a registry image's) is not followed
        if (realpathSync(full) !== join(realpathSync(l), path)) continue;
        const st = lstatSync(full);
        if (st.isFile() && st.size < 8 << 20) return { path, text: readFileSync(full, 'utf8').replace(/\n?$/, '\n') };
      } catch {
        // not in this layer
      }
    }
  return undefined;
}

/**
 * The environment that points Python, Node, curl and OpenSSL at that bundle (when the egress
 * proxy runs). Without a system bundle the template can read as a plain file, only Node's
 * (additive) one: replacing a trust store the sandbox has would break its other HTTPS.
 */
export function egressTrustEnv(core: SandboxCore, layers: string[]): Record<string, string> {
  if (!core.deps.net?.egress?.caCert) return {};
  if (!templateBundle(layers)) return { NODE_EXTRA_CA_CERTS: CA_BUNDLE };
  return { SSL_CERT_FILE: CA_BUNDLE, NODE_EXTRA_CA_CERTS: CA_BUNDLE, REQUESTS_CA_BUNDLE: CA_BUNDLE, CURL_CA_BUNDLE: CA_BUNDLE };
}

/** The bind mounts of a networked sandbox's /etc/resolv.conf and /etc/hosts. */
export function networkBinds(core: SandboxCore, id: string, lease: NetLease | undefined): BindMount[] {
  if (!lease) return [];
  const dir = netFilesDir(core, id);
  const bundle = join(dir, 'ca-certificates.crt');
  return [
    { source: join(dir, 'resolv.conf'), destination: '/etc/resolv.conf', readonly: true },
    { source: join(dir, 'hosts'), destination: '/etc/hosts', readonly: true },
    ...(core.deps.net?.egress && existsSync(bundle) ? bundleBinds(bundle, join(dir, 'ca-bundle-path')) : []),
  ];
}

/** The bundle at the canonical path, and at the template's own system bundle's path when that is another. */
function bundleBinds(bundle: string, pathFile: string): BindMount[] {
  const own = existsSync(pathFile) ? readFileSync(pathFile, 'utf8') : '';
  return [...new Set([CA_BUNDLE, ...(SYSTEM_BUNDLES.includes(own) ? [own] : [])])].map((destination) => ({ source: bundle, destination, readonly: true }));
}

/** Applies new settings' egress policy to a sandbox's slot, if it has one (live: no restart). */
export async function applyPolicy(core: SandboxCore, id: string, settings: NetworkSettings): Promise<void> {
  const net = core.deps.net;
  if (net?.lease(id)) await net.setPolicy(id, egressPolicy(settings));
}
