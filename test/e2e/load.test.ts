// Load through the real service with the published SDK: many concurrent clients
// over several sandboxes loop commands with unique output and file writes, reads and listings;
// every result is checked, byte for byte. Bounded in CI; `npm run soak` runs it for 10 minutes.
//
//   CUBEBOX_LOAD_SECONDS    how long the clients loop (default 25; 600 with CUBEBOX_SOAK=1)
//   CUBEBOX_LOAD_CLIENTS    concurrent SDK clients (default 100)
//   CUBEBOX_LOAD_SANDBOXES  sandboxes the clients share (default 20)
//
// It prints ops/s and p50/p99 per operation; it never asserts a timing.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

const soak = process.env.CUBEBOX_SOAK === '1';
const SECONDS = Number(process.env.CUBEBOX_LOAD_SECONDS ?? (soak ? 600 : 25));
const CLIENTS = Number(process.env.CUBEBOX_LOAD_CLIENTS ?? 100);
const SANDBOXES = Number(process.env.CUBEBOX_LOAD_SANDBOXES ?? 20);

type Op = 'command' | 'write' | 'read' | 'list';

const pct = (sorted: number[], p: number) => (sorted.length ? (sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number) : NaN);

describe(`load: ${CLIENTS} SDK clients over ${SANDBOXES} sandboxes for ${SECONDS} s`, { timeout: (SECONDS + 900) * 1000 }, () => {
  let e2b: E2B;
  let svc: Service;
  let dataDir: string;
  const ids: string[] = [];

  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService());
  });

  after(async () => {
    for (const id of ids) await e2b.Sandbox.kill(id).catch(() => undefined);
    await svc?.stop();
    if (dataDir) await destroyInstance(undefined, dataDir);
  });

  it('every command output and every file is exact, whatever the load', async () => {
    for (let i = 0; i < SANDBOXES; i++) ids.push((await e2b.Sandbox.create('base', { timeoutMs: (SECONDS + 600) * 1000 })).sandboxId);
    // Each client is its own SDK object connected to one sandbox, as separate programs would be.
    const clients = await Promise.all(Array.from({ length: CLIENTS }, (_, c) => e2b.Sandbox.connect(ids[c % SANDBOXES] as string)));

    const lat: Record<Op, number[]> = { command: [], write: [], read: [], list: [] };
    const wrong: string[] = [];
    const errors: string[] = [];
    let emptyStdout = 0;
    const deadline = Date.now() + SECONDS * 1000;
    const timed = async <T>(op: Op, f: () => Promise<T>): Promise<T> => {
      const t0 = process.hrtime.bigint();
      const r = await f();
      lat[op].push(Number(process.hrtime.bigint() - t0) / 1e6);
      return r;
    };
    const t0 = process.hrtime.bigint();
    await Promise.all(
      clients.map(async (sbx, c) => {
        const dir = `/home/user/load/c${c}`;
        for (let i = 0; Date.now() < deadline; i++) {
          const tag = `c${c}-${i}-${Math.random().toString(36).slice(2, 12)}`;
          try {
            if (i % 4 !== 1) {
              const r = await timed('command', () => sbx.commands.run(`echo ${tag}; echo err-${tag} >&2`));
              if (r.stdout === '') emptyStdout++;
              if (r.exitCode !== 0 || r.stdout !== `${tag}\n` || r.stderr !== `err-${tag}\n`) {
                wrong.push(`command ${tag}: exit ${r.exitCode} stdout ${JSON.stringify(r.stdout)} stderr ${JSON.stringify(r.stderr)}`);
              }
            } else {
              const content = `${tag}\n`.repeat(1 + (i % 50));
              const path = `${dir}/f${i % 3}.txt`;
              await timed('write', () => sbx.files.write(path, content));
              const back = await timed('read', () => sbx.files.read(path));
              if (back !== content) wrong.push(`read ${path}: ${back.length} bytes, want ${content.length}`);
              const names = (await timed('list', () => sbx.files.list(dir))).map((e) => e.name);
              if (!names.includes(`f${i % 3}.txt`)) wrong.push(`list ${dir}: ${JSON.stringify(names)} lacks f${i % 3}.txt`);
            }
          } catch (e) {
            errors.push(`${tag}: ${(e as Error).name}: ${(e as Error).message}`);
          }
        }
      }),
    );
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const total = Object.values(lat).reduce((n, l) => n + l.length, 0);
    console.log(
      `load: ${CLIENTS} clients, ${SANDBOXES} sandboxes, ${wall.toFixed(1)} s: ${total} operations, ${(total / wall).toFixed(1)} ops/s, ${wrong.length} wrong, ${errors.length} errors`,
    );
    for (const [op, l] of Object.entries(lat)) {
      const s = [...l].sort((a, b) => a - b);
      console.log(`  ${op.padEnd(8)} n=${String(s.length).padStart(6)}  p50 ${pct(s, 50).toFixed(1)} ms  p99 ${pct(s, 99).toFixed(1)} ms`);
    }
    assert.ok(lat.command.length >= CLIENTS, 'every client ran at least one command');
    assert.deepEqual(wrong.slice(0, 20), [], `${wrong.length} wrong results (${emptyStdout} commands with an empty stdout)`);
    assert.deepEqual(errors.slice(0, 20), [], `${errors.length} failed operations`);
  });
});
