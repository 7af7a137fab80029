// The one place the egress side reads a team's secrets: whether a name exists (create and
// update refuse a placeholder naming none), and its value (the proxy, per request, on the host).
import { seal, unseal, type SealedFor } from '../secrets/cipher.js';
import type { SharedSecretRepo } from '../store/shared.js';
import { invalid } from '../util/errors.js';
import { secretNames, type EgressRules } from './egress-rules.js';
import type { NetworkSettings, UpstreamProxy } from './policy.js';

export interface SecretSource {
  rows: Pick<SharedSecretRepo, 'find'>;
  sealingKey(): Buffer;
}

async function findSecret(src: SecretSource, team: string, name: string) {
  return await src.rows.find(team, name.toLowerCase());
}

/** Refuses rules whose placeholders name a secret the team does not have (the name is said, never a value). */
export async function checkRuleSecrets(src: SecretSource, team: string, rules: EgressRules | undefined): Promise<void> {
  for (const name of secretNames(rules)) {
    if (name.startsWith('sec_') || !(await findSecret(src, team, name)))
      throw invalid(`network.rules: the placeholder \${e2b.secrets.${name}} names no secret of this team`);
  }
}

/** A secret's current value, or undefined when the team has no such secret (any more). */
export async function secretValue(src: SecretSource, team: string, name: string): Promise<string | undefined> {
  const row = name.startsWith('sec_') ? undefined : await findSecret(src, team, name);
  if (!row) return undefined;
  return unseal(src.sealingKey(), row.sealed, { team: row.team, secretId: row.id, version: row.version });
}

/** What a sealed upstream-proxy password belongs to: the team and that proxy (address and username); it opens for no other. */
const proxyOwner = (team: string, p: UpstreamProxy): SealedFor => ({ team, secretId: `egress-proxy:${p.address}:${p.username ?? ''}`, version: 1 });

/** The settings as they are stored: an upstream proxy's password sealed with the instance's key, never kept in clear. */
export function sealedSettings(src: Pick<SecretSource, 'sealingKey'>, team: string, s: NetworkSettings): NetworkSettings {
  const p = s.egressProxy;
  if (p?.password === undefined) return s;
  const { password, ...rest } = p;
  return { ...s, egressProxy: { ...rest, sealedPassword: seal(src.sealingKey(), password, proxyOwner(team, rest)) } };
}

/** The settings the egress proxy dials with: the upstream proxy's password opened (throws when it does not open). */
export function openedSettings(src: Pick<SecretSource, 'sealingKey'>, team: string, s: NetworkSettings): NetworkSettings {
  const p = s.egressProxy;
  if (p?.sealedPassword === undefined) return s;
  const { sealedPassword, ...rest } = p;
  return { ...s, egressProxy: { ...rest, password: unseal(src.sealingKey(), sealedPassword, proxyOwner(team, rest)) } };
}
