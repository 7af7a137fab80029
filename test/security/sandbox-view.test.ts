// What a sandbox learns about the host and its own boot from inside: the per-boot /init secret
// is in no process's environment or file, /proc/meminfo shows the sandbox's memory limit and
// /proc/self/mountinfo no host path; and a command's processes (background children, a fork
// storm under the pids limit) never outlive it.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import type { RuntimeName } from '../../src/runtime/registry.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import type { StoredSpec } from '../../src/sandbox/types.js';
import { assertNoSandboxLeaks, destroyInstance, newInstance } from '../helpers/instance.js';
import { sh } from './helpers.js';

/** Reads every process's environ and cmdline (as whoever runs it); prints what it read, and a count. */
const READ_ALL_PROC = 'n=0; for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; n=$((n+1)); echo; done; echo "processes=$n"';

/** Runs a command through envd's process API on its socket (as the host's proxy would); resolves with its stdout and end. */
function envdRun(
  m: SandboxManager,
  id: string,
  cmd: string,
  opts: { timeoutMs?: number; user?: string } = {},
): Promise<{ stdout: string; end: Record<string, unknown> | undefined; pid: number }> {
  const body = JSON.stringify({ process: { cmd: '/bin/sh', args: ['-c', cmd] } });
  const head = Buffer.alloc(5);
  head.writeUInt32BE(Buffer.byteLength(body), 1);
  const token = m.get(id).accessToken;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath: m.envdSocket(id),
        path: '/process.Process/Start',
        method: 'POST',
        headers: {
          'content-type': 'application/connect+json',
          'connect-protocol-version': '1',
          authorization: `Basic ${Buffer.from(`${opts.user ?? 'root'}:`).toString('base64')}`,
          ...(token ? { 'x-access-token': token } : {}),
          ...(opts.timeoutMs ? { 'connect-timeout-ms': String(opts.timeoutMs) } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('error', reject);
        res.on('end', () => {
          let buf = Buffer.concat(chunks);
          let stdout = '';
          let end: Record<string, unknown> | undefined;
          let pid = 0;
          while (buf.length >= 5) {
            const len = buf.readUInt32BE(1);
            const msg = JSON.parse(buf.subarray(5, 5 + len).toString('utf8')) as { event?: Record<string, Record<string, unknown>> };
            buf = buf.subarray(5 + len);
            const ev = msg.event;
            if (ev?.start) pid = ev.start.pid as number;
            if (ev?.data?.stdout) stdout += Buffer.from(ev.data.stdout as string, 'base64').toString();
            if (ev?.end) end = ev.end;
          }
          resolve({ stdout, end, pid });
        });
      },
    );
    req.on('error', reject);
    req.end(Buffer.concat([head, Buffer.from(body)]));
  });
}

/** Polls cond (a sandbox-side check) until it holds; never a wall-clock assertion, only a bound on tries. */
async function eventually(cond: () => Promise<boolean>, tries = 100): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/**
 * How many `sleep` processes run in the sandbox, counted with shell builtins only (no fork: the
 * pids limit may be full), or NaN when the count could not run to its end.
 */
async function countSleeps(m: SandboxManager, id: string): Promise<number> {
  const r = await sh(
    m,
    id,
    'n=0; for p in /proc/[0-9]*; do read -r s < $p/stat 2>/dev/null; case "$s" in *"(sleep)"*) n=$((n+1));; esac; done; echo "sleeps=$n"',
  );
  const got = /^sleeps=(\d+)$/.exec(r.out);
  return got ? Number(got[1]) : NaN;
}

for (const runtime of ['crun', 'runsc'] as RuntimeName[]) {
  describe(`what a sandbox sees of its boot (${runtime})`, { timeout: 300_000 }, () => {
    let m: SandboxManager;
    let id: string;
    before(async () => {
      m = await newInstance({ runtime });
      // a tight pids limit for the fork storm; gVisor's own host threads count against it, so runsc keeps the default
      id = (await m.create({ template: 'busybox', limits: { memoryMB: 384, ...(runtime === 'runsc' ? {} : { pids: 64 }) } })).id;
    });
    after(async () => {
      if (id) {
        await m.delete(id);
        assertNoSandboxLeaks(m.paths, id);
      }
      await destroyInstance(m);
    });

    it('the /init secret is in no process environment, command line or file, for root or user', async () => {
      const secret = (JSON.parse(m.store.getSandbox(id)!.spec) as StoredSpec).initSecret;
      assert.ok(secret && secret.length >= 16);
      const asRoot = await sh(m, id, READ_ALL_PROC);
      assert.match(asRoot.out, /processes=[3-9]|processes=\d\d/); // tini, envd and the reader at least
      assert.ok(!asRoot.out.includes(secret), 'the secret is readable by sandbox root in /proc');
      assert.doesNotMatch(asRoot.out, /CUBEBOX_ENVD_INIT_SECRET=/);
      const asUser = await sh(m, id, `su user -s /bin/sh -c '${READ_ALL_PROC}'`);
      assert.ok(!asUser.out.includes(secret), 'the secret is readable by user in /proc');
      // the file it came in is gone, and nothing under the run directory holds it
      const files = await sh(m, id, 'ls -a /.cubebox/run; cat /.cubebox/run/* 2>/dev/null; true');
      assert.ok(!files.out.includes('init-secret') && !files.out.includes(secret), files.out);
      // and what envd starts sees none of it
      const env = await envdRun(m, id, 'cat /proc/1/environ /proc/self/environ; env');
      assert.ok(!env.stdout.includes(secret), env.stdout);
    });

    it(
      'a killed or timed-out command ends with its whole tree; a fork storm stays under the pids limit',
      { skip: runtime === 'runsc' && "the process tree is envd's: one runtime shows it" },
      async () => {
        // a natural end leaves background jobs running, as E2B's envd does (servers started with `&`)
        const bg = await envdRun(m, id, 'sleep 1001 >/dev/null 2>&1 & echo started');
        assert.equal(bg.stdout, 'started\n');
        assert.equal(await countSleeps(m, id), 1, 'a background job died with its command');
        await sh(m, id, 'kill -9 $(pidof sleep)');
        assert.ok(await eventually(async () => (await countSleeps(m, id)) === 0));
        // a fork storm: the limit holds it (forks fail), and it dies with its command's deadline
        // the command forks once (a subshell that starts the storm; its own forks may fail at the
        // limit, which only ends the subshell), then execs: it lives until its deadline whatever
        // the storm takes (a leader whose fork failed would end by itself, leaving its jobs running)
        const storm = await envdRun(m, id, 'f() { while :; do sleep 1004 & done; }; (f & f & f &); exec sleep 1005', { timeoutMs: 1500 });
        assert.ok(storm.pid > 0);
        if (!(await eventually(async () => (await countSleeps(m, id)) === 0))) {
          const dump = await sh(m, id, 'for p in /proc/[0-9]*; do read -r s < $p/stat 2>/dev/null && echo "$s"; done');
          assert.fail(`the fork storm outlived its command:\n${dump.out}`);
        }
        // the limit held it: forks were refused at 64 processes
        const pids = async () =>
          (
            await sh(
              m,
              id,
              'cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids/pids.events 2>/dev/null || cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids.events',
            )
          ).out;
        assert.ok(await eventually(async () => /^64\nmax [1-9]\d*$/.test(await pids())), await pids());
        // the sandbox works on
        assert.equal((await envdRun(m, id, 'echo alive')).stdout, 'alive\n');
      },
    );

    it('a sandbox weighs by its vCPUs under CPU contention', { skip: runtime === 'runsc' && 'gVisor has no cgroup files inside' }, async () => {
      const small = (await m.create({ template: 'busybox', agent: false, limits: { cpuCount: 0.5 } })).id;
      try {
        const r = await sh(m, small, 'cat /sys/fs/cgroup/cpu/cpu.shares 2>/dev/null || cat /sys/fs/cgroup/cpu.weight');
        // v1 shares; v2 the runtimes' mapping of 512 shares (weight 100 is 1024 shares' host default elsewhere)
        assert.ok(r.out === '512' || r.out === String(1 + Math.floor(((512 - 2) * 9999) / 262142)), r.out);
      } finally {
        await m.delete(small);
        assertNoSandboxLeaks(m.paths, small);
      }
    });

    it("meminfo shows the sandbox's memory limit and mountinfo no path of the host's data directory", async () => {
      const mem = await sh(m, id, 'grep MemTotal /proc/meminfo');
      assert.match(mem.out, new RegExp(`^MemTotal:\\s+${384 * 1024} kB$`));
      const info = await sh(m, id, 'cat /proc/self/mountinfo');
      assert.equal(info.code, 0);
      assert.ok(!info.out.includes(m.paths.dataDir), info.out);
      assert.doesNotMatch(info.out, /\/sandboxes\/|\/support\/|cubebox-test|\/var\/lib\/cubebox/);
    });
  });
}
