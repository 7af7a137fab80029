// What a context's kernel is to the server: something that runs code and reports what
// happened as the wire's events (see ../../../shared/docs/code-interpreter-contract.md §2.4).

/** One event of an execution's stream, as the SDK reads it. */
export type OutEvent =
  | { type: 'number_of_executions'; execution_count: number }
  | { type: 'stdout' | 'stderr'; text: string; timestamp: string }
  | { type: 'error'; name: string; value: string; traceback: string }
  | ({ type: 'result'; is_main_result: boolean; extra: Record<string, unknown> } & Record<string, unknown>);

export type Emit = (event: OutEvent) => void;

export interface ExecuteOptions {
  /** A helper execution (cwd, env vars): not counted, no history. */
  silent?: boolean;
}

export interface Kernel {
  /** Runs code to its end (or its interruption), passing each event as it happens. */
  execute(code: string, emit: Emit, opts?: ExecuteOptions): Promise<void>;
  /** Stops the running execution; the kernel keeps its state and takes the next one. */
  interrupt(): Promise<void>;
  /** A fresh kernel under the same id: all state is gone. */
  restart(): Promise<void>;
  shutdown(): Promise<void>;
}

export const now = (): string => new Date().toISOString();

export function errorEvent(name: string, value: string, traceback = ''): OutEvent {
  return { type: 'error', name, value, traceback };
}
