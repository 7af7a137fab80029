// The control plane from the page: the API key lives in this tab's session storage and goes out
// only as the X-API-Key header of same-origin requests (never in a URL, never in a cookie).
const KEY = 'cubebox.apiKey';

export const apiKey = (): string | null => sessionStorage.getItem(KEY);
export const logIn = (key: string): void => sessionStorage.setItem(KEY, key);
export const logOut = (): void => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Listeners told when a request finds the key refused (the app goes back to the login form). */
export const unauthorized = new Set<() => void>();

export interface Reply<T> {
  body: T;
  headers: Headers;
}

export async function request<T>(path: string, init: { method?: string; body?: unknown; key?: string } = {}): Promise<Reply<T>> {
  const key = init.key ?? apiKey() ?? '';
  const headers: Record<string, string> = { 'X-API-Key': key };
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(path, {
    method: init.method ?? 'GET',
    headers,
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
    cache: 'no-store',
    credentials: 'omit',
  });
  const text = await r.text();
  let body: unknown;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = text;
  }
  if (!r.ok) {
    if (r.status === 401 && init.key === undefined) unauthorized.forEach((f) => f());
    const msg = body && typeof body === 'object' && 'message' in body ? String((body as { message: unknown }).message) : r.statusText;
    throw new ApiError(r.status, msg);
  }
  return { body: body as T, headers: r.headers };
}

export const api = async <T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> => (await request<T>(path, init)).body;

// ---- the bodies the dashboard reads (E2B's, as cubebox answers them)

export interface ListedSandbox {
  sandboxID: string;
  templateID: string;
  alias?: string;
  startedAt: string;
  endAt: string;
  state: 'running' | 'paused';
  cubeboxState?: string;
  error?: string;
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
  metadata: Record<string, string>;
}

export interface SandboxDetail extends ListedSandbox {
  envdVersion: string;
  envdAccessToken?: string;
  trafficAccessToken?: string;
  domain?: string;
  allowInternetAccess?: boolean;
  network?: {
    allowOut?: string[];
    denyOut?: string[];
    allowPublicTraffic?: boolean;
    /** Per-domain header transforms, as given (secrets as ${e2b.secrets.<name>} placeholders, never their values). */
    rules?: Record<string, Array<{ transform?: { headers?: Record<string, string> } }>>;
    /** The upstream SOCKS5 proxy (the API never shows its password). */
    egressProxy?: { address: string; username?: string };
  };
  lifecycle?: { onTimeout?: string; autoResume?: boolean };
}

export interface Metric {
  timestampUnix: number;
  cpuCount: number;
  cpuUsedPct: number;
  memUsed: number;
  memTotal: number;
  diskUsed: number;
  diskTotal: number;
}

export interface Team {
  teamID: string;
  name: string;
  apiKey: string;
  isDefault: boolean;
}

export function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
