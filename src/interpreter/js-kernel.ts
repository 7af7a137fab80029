// The JavaScript/TypeScript kernel: a Node process (the sandbox's bundled node) that runs each
// cell through Node's own REPL evaluator, which keeps declarations between cells, accepts
// top-level await (the awaited value is the result) and breaks a running cell on SIGINT.
// Requests ({token, code, typescript}) arrive as lines on fd 3; the reply goes back there,
// then the end markers on stdout and stderr (see process-kernel.ts).
import { writeSync } from 'node:fs';
import net from 'node:net';
import { createInterface } from 'node:readline';
import repl from 'node:repl';
import { PassThrough } from 'node:stream';
import { inspect } from 'node:util';

const SEP = '\x1e';
const control = new net.Socket({ fd: 3, readable: true, writable: true });
const sink = new PassThrough();
sink.resume();
const server = repl.start({ input: new PassThrough(), output: sink, terminal: false, useGlobal: true, breakEvalOnSigint: true, prompt: '' });

interface Reply {
  token: string;
  result?: Record<string, unknown>;
  error?: { name: string; value: string; traceback: string };
}

let current: { token: string; finished: boolean } | undefined;

function finish(reply: Reply): void {
  if (!current || current.token !== reply.token || current.finished) return;
  current.finished = true;
  control.write(JSON.stringify(reply) + '\n');
  writeSync(1, `${SEP}${reply.token}${SEP}`);
  writeSync(2, `${SEP}${reply.token}${SEP}`);
  current = undefined;
}

function errorOf(err: unknown): NonNullable<Reply['error']> {
  if (err instanceof Error) return { name: err.name, value: err.message, traceback: err.stack ?? `${err.name}: ${err.message}` };
  return { name: 'Error', value: inspect(err), traceback: inspect(err) };
}

/** Static imports become dynamic ones, which the REPL accepts: `import x from 'm'` -> `const x = (await import('m')).default`. */
function rewriteImports(code: string): string {
  return code.replace(
    /^[ \t]*import\s+(?:(\*\s+as\s+\w+|\{[^}]*\}|\w+(?:\s*,\s*(?:\{[^}]*\}|\*\s+as\s+\w+))?)\s+from\s+)?(['"][^'"]+['"])\s*;?/gm,
    (_m, what: string | undefined, spec: string) => {
      if (!what) return `await import(${spec});`;
      const parts: string[] = [];
      const mod = `(await import(${spec}))`;
      for (const piece of what.split(/,(?![^{]*\})/).map((p) => p.trim())) {
        if (piece.startsWith('*')) parts.push(`var ${piece.replace(/^\*\s+as\s+/, '')} = ${mod};`);
        else if (piece.startsWith('{')) parts.push(`var ${piece.replace(/\s+as\s+/g, ': ')} = ${mod};`);
        else parts.push(`var ${piece} = ${mod}.default;`);
      }
      return parts.join(' ');
    },
  );
}

let stripTypes: ((code: string) => string) | undefined;

async function run(token: string, code: string, typescript: boolean): Promise<void> {
  current = { token, finished: false };
  let source: string;
  try {
    if (typescript && !stripTypes) {
      // a bundle of its own (ts-strip.ts, large): loaded by TypeScript contexts only
      const mod = (await import(new URL('./ts-strip.mjs', import.meta.url).href)) as { stripTypes: (code: string) => string };
      stripTypes = mod.stripTypes;
    }
    source = rewriteImports(typescript ? stripTypes!(code) : code);
  } catch (err) {
    return finish({ token, error: errorOf(err) });
  }
  if (!source.trim()) return finish({ token });
  // Node's SIGINT watchdog breaks synchronous code only while no SIGINT listener is set.
  process.removeListener('SIGINT', onSigint);
  try {
    server.eval(source, server.context, 'cell', (err, value) => {
      if (err) return finish({ token, error: errorOf(err) });
      if (value === undefined) return finish({ token });
      finish({ token, result: { 'text/plain': inspect(value, { depth: 4, colors: false }) } });
    });
  } finally {
    process.on('SIGINT', onSigint);
  }
}

// The REPL hands a cell's uncaught error to its domain rather than to the eval callback.
(server as unknown as { _domain: NodeJS.EventEmitter })._domain.on('error', (err: unknown) => {
  if (current) finish({ token: current.token, error: errorOf(err) });
});

// An interrupt while the cell waits on a promise (the REPL breaks only synchronous code).
function onSigint(): void {
  if (current) finish({ token: current.token, error: { name: 'KeyboardInterrupt', value: 'Execution interrupted', traceback: '' } });
}
process.on('SIGINT', onSigint);
process.on('uncaughtException', (err) => {
  if (current) finish({ token: current.token, error: errorOf(err) });
  else writeSync(2, `${inspect(err)}\n`);
});
process.on('unhandledRejection', (err) => {
  if (current) finish({ token: current.token, error: errorOf(err) });
});

createInterface({ input: control }).on('line', (line) => {
  const req = JSON.parse(line) as { token: string; code: string; typescript?: boolean };
  void run(req.token, req.code, req.typescript === true);
});
control.on('close', () => process.exit(0));
