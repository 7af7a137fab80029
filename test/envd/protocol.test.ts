// The Connect protocol as envd speaks it, checked with plain fetch: envelopes, error shapes,
// end-stream, keepalives, chunking, stream/process independence and the process deadline.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { BASE_URL, envelope, eventually, isAlive, readEnvelopes, startTestEnvd, streamRequest, unaryRequest, type Envelope, type TestEnvd } from './helpers.js';

type Json = Record<string, unknown>;

async function collect(res: Response): Promise<Envelope[]> {
  const out: Envelope[] = [];
  for await (const e of readEnvelopes(res.body as ReadableStream<Uint8Array>)) out.push(e);
  return out;
}

function event(e: Envelope): Json {
  return (e.json.event ?? {}) as Json;
}

function stdoutOf(envs: Envelope[]): Buffer {
  return Buffer.concat(
    envs.map((e) => {
      const data = event(e).data as { stdout?: string } | undefined;
      return data?.stdout ? Buffer.from(data.stdout, 'base64') : Buffer.alloc(0);
    }),
  );
}

const start = (args: string[], extra: Json = {}) => ({ process: { cmd: '/bin/bash', args, envs: {} }, stdin: false, ...extra });

describe('envd Connect protocol', () => {
  let envd: TestEnvd;

  before(async () => {
    envd = await startTestEnvd();
  });
  after(async () => {
    await envd?.stop();
  });

  test('a normal stream: start, data, end, then an empty end-stream envelope', async () => {
    const res = await streamRequest('/process.Process/Start', start(['-c', 'echo hi']));
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/connect+json');
    const envs = await collect(res);
    assert.ok(envs.length >= 3);
    const first = envs[0] as Envelope;
    assert.equal(first.flags, 0);
    assert.ok(typeof (event(first).start as Json).pid === 'number');
    assert.equal(stdoutOf(envs).toString(), 'hi\n');
    const last = envs[envs.length - 1] as Envelope;
    assert.equal(last.flags, 2);
    assert.deepEqual(last.json, {});
    const end = envs[envs.length - 2] as Envelope;
    assert.deepEqual(end.json, { event: { end: { exitCode: 0, exited: true, status: 'exit status 0' } } });
    assert.ok(envs.slice(0, -1).every((e) => e.flags === 0));
  });

  test('non-zero exit: end event carries code, status and error', async () => {
    const envs = await collect(await streamRequest('/process.Process/Start', start(['-c', 'exit 5'])));
    const end = envs[envs.length - 2] as Envelope;
    assert.deepEqual(end.json, { event: { end: { exitCode: 5, exited: true, status: 'exit status 5', error: 'exit status 5' } } });
    assert.deepEqual((envs[envs.length - 1] as Envelope).json, {});
  });

  test('output is chunked into data events of at most 32 KiB', async () => {
    const envs = await collect(await streamRequest('/process.Process/Start', start(['-c', 'head -c 600000 /dev/zero'])));
    let total = 0;
    for (const e of envs) {
      const data = event(e).data as { stdout?: string } | undefined;
      if (!data?.stdout) continue;
      const n = Buffer.from(data.stdout, 'base64').length;
      assert.ok(n <= 32 * 1024, `chunk of ${n} bytes`);
      total += n;
    }
    assert.equal(total, 600000);
  });

  test('unary errors: status matches the code, JSON body', async () => {
    const res = await unaryRequest('/process.Process/SendSignal', { process: { pid: 9999999 }, signal: 'SIGNAL_SIGKILL' });
    assert.equal(res.status, 404);
    assert.equal(res.headers.get('content-type'), 'application/json');
    const body = (await res.json()) as Json;
    assert.equal(body.code, 'not_found');
    assert.equal(typeof body.message, 'string');

    const bad = await unaryRequest('/filesystem.Filesystem/ListDir', { path: '/', depth: 0 });
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as Json).code, 'invalid_argument');

    const exists = await unaryRequest('/filesystem.Filesystem/MakeDir', { path: '/tmp' });
    assert.equal(exists.status, 409);
    assert.equal(((await exists.json()) as Json).code, 'already_exists');

    const stat = await unaryRequest('/filesystem.Filesystem/Stat', { path: '/no/such/path' });
    assert.equal(stat.status, 404);
    assert.equal(((await stat.json()) as Json).code, 'not_found');

    const auth = await unaryRequest('/filesystem.Filesystem/Stat', { path: '/' }, { Authorization: 'Basic ' + Buffer.from('ghost:').toString('base64') });
    assert.equal(auth.status, 401);
    assert.equal(((await auth.json()) as Json).code, 'unauthenticated');
  });

  test('stream errors: 200 with a single end-stream envelope carrying the error', async () => {
    const res = await streamRequest('/process.Process/Connect', { process: { pid: 9999999 } });
    assert.equal(res.status, 200);
    const envs = await collect(res);
    assert.equal(envs.length, 1);
    assert.equal(envs[0]?.flags, 2);
    const err = (envs[0]?.json as { error: Json }).error;
    assert.equal(err.code, 'not_found');

    const cwd = await collect(await streamRequest('/process.Process/Start', { process: { cmd: '/bin/true', cwd: '/no/such/dir' } }));
    assert.equal((cwd[0]?.json as { error: Json }).error.code, 'invalid_argument');
    const cmd = await collect(await streamRequest('/process.Process/Start', { process: { cmd: 'no-such-command-here' } }));
    assert.equal((cmd[0]?.json as { error: Json }).error.code, 'invalid_argument');

    const watch = await collect(await streamRequest('/filesystem.Filesystem/WatchDir', { path: '/no/such/dir' }));
    assert.equal((watch[0]?.json as { error: Json }).error.code, 'not_found');
  });

  test('keepalive events after the requested interval of silence', async () => {
    const res = await streamRequest('/process.Process/Start', start(['-c', 'sleep 3; echo done']), { 'Keepalive-Ping-Interval': '1' });
    const envs = await collect(res);
    assert.ok(
      envs.some((e) => e.json.event !== undefined && 'keepalive' in event(e)),
      JSON.stringify(envs.map((e) => e.json)),
    );
    assert.equal(stdoutOf(envs).toString(), 'done\n');

    const ac = new AbortController();
    const w = await streamRequest('/filesystem.Filesystem/WatchDir', { path: envd.home }, { 'Keepalive-Ping-Interval': '1' }, ac.signal);
    const seen: Json[] = [];
    for await (const e of readEnvelopes(w.body as ReadableStream<Uint8Array>)) {
      seen.push(e.json);
      if ('keepalive' in e.json) break;
    }
    ac.abort();
    assert.deepEqual(seen[0], { start: {} });
    assert.deepEqual(seen[seen.length - 1], { keepalive: {} });
  });

  test('a client disconnect does not kill the process', async () => {
    const ac = new AbortController();
    const res = await streamRequest('/process.Process/Start', start(['-c', 'sleep 1000']), {}, ac.signal);
    const it = readEnvelopes(res.body as ReadableStream<Uint8Array>);
    const first = (await it.next()).value as Envelope;
    const pid = (event(first).start as { pid: number }).pid;
    ac.abort();
    await it.return(undefined).catch(() => {});
    // Give envd a moment to see the disconnect, then check the process is still there.
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(isAlive(pid));
    const list = (await (await unaryRequest('/process.Process/List', {})).json()) as { processes: { pid: number }[] };
    assert.ok(list.processes.some((p) => p.pid === pid));
    // Reconnect, then kill through SendSignal; the reconnected stream gets the end.
    const again = await streamRequest('/process.Process/Connect', { process: { pid } });
    const kill = await unaryRequest('/process.Process/SendSignal', { process: { pid }, signal: 'SIGNAL_SIGKILL' });
    assert.equal(kill.status, 200);
    const envs = await collect(again);
    assert.deepEqual(envs[0]?.json, { event: { start: { pid } } });
    assert.deepEqual(envs[envs.length - 2]?.json, { event: { end: { exitCode: -1, exited: false, status: 'signal: killed', error: 'signal: killed' } } });
    assert.ok(await eventually(() => !isAlive(pid)));
  });

  test('the deadline kills the whole process group, even without a client', async () => {
    // With the stream open: it ends with deadline_exceeded.
    const res = await streamRequest('/process.Process/Start', start(['-c', 'sleep 1000 & echo $!; sleep 1000']), { 'Connect-Timeout-Ms': '1000' });
    const envs = await collect(res);
    const pid = (event(envs[0] as Envelope).start as { pid: number }).pid;
    const bg = Number(stdoutOf(envs).toString().trim());
    assert.ok(bg > 0);
    const last = envs[envs.length - 1] as Envelope;
    assert.equal(last.flags, 2);
    assert.equal((last.json as { error: Json }).error.code, 'deadline_exceeded');
    assert.ok(await eventually(() => !isAlive(pid)), 'leader alive');
    assert.ok(await eventually(() => !isAlive(bg)), 'background child alive');

    // The client goes away first: the process still dies at its deadline.
    const ac = new AbortController();
    const res2 = await streamRequest('/process.Process/Start', start(['-c', 'sleep 1000']), { 'Connect-Timeout-Ms': '1500' }, ac.signal);
    const it = readEnvelopes(res2.body as ReadableStream<Uint8Array>);
    const pid2 = (event((await it.next()).value as Envelope).start as { pid: number }).pid;
    ac.abort();
    await it.return(undefined).catch(() => {});
    assert.ok(await eventually(() => !isAlive(pid2)), 'process outlived its deadline');
  });

  test('tags select processes; stdin through SendInput; CloseStdin', async () => {
    const res = await streamRequest('/process.Process/Start', { process: { cmd: '/bin/cat' }, tag: 'my-cat', stdin: true });
    const it = readEnvelopes(res.body as ReadableStream<Uint8Array>);
    const pid = (event((await it.next()).value as Envelope).start as { pid: number }).pid;
    const list = (await (await unaryRequest('/process.Process/List', {})).json()) as { processes: { pid: number; tag?: string; config: Json }[] };
    const mine = list.processes.find((p) => p.pid === pid);
    assert.equal(mine?.tag, 'my-cat');
    assert.equal(mine?.config.cmd, '/bin/cat');
    const send = await unaryRequest('/process.Process/SendInput', { process: { tag: 'my-cat' }, input: { stdin: Buffer.from('meow\n').toString('base64') } });
    assert.equal(send.status, 200);
    assert.equal((await unaryRequest('/process.Process/CloseStdin', { process: { tag: 'my-cat' } })).status, 200);
    const rest: Envelope[] = [];
    for (let n = await it.next(); !n.done; n = await it.next()) rest.push(n.value);
    assert.equal(stdoutOf(rest).toString(), 'meow\n');
    assert.deepEqual(rest[rest.length - 1]?.json, {});
    const gone = await unaryRequest('/process.Process/SendInput', { process: { tag: 'my-cat' }, input: { stdin: 'eA==' } });
    assert.equal(gone.status, 404);
  });

  test('StreamInput: client-streamed stdin over HTTP/1.1', async () => {
    const res = await streamRequest('/process.Process/Start', { process: { cmd: '/bin/cat' }, stdin: true });
    const it = readEnvelopes(res.body as ReadableStream<Uint8Array>);
    const pid = (event((await it.next()).value as Envelope).start as { pid: number }).pid;
    const body = Buffer.concat([
      envelope({ start: { process: { pid } } }),
      envelope({ keepalive: {} }),
      envelope({ data: { input: { stdin: Buffer.from('streamed\n').toString('base64') } } }),
    ]);
    const r = await fetch(`${BASE_URL}/process.Process/StreamInput`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/connect+json', 'Connect-Protocol-Version': '1' },
      body: new Uint8Array(body),
    });
    assert.equal(r.status, 200);
    const reply = await collect(r);
    assert.equal(reply[reply.length - 1]?.flags, 2);
    assert.deepEqual(reply[reply.length - 1]?.json, {});
    assert.equal((await unaryRequest('/process.Process/CloseStdin', { process: { pid } })).status, 200);
    const rest: Envelope[] = [];
    for (let n = await it.next(); !n.done; n = await it.next()) rest.push(n.value);
    assert.equal(stdoutOf(rest).toString(), 'streamed\n');
  });

  test('the unix socket serves the same routes', async () => {
    const status = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(
        {
          socketPath: envd.socket,
          path: '/process.Process/List',
          method: 'POST',
          headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1' },
        },
        (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
      req.end('{}');
    });
    assert.equal(status.status, 200);
    assert.ok(Array.isArray((JSON.parse(status.body) as { processes: unknown[] }).processes));
  });
});
