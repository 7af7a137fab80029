// Mutable state of envd, set by POST /init.
import type { UserDb } from './users.js';

export interface EnvdOptions {
  socketPath?: string;
  port: number;
  hosts: string[];
  passwdPath: string;
  groupPath: string;
  stateDir: string;
  helperPath?: string;
  cgroupRoot: string;
  defaultUser: string;
  accessToken?: string;
  /** When set, /init requires it in the INIT_SECRET_HEADER header, on every listener. */
  initSecret?: string;
}

export class EnvdState {
  envVars: Record<string, string> = {};
  private token?: string;
  /** Called whenever a token is set (the TCP listener waits for one). */
  onToken?: () => void;
  defaultUser: string;
  defaultWorkdir?: string;
  /** Timestamp (ms) of the last applied /init, to ignore stale ones. */
  lastInit = 0;

  constructor(
    readonly opts: EnvdOptions,
    readonly users: UserDb,
  ) {
    this.defaultUser = opts.defaultUser;
    this.accessToken = opts.accessToken;
  }

  get accessToken(): string | undefined {
    return this.token;
  }

  set accessToken(v: string | undefined) {
    this.token = v;
    if (v) this.onToken?.();
  }
}
