// `cubebox sandbox net <id>` as text.
import type { NetworkReport } from '../api/manager-api.js';

export function formatNetworkReport(r: NetworkReport): string {
  if (!r.enabled) return `${r.sandboxId}: networking is off on this service (loopback only)`;
  if (!r.address) return `${r.sandboxId}: no network slot (the sandbox is not running or paused)`;
  const p = r.policy;
  const list = (xs: string[]) => (xs.length ? xs.join(', ') : '-');
  const lines = [
    `sandbox      ${r.sandboxId}`,
    `address      ${r.address}/31 via ${r.gateway} (host link ${r.hostLink}, namespace ${r.netns})`,
    `internet     ${r.settings.allowInternetAccess ? 'allowed' : 'denied'}${p.restricted ? ' (only what is allowed below; DNS answers only allowed names)' : ''}`,
    `allow        ${list([...p.allowCidrs, ...p.domains, ...p.wildcards.map((w) => `*.${w}`)])}`,
    `deny         ${list(p.denyCidrs)}`,
    `always       host services, other sandboxes, link-local and metadata addresses, private networks: denied`,
    `ports        ${r.settings.allowPublicTraffic ? 'public' : 'traffic token required'}${r.settings.maskRequestHost ? `, Host masked as ${r.settings.maskRequestHost}` : ''}${r.settings.httpsPorts.length ? `, HTTPS on ${r.settings.httpsPorts.join(', ')}` : ''}`,
  ];
  const rules = Object.entries(r.settings.rules ?? {}).map(
    ([d, rs]) => `${d}: ${rs.flatMap((x) => Object.entries(x.transform?.headers ?? {}).map(([k, v]) => `${k}=${v}`)).join(', ') || '-'}`,
  );
  if (rules.length) lines.push(`rules        ${rules.join('; ')} (HTTPS headers set by the egress proxy; placeholders shown, never values)`);
  const up = r.settings.egressProxy;
  if (up)
    lines.push(`upstream     SOCKS5 ${up.address}${up.username !== undefined ? ` as ${up.username}` : ''} (all outbound TCP; credentials added on the host)`);
  if (r.counters)
    lines.push(`counters     egress ${r.counters.egressPackets} packets / ${r.counters.egressBytes} bytes, denied ${r.counters.deniedPackets} packets`);
  return lines.join('\n');
}
