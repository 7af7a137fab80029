// Output under load: many concurrent clients start short commands on one envd (over its unix
// socket, as the host proxy does) and every byte of every command's output must arrive, before
// the end event, with the right exit code. (Under load, commands once returned an
// empty stdout with exit code 0.)
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, request } from 'node:http';
import { envelope, startTestEnvd, type TestEnvd } from './helpers.js';

interface RunResult {
  stdout: Buffer;
  stderr: Buffer;
  exitCode?: number;
  endSeen: boolean;
  endStream?: Record<string, unknown>;
  afterEnd: number;
}

/** Process.Start over the unix socket; collects every event until the end-stream envelope. */
function startOverSocket(agent: Agent, socketPath: string, cmd: string, user = 'user'): Promise<RunResult> {
  const body = envelope({ process: { cmd: '/bin/bash', args: ['-l', '-c', cmd], envs: {} }, stdin: false });
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        agent,
        method: 'POST',
        path: '/process.Process/Start',
        headers: {
          'Content-Type': 'application/connect+json',
          'Connect-Protocol-Version': '1',
          Authorization: `Basic ${Buffer.from(`${user}:`).toString('base64')}`,
          'Content-Length': body.length,
        },
      },
      (res) => {
        const out: RunResult = { stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), endSeen: false, afterEnd: 0 };
        const outs: Buffer[] = [];
        const errs: Buffer[] = [];
        let buf = Buffer.alloc(0);
        res.on('data', (c: Buffer) => {
          buf = Buffer.concat([buf, c]);
          while (buf.length >= 5) {
            const len = buf.readUInt32BE(1);
            if (buf.length < 5 + len) break;
            const flags = buf.readUInt8(0);
            const json = JSON.parse(buf.subarray(5, 5 + len).toString('utf8')) as Record<string, unknown>;
            buf = buf.subarray(5 + len);
            if (flags & 2) {
              out.endStream = json;
              continue;
            }
            const ev = (json.event ?? {}) as Record<string, Record<string, unknown>>;
            if (ev.data) {
              if (out.endSeen) out.afterEnd++;
              if (typeof ev.data.stdout === 'string') outs.push(Buffer.from(ev.data.stdout, 'base64'));
              if (typeof ev.data.stderr === 'string') errs.push(Buffer.from(ev.data.stderr, 'base64'));
            }
            if (ev.end) {
              out.endSeen = true;
              out.exitCode = Number(ev.end.exitCode ?? 0);
            }
          }
        });
        res.on('end', () => {
          out.stdout = Buffer.concat(outs);
          out.stderr = Buffer.concat(errs);
          if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
          else resolve(out);
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('envd output under load', () => {
  let envd: TestEnvd;
  const agent = new Agent({ keepAlive: true, maxSockets: 200 });

  before(async () => {
    envd = await startTestEnvd();
  });
  after(async () => {
    agent.destroy();
    await envd?.stop();
  });

  async function hammer(clients: number, perClient: number, command: (tag: string) => { cmd: string; expect: Buffer; expectErr?: Buffer }): Promise<void> {
    const failures: string[] = [];
    let done = 0;
    await Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        for (let i = 0; i < perClient; i++) {
          const tag = `c${c}-i${i}-${Math.random().toString(36).slice(2, 10)}`;
          const { cmd, expect, expectErr } = command(tag);
          const r = await startOverSocket(agent, envd.socket, cmd);
          done++;
          if (!r.endSeen) failures.push(`${tag}: no end event`);
          else if (r.exitCode !== 0) failures.push(`${tag}: exit ${r.exitCode}`);
          if (r.endStream && Object.keys(r.endStream).length) failures.push(`${tag}: end-stream ${JSON.stringify(r.endStream)}`);
          if (r.afterEnd) failures.push(`${tag}: ${r.afterEnd} data events after the end event`);
          if (!r.stdout.equals(expect))
            failures.push(`${tag}: stdout ${r.stdout.length} bytes, want ${expect.length} (${JSON.stringify(r.stdout.subarray(0, 40).toString())})`);
          if (expectErr && !r.stderr.equals(expectErr)) failures.push(`${tag}: stderr ${r.stderr.length} bytes, want ${expectErr.length}`);
        }
      }),
    );
    assert.equal(done, clients * perClient);
    assert.deepEqual(failures.slice(0, 20), [], `${failures.length} of ${done} commands lost or garbled output`);
  }

  test('100 concurrent clients: every echo arrives, exactly once, before the end', async () => {
    await hammer(100, 8, (tag) => ({ cmd: `echo ${tag}`, expect: Buffer.from(`${tag}\n`) }));
  });

  test('output that exceeds a pipe buffer, on stdout and stderr, under concurrency', async () => {
    // 200 KB on each stream: the writes outlast the pipe buffer, the exit follows the last write.
    await hammer(30, 3, (tag) => ({
      cmd: `for s in 1 2; do head -c 100000 /dev/zero | tr '\\0' x; done; echo ${tag}; head -c 200000 /dev/zero | tr '\\0' e >&2`,
      expect: Buffer.concat([Buffer.alloc(200_000, 'x'), Buffer.from(`${tag}\n`)]),
      expectErr: Buffer.alloc(200_000, 'e'),
    }));
  });

  test('output written by a process that exits at once (no shell in between)', async () => {
    await hammer(100, 5, (tag) => ({ cmd: `exec /bin/echo ${tag}`, expect: Buffer.from(`${tag}\n`) }));
  });
});
