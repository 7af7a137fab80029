import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { formatLeaks, LeakChecker } from '../../src/sandbox/leaks.js';
import { RemoteApi } from '../../src/api/control-client.js';
import type { SandboxInfo } from '../../src/sandbox/manager.js';
import { cli, destroyInstance, newDataDir, startServe, waitExit } from '../helpers/instance.js';

/**
 * `cubebox serve` is killed with SIGKILL at random points while 10 sandboxes go through
 * create, pause, pause without memory, resume and delete. After each restart every sandbox
 * must be in a consistent state, cold-paused ones must still hold their files, nothing may
 * leak and no sandbox may have sat in a transitional state past its deadline.
 * CUBEBOX_FAULT_ROUNDS sets the number of faults (default 6; `npm run soak` runs many).
 */
const ROUNDS = Number(process.env.CUBEBOX_FAULT_ROUNDS ?? 6);
const SANDBOXES = 10;
/** The manager's deadlines (STATE_DEADLINE_MS), plus the reconciler's period and a margin. */
const DEADLINE_MS: Record<string, number> = { creating: 120_000, pausing: 30_000, resuming: 30_000, deleting: 60_000 };
const MARGIN_MS = 15_000;
/** How long what looks left behind after a restart may take to go (warm network slots are made in the background). */
const LEAKS_SETTLE_MS = 10_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sink = () =>
  new Writable({
    write(_c, _e, cb) {
      cb();
    },
  });

class Collect extends Writable {
  text = '';
  override _write(c: Buffer, _e: BufferEncoding, cb: () => void) {
    this.text += c.toString();
    cb();
  }
}

describe('fault injection: SIGKILL of cubebox serve during lifecycle operations', () => {
  let dataDir: string;
  let serve: ChildProcess | undefined;
  before(async () => {
    dataDir = newDataDir();
    const r = await cli(dataDir, ['template', 'build', 'busybox']);
    assert.equal(r.code, 0, r.stderr);
  });
  after(async () => {
    if (serve) {
      serve.kill('SIGTERM');
      await waitExit(serve);
    }
    await destroyInstance(undefined, dataDir);
  });

  it(`${ROUNDS} SIGKILLs at random points: every sandbox converges`, async () => {
    const paths = openPaths(dataDir, false);
    const api = new RemoteApi(join(dataDir, 'manager.sock'));
    serve = await startServe(dataDir, { CUBEBOX_LOG_LEVEL: 'error' });
    /** Sandboxes whose marker file (/marker = their id) was written for sure. */
    const marked = new Set<string>();
    const seen = new Map<string, { state: string; since: number }>();
    let longest = { ms: 0, state: '', id: '' };
    let polling = true;
    // watches the states through the control socket (while serve is down nothing moves, and
    // the time still counts)
    const watcher = (async () => {
      while (polling) {
        let list: SandboxInfo[] | undefined;
        try {
          list = await api.list();
        } catch {
          /* serve is down */
        }
        if (list) {
          const now = Date.now();
          const ids = new Set(list.map((s) => s.id));
          for (const id of seen.keys()) if (!ids.has(id)) seen.delete(id);
          for (const s of list) {
            const prev = seen.get(s.id);
            if (!prev || prev.state !== s.state) seen.set(s.id, { state: s.state, since: prev && prev.state === s.state ? prev.since : now });
            const cur = seen.get(s.id)!;
            if (DEADLINE_MS[cur.state] !== undefined && now - cur.since > longest.ms) longest = { ms: now - cur.since, state: cur.state, id: s.id };
          }
        }
        await sleep(100);
      }
    })();

    let faults = 0;
    let converged = 0;
    let coldChecked = 0;
    const problems: string[] = [];
    const rnd = (n: number) => Math.floor(Math.random() * n);
    try {
      for (let round = 0; round < ROUNDS; round++) {
        // bring the set back to 10 sandboxes, each with its marker
        let live = await api.list();
        for (let i = live.length; i < SANDBOXES; i++) {
          const s = await api.create({ template: 'busybox', agent: false });
          if ((await api.exec(s.id, ['sh', '-c', `echo ${s.id} > /marker`], sink(), sink())) === 0) marked.add(s.id);
        }
        live = await api.list();

        // a storm of operations, cut by a SIGKILL at a random moment
        const ops: Promise<unknown>[] = [];
        for (const s of live) {
          const pick = rnd(10);
          const op = async () => {
            await sleep(rnd(300));
            if (s.state === 'running') {
              if (pick < 3) return api.pause(s.id);
              if (pick < 7) return api.pause(s.id, { memory: false });
              if (pick < 8) return api.delete(s.id);
              return api.exec(s.id, ['sh', '-c', 'echo x >> /log'], sink(), sink());
            }
            if (s.state === 'paused') return pick < 8 ? api.resume(s.id) : api.delete(s.id);
            return api.delete(s.id);
          };
          ops.push(op().catch(() => undefined));
        }
        for (let i = 0; i < 2; i++) ops.push(api.create({ template: 'busybox', agent: false }).catch(() => undefined));
        await sleep(50 + rnd(1500));
        serve.kill('SIGKILL');
        faults++;
        await waitExit(serve);
        await Promise.all(ops);

        serve = await startServe(dataDir, { CUBEBOX_LOG_LEVEL: 'error' });
        const bad: string[] = [];
        const after = await api.list();
        for (const s of after) {
          if (s.state === 'running') {
            const out = new Collect();
            const code = await api.exec(s.id, ['cat', '/marker'], out, sink()).catch((e: Error) => e.message);
            if (code !== 0 && marked.has(s.id)) bad.push(`${s.id}: running but exec failed (${code})`);
            else if (marked.has(s.id) && out.text.trim() !== s.id) bad.push(`${s.id}: marker reads '${out.text.trim()}'`);
          } else if (s.state === 'paused') {
            if (s.coldPaused && marked.has(s.id)) {
              const marker = join(paths.sandboxesDir, s.id, 'disk', 'upper', 'marker');
              if (!existsSync(marker) || readFileSync(marker, 'utf8').trim() !== s.id) bad.push(`${s.id}: cold-paused without its files`);
              coldChecked++;
            }
          } else {
            bad.push(`${s.id}: ${s.state} after the restart (${s.lastError})`);
          }
        }
        // host resources that no listed sandbox owns (the service's store is its own). The
        // restarted service makes its warm network slots in the background, and a slot being made
        // looks like one a crash left: what is left must stay left for a while to count
        const known = new Set(after.map((s) => s.id));
        let leaks = new LeakChecker(paths).instance(known);
        for (const until = Date.now() + LEAKS_SETTLE_MS; leaks.length && Date.now() < until;) {
          await sleep(250);
          leaks = new LeakChecker(paths).instance(known);
        }
        if (leaks.length) bad.push(`leaks:\n${formatLeaks(leaks)}`);
        if (bad.length) problems.push(`round ${round}: ${bad.join('; ')}`);
        else converged++;
      }
    } finally {
      polling = false;
      await watcher;
    }
    console.log(
      `fault injection: ${faults} SIGKILLs of cubebox serve, ${converged} converged; ${coldChecked} cold-paused sandboxes found with their files; longest in a transitional state: ${longest.ms} ms (${longest.state})`,
    );
    assert.deepEqual(problems, []);
    assert.equal(converged, faults);
    assert.ok(longest.ms <= (DEADLINE_MS[longest.state] ?? 0) + MARGIN_MS, `${longest.id} sat in ${longest.state} for ${longest.ms} ms`);

    for (const s of await api.list()) await api.delete(s.id);
  });
});
