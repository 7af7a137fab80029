// The Fetch API's Headers, for envd's bundle only (scripts/build-envd.mjs injects it for the global
// `Headers` the Connect libraries use). Node's own Headers is undici's: its first use loads undici
// with tls, http2 and worker_threads, about 50-90 ms of CPU and 3 MB of heap on a small host,
// which every sandbox would pay on its first command. Same semantics for what envd does with
// headers: case-insensitive names, values trimmed and combined with ", ", iteration sorted by
// name with set-cookie values kept apart, TypeError on invalid names and values.

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// leading and trailing HTTP whitespace (tab, LF, CR, space)
const EDGE_WS = /^[\t\n\r ]+|[\t\n\r ]+$/g;

type Init = Headers | Iterable<readonly [string, string]> | Iterable<readonly string[]> | Record<string, string | readonly string[]> | undefined;

function normalizeName(name: string): string {
  const n = String(name);
  if (!TOKEN.test(n)) throw new TypeError(`Headers: invalid header name: "${n}"`);
  return n.toLowerCase();
}

function normalizeValue(value: string): string {
  const v = String(value).replace(EDGE_WS, '');
  if (/[\0\r\n]/.test(v)) throw new TypeError(`Headers: invalid header value: "${v}"`);
  return v;
}

export class EnvdHeaders {
  // lower-case name -> values in insertion order
  private readonly map = new Map<string, string[]>();

  constructor(init?: Init) {
    if (init === undefined || init === null) return;
    if (init instanceof EnvdHeaders) {
      for (const [k, v] of init.map) this.map.set(k, [...v]);
    } else if (typeof (init as Iterable<unknown>)[Symbol.iterator] === 'function') {
      for (const pair of init as Iterable<readonly string[]>) {
        const p = [...pair];
        if (p.length !== 2) throw new TypeError('Headers: a header pair must have exactly two items');
        this.append(p[0] as string, p[1] as string);
      }
    } else if (typeof init === 'object') {
      for (const k of Object.keys(init)) this.append(k, (init as Record<string, string>)[k] as string);
    } else {
      throw new TypeError('Headers: invalid init');
    }
  }

  append(name: string, value: string): void {
    const k = normalizeName(name);
    const v = normalizeValue(value);
    const cur = this.map.get(k);
    if (cur) cur.push(v);
    else this.map.set(k, [v]);
  }

  set(name: string, value: string): void {
    this.map.set(normalizeName(name), [normalizeValue(value)]);
  }

  delete(name: string): void {
    this.map.delete(normalizeName(name));
  }

  has(name: string): boolean {
    return this.map.has(normalizeName(name));
  }

  get(name: string): string | null {
    const v = this.map.get(normalizeName(name));
    return v ? v.join(', ') : null;
  }

  getSetCookie(): string[] {
    return [...(this.map.get('set-cookie') ?? [])];
  }

  /** Sorted by name, values combined, each set-cookie on its own (the Fetch spec's "sort and combine"). */
  *entries(): IterableIterator<[string, string]> {
    for (const k of [...this.map.keys()].sort()) {
      const v = this.map.get(k);
      if (!v) continue;
      if (k === 'set-cookie') for (const c of v) yield [k, c];
      else yield [k, v.join(', ')];
    }
  }

  *keys(): IterableIterator<string> {
    for (const [k] of this.entries()) yield k;
  }

  *values(): IterableIterator<string> {
    for (const [, v] of this.entries()) yield v;
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }

  forEach(cb: (value: string, name: string, parent: EnvdHeaders) => void, thisArg?: unknown): void {
    for (const [k, v] of this.entries()) cb.call(thisArg, v, k, this);
  }

  get [Symbol.toStringTag](): string {
    return 'Headers';
  }
}

export { EnvdHeaders as Headers };
