// Starts the egress proxy of an instance: its CA, its listeners, and the table's redirect of
// proxied 80/443 to them. Sandboxes made from then on trust the CA (networking.ts).
import type { Logger } from 'pino';
import type { DnsForwarder } from './dns.js';
import { EgressCa } from './egress-ca.js';
import { EgressProxy } from './egress-proxy.js';
import { openedSettings, secretValue, type SecretSource } from './egress-secrets.js';
import type { SandboxNetwork } from './network.js';
import type { NetworkSettings } from './policy.js';

export interface EgressStart {
  net: SandboxNetwork;
  dns: DnsForwarder;
  /** A sandbox's team and network settings (throws for one that is gone). */
  sandbox(id: string): { team: string | null; network: NetworkSettings };
  secrets: SecretSource;
  dataDir: string;
  instanceId: string;
  upstreamCa?: Buffer;
  log: Logger;
}

export async function startEgressProxy(o: EgressStart): Promise<EgressProxy> {
  const ca = await EgressCa.open(o.dataDir, o.instanceId);
  const proxy = new EgressProxy({
    ca,
    upstreamCa: o.upstreamCa,
    log: o.log,
    lookup(address) {
      const sandboxId = o.net.sandboxAt(address);
      if (!sandboxId) return undefined;
      try {
        const s = o.sandbox(sandboxId);
        // the upstream proxy's password is opened here, per connection: it is stored sealed
        return { sandboxId, team: s.team ?? '', settings: openedSettings(o.secrets, s.team ?? '', s.network) };
      } catch {
        return undefined;
      }
    },
    resolve: (name) => o.dns.resolve4(name),
    blocked: (address) => o.net.isBlocked(address),
    secret: (team, name) => secretValue(o.secrets, team, name),
  });
  const ports = await proxy.start();
  o.net.egress = { caCert: ca.certPem, counts: proxy.counts };
  await o.net.setProxyPorts(ports);
  return proxy;
}
