// E2B's per-domain egress rules (`network.rules`): header transforms the egress proxy applies
// to a sandbox's HTTPS requests. Values may hold `${e2b.secrets.<name>}` placeholders, kept as
// placeholders everywhere (stored, shown) and resolved only on the host, per request. Pure.
import { invalid } from '../util/errors.js';

export interface EgressRule {
  transform?: { headers?: Record<string, string> };
}
/** Domain ('api.example.com' or '*.example.com', lower-case) -> its rules, in order. */
export type EgressRules = Record<string, EgressRule[]>;

export const MAX_RULE_DOMAINS = 64;
export const MAX_RULES_PER_DOMAIN = 16;
export const MAX_HEADERS_PER_RULE = 32;
const MAX_VALUE_CHARS = 8192;
const DOMAIN = /^(\*\.)?([a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** RFC 9110 token. */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$/;
/** Visible ASCII, space and tab; no CR, LF, NUL or other controls. */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** Headers the proxy owns: a rule may not set them (they would break the forwarded request). */
const RESERVED = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'trailer', 'keep-alive', 'proxy-connection']);
export const SECRET_PLACEHOLDER = /\$\{e2b\.secrets\.([^}]*)\}/g;
const IDENTITY_PLACEHOLDER = /\$\{e2b\.identity\./;

/** Validates `network.rules` (a 400 naming the field on anything wrong); undefined for none. */
export function parseRules(v: unknown): EgressRules | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw invalid('network.rules must be an object of domain -> array of rules');
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > MAX_RULE_DOMAINS) throw invalid(`network.rules has ${entries.length} domains; at most ${MAX_RULE_DOMAINS} are allowed`);
  const out: EgressRules = {};
  for (const [key, list] of entries) {
    const domain = ruleDomain(key);
    const field = `network.rules['${domain}']`;
    if (out[domain]) throw invalid(`${field} is given twice (domains are matched in lower case)`);
    if (!Array.isArray(list)) throw invalid(`${field} must be an array of rules`);
    if (list.length > MAX_RULES_PER_DOMAIN) throw invalid(`${field} has ${list.length} rules; at most ${MAX_RULES_PER_DOMAIN} are allowed`);
    out[domain] = list.map((r, i) => parseRule(r, `${field}[${i}]`));
  }
  return Object.keys(out).length ? out : undefined;
}

function ruleDomain(key: string): string {
  const d = key.trim().toLowerCase().replace(/\.$/, '');
  const shown = JSON.stringify(key.slice(0, 100));
  if (d === '*' || d === '*.') throw invalid(`network.rules: a bare '*' is not a domain (use '*.example.com')`);
  if (d.length > 253 || !DOMAIN.test(d)) throw invalid(`network.rules: ${shown} is not a domain or *.domain`);
  return d;
}

function parseRule(r: unknown, field: string): EgressRule {
  if (typeof r !== 'object' || r === null || Array.isArray(r)) throw invalid(`${field} must be an object`);
  const extra = Object.keys(r).filter((k) => k !== 'transform');
  if (extra.length) throw invalid(`${field}: unknown field '${extra[0]!.slice(0, 64)}'`);
  const t = (r as { transform?: unknown }).transform;
  if (t === undefined || t === null) return {};
  if (typeof t !== 'object' || Array.isArray(t)) throw invalid(`${field}.transform must be an object`);
  const tExtra = Object.keys(t).filter((k) => k !== 'headers');
  if (tExtra.length) throw invalid(`${field}.transform: unknown field '${tExtra[0]!.slice(0, 64)}'`);
  const h = (t as { headers?: unknown }).headers;
  if (h === undefined || h === null) return { transform: {} };
  if (typeof h !== 'object' || Array.isArray(h)) throw invalid(`${field}.transform.headers must be an object of name -> value`);
  const headers = Object.entries(h as Record<string, unknown>);
  if (headers.length > MAX_HEADERS_PER_RULE)
    throw invalid(`${field}.transform.headers has ${headers.length} headers; at most ${MAX_HEADERS_PER_RULE} are allowed`);
  const out: Record<string, string> = {};
  for (const [name, value] of headers) {
    const hf = `${field}.transform.headers`;
    if (!HEADER_NAME.test(name)) throw invalid(`${hf}: ${JSON.stringify(name.slice(0, 64))} is not a valid header name`);
    if (RESERVED.has(name.toLowerCase())) throw invalid(`${hf}: '${name}' cannot be set by a rule`);
    if (typeof value !== 'string') throw invalid(`${hf}['${name}'] must be a string`);
    if (value.length > MAX_VALUE_CHARS) throw invalid(`${hf}['${name}'] is longer than ${MAX_VALUE_CHARS} characters`);
    if (!HEADER_VALUE.test(value)) throw invalid(`${hf}['${name}'] holds a control character (CR, LF, NUL...)`);
    if (IDENTITY_PLACEHOLDER.test(value)) throw invalid(`${hf}['${name}']: iam workload tokens (\${e2b.identity...}) are not supported by this service`);
    for (const m of value.matchAll(SECRET_PLACEHOLDER)) {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(m[1]!))
        throw invalid(`${hf}['${name}']: ${JSON.stringify(m[0].slice(0, 160))} is not a secret placeholder`);
    }
    out[name] = value;
  }
  return { transform: { headers: out } };
}

/** Every secret name the rules' placeholders refer to (lower-cased, as secrets are named). */
export function secretNames(rules: EgressRules | undefined): string[] {
  const names = new Set<string>();
  for (const list of Object.values(rules ?? {}))
    for (const r of list)
      for (const v of Object.values(r.transform?.headers ?? {})) for (const m of v.matchAll(SECRET_PLACEHOLDER)) names.add(m[1]!.toLowerCase());
  return [...names];
}

/** The rules for a host name: an exact key first, else the longest matching wildcard (never merged). */
export function rulesFor(rules: EgressRules | undefined, host: string): EgressRule[] | undefined {
  if (!rules) return undefined;
  const n = host.toLowerCase().replace(/\.$/, '');
  if (rules[n]) return rules[n];
  let best: string | undefined;
  for (const k of Object.keys(rules)) if (k.startsWith('*.') && n.endsWith(k.slice(1)) && (!best || k.length > best.length)) best = k;
  return best ? rules[best] : undefined;
}

/** The headers of matching rules, in order (a later rule's header replaces an earlier one's). */
export function ruleHeaders(list: EgressRule[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const r of list) for (const [k, v] of Object.entries(r.transform?.headers ?? {})) out[k.toLowerCase()] = v;
  return out;
}

/** Resolves placeholders with the given secret values; undefined when one is missing now. */
export async function resolvePlaceholders(value: string, secret: (name: string) => Promise<string | undefined>): Promise<string | undefined> {
  let out = '';
  let at = 0;
  for (const m of value.matchAll(SECRET_PLACEHOLDER)) {
    const v = await secret(m[1]!.toLowerCase());
    if (v === undefined || /[\r\n\0]/.test(v)) return undefined;
    out += value.slice(at, m.index) + v;
    at = m.index! + m[0].length;
  }
  return out + value.slice(at);
}
