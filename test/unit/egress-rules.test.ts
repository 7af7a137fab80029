import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseRules, ruleHeaders, rulesFor, secretNames, resolvePlaceholders } from '../../src/network/egress-rules.js';
import { egressPolicy, networkSettings } from '../../src/network/policy.js';

const bad = (fn: () => unknown, re: RegExp) => assert.throws(fn, (e: Error & { kind?: string }) => re.test(e.message) && e.kind === 'invalid_argument');
const tok = { transform: { headers: { Authorization: 'Bearer ${e2b.secrets.tok}' } } };

describe('egress rules', () => {
  it('keeps rules with their placeholders, domains lower-cased, and lists them for the proxy', () => {
    const s = networkSettings({ rules: { 'API.Test.': [tok], '*.wild.test': [{}] } });
    assert.deepEqual(s.rules, { 'api.test': [tok], '*.wild.test': [{}] });
    assert.deepEqual(egressPolicy(s).ruleDomains, ['api.test', '*.wild.test']);
    assert.deepEqual(secretNames(s.rules), ['tok']);
    // an update without rules clears them
    assert.equal(networkSettings({}, s).rules, undefined);
  });

  it('matches an exact domain before the longest wildcard, never the apex for a wildcard', () => {
    const r = parseRules({
      'a.b.test': [{ transform: { headers: { X: 'exact' } } }],
      '*.b.test': [{ transform: { headers: { X: 'mid' } } }],
      '*.test': [{ transform: { headers: { X: 'wide' } } }],
    })!;
    assert.equal(ruleHeaders(rulesFor(r, 'a.b.test')!).x, 'exact');
    assert.equal(ruleHeaders(rulesFor(r, 'c.b.test')!).x, 'mid');
    assert.equal(ruleHeaders(rulesFor(r, 'x.y.b.test')!).x, 'mid');
    assert.equal(ruleHeaders(rulesFor(r, 'b.test')!).x, 'wide');
    assert.equal(rulesFor(r, 'test'), undefined);
  });

  it('resolves placeholders only when every secret is there', async () => {
    const secrets: Record<string, string> = { tok: 's3cr3t' };
    const get = async (n: string) => secrets[n];
    assert.equal(await resolvePlaceholders('Bearer ${e2b.secrets.TOK}!', get), 'Bearer s3cr3t!');
    assert.equal(await resolvePlaceholders('${e2b.secrets.gone}', get), undefined);
  });

  it('refuses bad rules with a 400 naming the field', () => {
    bad(() => parseRules({ '*': [] }), /bare '\*'/);
    bad(() => parseRules({ 'bad domain': [] }), /network\.rules: "bad domain" is not a domain/);
    bad(() => parseRules({ 'a.test': {} }), /network\.rules\['a\.test'\] must be an array/);
    bad(() => parseRules({ 'a.test': [{ transform: { headers: { 'X\r\nEvil': 'v' } } }] }), /headers: .* is not a valid header name/);
    bad(() => parseRules({ 'a.test': [{ transform: { headers: { X: 'v\r\nEvil: 1' } } }] }), /headers\['X'\] holds a control character/);
    bad(() => parseRules({ 'a.test': [{ transform: { headers: { Host: 'x' } } }] }), /'Host' cannot be set/);
    bad(() => parseRules({ 'a.test': [{ transform: { headers: { X: '${e2b.identity.tokens.aws}' } } }] }), /iam/);
    bad(() => parseRules(Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`h${i}.test`, []]))), /1000 domains; at most 64/);
    bad(() => parseRules({ 'a.test': [{ other: 1 }] }), /unknown field 'other'/);
  });
});
