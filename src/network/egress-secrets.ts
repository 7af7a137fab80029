// The one place the egress side reads a team's secrets: whether a name exists (create and
// update refuse a placeholder naming none), and its value (the proxy, per request, on the host).
import { unseal } from '../secrets/cipher.js';
import type { SharedSecretRepo } from '../store/shared.js';
import { invalid } from '../util/errors.js';
import { secretNames, type EgressRules } from './egress-rules.js';

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
