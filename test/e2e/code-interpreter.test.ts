import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, type Service } from '../helpers/service.js';

// The published @e2b/code-interpreter SDK against `cubebox serve`, pointed at it by
// environment variables only (E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL): runCode reaches
// the server on port 49999 through the proxy (E2b-Sandbox-Port: 49999).

type CI = typeof import('@e2b/code-interpreter');
type Sandbox = InstanceType<CI['Sandbox']>;

let ci: CI;
let svc: Service;
let dataDir: string;
let sbx: Sandbox;
const created: Sandbox[] = [];

async function newSandbox(opts: NonNullable<Parameters<CI['Sandbox']['create']>[1]> = {}): Promise<Sandbox> {
  const s = await ci.Sandbox.create({ requestTimeoutMs: 300_000, ...opts });
  created.push(s);
  return s;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

describe('@e2b/code-interpreter against cubebox serve', { timeout: 1_800_000 }, () => {
  before(async () => {
    // a subnet of its own: other instances on this host use theirs
    const subnet = `10.${201 + Math.floor(Math.random() * 50)}.${Math.floor(Math.random() * 250)}.0/24`;
    ({ svc, dataDir } = await sdkService({ CUBEBOX_POOL: 'code-interpreter-v1=1', CUBEBOX_SUBNET: subnet }));
    ci = (await import('@e2b/code-interpreter')) as unknown as CI;
  });

  after(async () => {
    for (const s of created) await s.kill().catch(() => undefined);
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('the first create builds code-interpreter-v1 (from the cache), then the pool holds a sandbox with its kernels started', async () => {
    assert.doesNotMatch((await cli(dataDir, ['template', 'list'])).stdout, /code-interpreter-v1/);
    const t0 = performance.now();
    const first = await newSandbox();
    console.log(`# Sandbox.create() that built the template: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    assert.match((await cli(dataDir, ['template', 'list'])).stdout, /code-interpreter-v1/);
    assert.equal((await first.runCode('"built"')).text, 'built');
    await first.kill();
    for (let i = 0; i < 240 && !/\bpooled\b/.test((await cli(dataDir, ['sandbox', 'list'])).stdout); i++) await sleep(500);
    assert.match((await cli(dataDir, ['sandbox', 'list'])).stdout, /\bpooled\b/);
  });

  it('runCode gives the text of the last value, and state persists (first call timed on a pooled sandbox)', async () => {
    const t0 = performance.now();
    sbx = await newSandbox();
    const t1 = performance.now();
    const first = await sbx.runCode('1+1');
    const t2 = performance.now();
    assert.equal(first.text, '2');
    console.log(`# Sandbox.create() ${(t1 - t0).toFixed(0)} ms; first runCode('1+1') ${(t2 - t1).toFixed(0)} ms`);
    assert.equal((await sbx.runCode('x = 1; x')).text, '1');
    const second = await sbx.runCode('x += 1; x');
    assert.equal(second.text, '2');
    assert.equal(second.executionCount, 3);
    const times: number[] = [];
    for (let i = 0; i < 20; i++) {
      const s = performance.now();
      assert.equal((await sbx.runCode('1+1')).text, '2');
      times.push(performance.now() - s);
    }
    // the same kind of round trip to a kernel through the same Jupyter packages, without HTTP or the proxy
    const local = await sbx.commands.run(
      `python3 -c "
import time
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name='python3')
ts = []
for i in range(21):
    t = time.perf_counter(); kc.execute_interactive('1+1', output_hook=lambda m: None); ts.append(time.perf_counter() - t)
kc.stop_channels(); km.shutdown_kernel(now=True)
print(sorted(ts[1:])[10] * 1000)
"`,
      { timeoutMs: 120_000 },
    );
    console.log(`# later runCode('1+1') p50 ${median(times).toFixed(1)} ms; local Jupyter kernel round trip p50 ${Number(local.stdout).toFixed(1)} ms`);
  });

  it('streams output through callbacks before the call returns', async () => {
    const seen: { line: string; at: number }[] = [];
    const errs: string[] = [];
    const exec = await sbx.runCode('import sys, time\nprint("early", flush=True)\ntime.sleep(1.5)\nprint("late", file=sys.stderr)\n7', {
      onStdout: (m) => void seen.push({ line: m.line, at: performance.now() }),
      onStderr: (m) => void errs.push(m.line),
    });
    const done = performance.now();
    assert.equal(seen[0]?.line, 'early\n');
    assert.ok(done - seen[0]!.at > 1000, 'the first line arrived before the run ended');
    assert.deepEqual(errs, ['late\n']);
    assert.deepEqual(exec.logs, { stdout: ['early\n'], stderr: ['late\n'] });
    assert.equal(exec.text, '7');
  });

  it('an exception gives its name, value and traceback', async () => {
    const exec = await sbx.runCode('def f():\n    raise ValueError("bad value")\nf()');
    assert.equal(exec.error?.name, 'ValueError');
    assert.equal(exec.error?.value, 'bad value');
    assert.match(exec.error?.traceback ?? '', /in f\b[\s\S]*ValueError: bad value/);
  });

  it('a matplotlib plot gives a PNG and its chart; a DataFrame gives html and data', async () => {
    const plot = await sbx.runCode(
      'import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.bar(["A", "B", "C"], [3, 1, 2], label="Sold")\nax.set_title("Sales")\nax.set_xlabel("Author")\nax.set_ylabel("Books")\nplt.show()',
    );
    const r = plot.results[0]!;
    assert.ok(r.png && Buffer.from(r.png, 'base64').subarray(1, 4).toString() === 'PNG');
    const chart = r.chart as unknown as { type: string; title: string; x_label: string; elements: { label: string; group: string; value: number }[] };
    assert.equal(chart.type, 'bar');
    assert.equal(chart.title, 'Sales');
    assert.equal(chart.x_label, 'Author');
    assert.deepEqual(
      chart.elements.map((e) => [e.label, e.group, e.value]),
      [
        ['A', 'Sold', 3],
        ['B', 'Sold', 1],
        ['C', 'Sold', 2],
      ],
    );
    const line = (await sbx.runCode('fig, ax = plt.subplots()\nax.plot([0, 1, 2], [1, 4, 9], label="sq")\nplt.show()')).results[0]!;
    assert.equal((line.chart as unknown as { type: string }).type, 'line');
    const df = await sbx.runCode('import pandas as pd\npd.DataFrame({"a": [1, 2], "b": ["x", "y"]})');
    assert.match(df.results[0]?.html ?? '', /<table/);
    assert.deepEqual(df.results[0]?.data, { a: [1, 2], b: ['x', 'y'] });
  });

  it('javascript, r and bash each work and keep their state', async () => {
    await sbx.runCode('const base = 40; console.log("js up")', { language: 'js' });
    const js = await sbx.runCode('await new Promise((r) => setTimeout(r, 10)); base + 2', { language: 'js' });
    assert.equal(js.text, '42');
    const ts = await sbx.runCode('const s: string = "typed"; console.log(s)', { language: 'ts' });
    assert.deepEqual(ts.logs.stdout, ['typed\n']);
    await sbx.runCode('v <- 21', { language: 'r' });
    assert.equal((await sbx.runCode('v * 2', { language: 'r' })).text, '[1] 42');
    await sbx.runCode('n=5; cd /tmp', { language: 'bash' });
    assert.deepEqual((await sbx.runCode('echo "$n $(pwd)"', { language: 'bash' })).logs.stdout, ['5 /tmp\n']);
  });

  it('contexts are isolated, respect their cwd, and a restart clears the state', async () => {
    const ctx = await sbx.createCodeContext({ language: 'python', cwd: '/tmp' });
    assert.deepEqual([ctx.language, ctx.cwd], ['python', '/tmp']);
    assert.equal((await sbx.runCode('x', { context: ctx })).error?.name, 'NameError'); // x lives in the default context
    assert.equal((await sbx.runCode('import os; os.getcwd()', { context: ctx })).text, '/tmp');
    const list = await sbx.listCodeContexts();
    assert.equal(list.at(-1)?.id, ctx.id);
    assert.ok(list.some((c) => c.language === 'python') && list.some((c) => c.language === 'javascript'));
    await sbx.runCode('kept = 1', { context: ctx });
    await sbx.restartCodeContext(ctx);
    const after = await sbx.runCode('kept', { context: ctx });
    assert.equal(after.error?.name, 'NameError');
    assert.equal(after.error?.value, "name 'kept' is not defined");
    await sbx.removeCodeContext(ctx.id);
    assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
    const bashCtx = await sbx.createCodeContext({ language: 'bash', cwd: '/var' });
    assert.deepEqual((await sbx.runCode('pwd', { context: bashCtx })).logs.stdout, ['/var\n']);
    await sbx.removeCodeContext(bashCtx);
  });

  it('java keeps its state, sees the env vars and its cwd (user.dir), as E2B runs it', async () => {
    const s = await newSandbox({ envs: { TEST_ENV_VAR: 'supertest' } });
    await s.runCode('int x = 41;', { language: 'java' });
    const next = await s.runCode('System.out.println("java up"); x + 1', { language: 'java' });
    assert.equal(next.text, '42');
    assert.deepEqual(next.logs.stdout, ['java up\n']);
    assert.equal((await s.runCode('System.getProperty("user.dir")', { language: 'java' })).text, '/home/user');
    assert.equal((await s.runCode('System.getProperty("TEST_ENV_VAR")', { language: 'java' })).text?.trim(), 'supertest');
    const perRun = await s.runCode('System.getProperty("FOO")', { language: 'java', envs: { FOO: 'bar' } });
    assert.equal(perRun.text, 'bar');
    assert.equal((await s.runCode('System.getProperty("FOO", "default")', { language: 'java' })).text, 'default');
    const over = await s.runCode('System.getenv("TEST_ENV_VAR")', { language: 'java', envs: { TEST_ENV_VAR: 'overwrite' } });
    assert.equal(over.text, 'overwrite');
    assert.equal((await s.runCode('System.getProperty("TEST_ENV_VAR")', { language: 'java' })).text, 'supertest');
    assert.equal((await s.runCode('Integer.parseInt("x")', { language: 'java' })).error?.name, 'java.lang.NumberFormatException');
    // a language the server does not have: 400 (the SDK keeps only the status)
    await assert.rejects(s.runCode('1', { language: 'cobol' }), (e: Error) => /^400\b/.test(e.message));
    await s.kill();
  });

  it('a PIL image shown or saved gives a png result', async () => {
    const isPng = (b64?: string) => !!b64 && Buffer.from(b64, 'base64').subarray(1, 4).toString() === 'PNG';
    const shown = await sbx.runCode('from PIL import Image\nimage = Image.new("RGB", (16, 16), (0, 128, 255))\nimage.show()');
    assert.ok(isPng(shown.results[0]?.png));
    assert.ok(isPng((await sbx.runCode('image.save("test.png")')).results[0]?.png));
    assert.ok(isPng((await sbx.runCode('image')).results[0]?.png));
  });

  it('an infinite loop with timeoutMs is interrupted and the next call works', async () => {
    await assert.rejects(sbx.runCode('while True:\n    pass', { timeoutMs: 3000 }), (e: Error) => e.name === 'TimeoutError');
    const next = await sbx.runCode('x', { timeoutMs: 20_000 });
    assert.equal(next.text, '2', 'the context kept its state');
    await assert.rejects(sbx.runCode('while (true) {}', { language: 'js', timeoutMs: 3000 }), (e: Error) => e.name === 'TimeoutError');
    assert.equal((await sbx.runCode('base', { language: 'js', timeoutMs: 20_000 })).text, '40');
    await sbx.runCode('int kept = 5;', { language: 'java' });
    await assert.rejects(sbx.runCode('while (true) {}', { language: 'java', timeoutMs: 3000 }), (e: Error) => e.name === 'TimeoutError');
    await assert.rejects(sbx.runCode('Thread.sleep(300_000);', { language: 'java', timeoutMs: 3000 }), (e: Error) => e.name === 'TimeoutError');
    assert.equal((await sbx.runCode('kept', { language: 'java', timeoutMs: 20_000 })).text, '5');
  });

  it('envs: the sandbox-level ones everywhere, per-run ones only in their run', async () => {
    const s = await newSandbox({ envs: { SBX_VAR: 'sandbox value' } });
    assert.equal((await s.runCode('import os; os.environ["SBX_VAR"]')).text, 'sandbox value');
    const quoted = await s.runCode('print(os.environ.get("RUN_VAR"))', { envs: { RUN_VAR: 'quote " and \' kept' } });
    assert.deepEqual(quoted.logs.stdout, ['quote " and \' kept\n']);
    assert.equal((await s.runCode('os.environ.get("RUN_VAR", "unset")')).text, 'unset');
    assert.equal((await s.runCode('os.environ["SBX_VAR"]', { envs: { SBX_VAR: 'override' } })).text, 'override');
    assert.equal((await s.runCode('os.environ["SBX_VAR"]')).text, 'sandbox value');
    assert.equal((await s.runCode('process.env.SBX_VAR', { language: 'js' })).text, 'sandbox value');
    assert.deepEqual((await s.runCode('echo "$SBX_VAR"', { language: 'bash' })).logs.stdout, ['sandbox value\n']);
    assert.equal((await s.runCode('Sys.getenv("SBX_VAR")', { language: 'r' })).text, '[1] "sandbox value"');
    await s.kill();
  });

  it('a secure sandbox without public traffic works with its tokens, and refuses requests without them', async () => {
    const s = await newSandbox({ secure: true, network: { allowPublicTraffic: false } });
    assert.equal((await s.runCode('x = 1; x')).text, '1');
    assert.ok(s.trafficAccessToken);
    const url = `${svc.url}/execute`;
    const headers = { 'content-type': 'application/json', 'e2b-sandbox-id': s.sandboxId, 'e2b-sandbox-port': '49999' };
    const body = JSON.stringify({ code: '1' });
    assert.equal((await fetch(url, { method: 'POST', headers, body })).status, 403, 'no traffic token');
    const withTraffic = { ...headers, 'e2b-traffic-access-token': s.trafficAccessToken! };
    assert.equal((await fetch(url, { method: 'POST', headers: withTraffic, body })).status, 401, 'no access token');
    const res = await fetch(url, { method: 'POST', headers: { ...withTraffic, 'x-access-token': 'wrong' }, body });
    assert.equal(res.status, 401, 'a wrong access token');
    await s.kill();
  });
});
