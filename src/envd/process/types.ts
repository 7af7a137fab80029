// The shapes shared by the process table, a process and its streams: output events, the end
// of a process, the subscriber a stream attaches, and what a process is started with.
import type { UserInfo } from '../users.js';

/** Largest data event sent to a client. */
export const MAX_CHUNK = 32 * 1024;
export type OutputKind = 'stdout' | 'stderr' | 'pty';

export interface EndInfo {
  exitCode: number;
  exited: boolean;
  status: string;
  error?: string;
}

export type ProcOutput = { kind: 'data'; stream: OutputKind; data: Buffer } | { kind: 'end'; end: EndInfo };

export interface Subscriber {
  push(ev: ProcOutput): void;
  congested(): boolean;
}

export interface ProcessConfigInfo {
  cmd: string;
  args: string[];
  envs: Record<string, string>;
  cwd?: string;
}

export interface SpawnSpec {
  file: string;
  args: string[];
  env: Record<string, string>;
  cwd: string;
  user: UserInfo;
  pty?: { cols: number; rows: number };
  stdin: boolean;
  tag?: string;
  /** The configuration as requested, reported by List. */
  config: ProcessConfigInfo;
  /** Process deadline: the whole session is killed when it passes. */
  timeoutMs?: number;
}
