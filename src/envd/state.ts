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
}

export class EnvdState {
  envVars: Record<string, string> = {};
  accessToken?: string;
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
}
