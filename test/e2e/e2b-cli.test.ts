// The published E2B CLI (@e2b/cli, node_modules/.bin/e2b) against a real `cubebox serve`, pointed
// at it by environment variables only (E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL), the way a
// user would: sandbox list/info/exec/logs/metrics/pause/resume/kill, snapshots, templates.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

const E2B_CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'node_modules', '.bin', 'e2b');

let e2b: E2B;
let svc: Service;
let dataDir: string;
let key: string;
let home: string;
const made: { kill(): Promise<unknown> }[] = [];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the E2B CLI with only the environment a user would set (and a HOME without an E2B login). */
function e2bCli(args: string[], input?: string): Promise<Run> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('E2B_')) env[k] = v;
  Object.assign(env, {
    E2B_API_KEY: key,
    E2B_API_URL: svc.url,
    E2B_SANDBOX_URL: svc.url,
    HOME: home,
    PATH: `${dirname(process.execPath)}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    NO_UPDATE_NOTIFIER: '1', // no look-up of newer CLI versions on the npm registry
    NO_COLOR: '1',
  });
  return new Promise((resolve, reject) => {
    const child = spawn(E2B_CLI, args, { env, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    if (input !== undefined) child.stdin!.end(input);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function ok(args: string[], input?: string): Promise<string> {
  const r = await e2bCli(args, input);
  assert.equal(r.code, 0, `e2b ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** The JSON the CLI prints after its blank first line. */
const json = <T>(out: string): T => JSON.parse(out.slice(out.search(/[[{]/))) as T;

describe('the published E2B CLI against cubebox serve', { timeout: 900_000 }, () => {
  before(async () => {
    ({ svc, dataDir, key, e2b } = await sdkService({ CUBEBOX_POOL: '' }));
    home = mkdtempSync(join(tmpdir(), 'e2b-cli-home-'));
  });
  after(async () => {
    for (const s of made) await s.kill().catch(() => {});
    await svc.stop();
    await destroyInstance(undefined, dataDir);
    rmSync(home, { recursive: true, force: true });
  });

  it('sandbox list, info, exec (exit codes, stderr, piped stdin), logs, metrics', async () => {
    const sbx = await e2b.Sandbox.create('base', { metadata: { via: 'cli-test' } });
    made.push(sbx);

    const listed = json<{ sandboxId: string; state: string; metadata: Record<string, string> }[]>(await ok(['sandbox', 'list', '--format', 'json']));
    const mine = listed.find((s) => s.sandboxId === sbx.sandboxId);
    assert.equal(mine?.state, 'running');
    assert.deepEqual(mine?.metadata, { via: 'cli-test' });
    assert.match(await ok(['sandbox', 'list']), new RegExp(sbx.sandboxId));

    const info = json<{ sandboxId: string; templateId: string; state: string }>(await ok(['sandbox', 'info', sbx.sandboxId, '--format', 'json']));
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.state, 'running');

    const run = await e2bCli(['sandbox', 'exec', sbx.sandboxId, '--', 'sh', '-c', 'echo "out $(id -un)"; echo err >&2; exit 3']);
    assert.equal(run.code, 3, run.stderr);
    assert.equal(run.stdout, 'out user\n');
    assert.match(run.stderr, /err/);
    assert.equal(await ok(['sandbox', 'exec', '-u', 'root', sbx.sandboxId, 'id -un']), 'root\n');
    assert.equal(await ok(['sandbox', 'exec', sbx.sandboxId, 'tr a-z A-Z'], 'piped in\n'), 'PIPED IN\n');

    // the console log: what envd (and anything writing to PID 1's output) printed
    await sbx.commands.run(`sudo sh -c 'echo cli-console-line >> /proc/1/fd/1'`);
    const logs = (await ok(['sandbox', 'logs', sbx.sandboxId, '--format', 'json'])).split('\n').filter((l) => l.startsWith('{'));
    const records = logs.map((l) => JSON.parse(l) as { timestamp: string; level: string; message: string });
    assert.ok(
      records.some((r) => r.message === 'cli-console-line'),
      logs.join('\n'),
    );
    assert.ok(records.every((r) => Number.isFinite(Date.parse(r.timestamp))));

    const metrics = (await ok(['sandbox', 'metrics', sbx.sandboxId, '--format', 'json'])).split('\n').filter((l) => l.startsWith('{'));
    assert.ok(metrics.length >= 1);
    const m = JSON.parse(metrics[metrics.length - 1]!) as { cpuCount: number; memTotal: number; diskTotal: number };
    assert.ok(m.cpuCount > 0 && m.memTotal > 0 && m.diskTotal > 0, metrics.join('\n'));
  });

  it('sandbox pause, resume and kill', async () => {
    const sbx = await e2b.Sandbox.create('base');
    made.push(sbx);
    await sbx.commands.run('echo kept > ~/f');
    assert.match(await ok(['sandbox', 'pause', sbx.sandboxId]), /has been paused/);
    assert.equal((await sbx.getInfo()).state, 'paused');
    assert.match(await ok(['sandbox', 'pause', sbx.sandboxId]), /already paused/);
    assert.match(await ok(['sandbox', 'list', '--state', 'paused']), new RegExp(sbx.sandboxId));
    assert.match(await ok(['sandbox', 'resume', sbx.sandboxId]), /has been resumed/);
    assert.equal((await sbx.getInfo()).state, 'running');
    assert.equal(await ok(['sandbox', 'exec', sbx.sandboxId, 'cat ~/f']), 'kept\n');
    assert.match(await ok(['sandbox', 'kill', sbx.sandboxId]), /has been killed/);
    assert.equal(await e2b.Sandbox.kill(sbx.sandboxId), false, 'gone');
    const info = await e2bCli(['sandbox', 'info', sbx.sandboxId]);
    assert.equal(info.code, 1);
    assert.match(info.stderr, /wasn't found/);
  });

  it('sandbox snapshot create, list and delete; template list and delete', async () => {
    const sbx = await e2b.Sandbox.create('base');
    made.push(sbx);
    await sbx.commands.run('echo snap > ~/s');
    const created = await ok(['sandbox', 'snapshot', 'create', sbx.sandboxId, '--name', 'cli-snap']);
    const snapshotId = /Created snapshot (\S+)/.exec(created)?.[1];
    assert.ok(snapshotId, created);
    const snaps = json<{ snapshotId: string; names: string[] }[]>(await ok(['sandbox', 'snapshot', 'list', sbx.sandboxId, '--format', 'json']));
    assert.deepEqual(
      snaps.map((s) => [s.snapshotId, s.names]),
      [[snapshotId, ['cli-snap']]],
    );
    const fromSnap = await e2b.Sandbox.create('cli-snap');
    made.push(fromSnap);
    assert.equal((await fromSnap.commands.run('cat ~/s')).stdout, 'snap\n');
    await fromSnap.kill();
    assert.match(await ok(['sandbox', 'snapshot', 'delete', snapshotId]), /has been deleted/);
    assert.match((await e2bCli(['sandbox', 'snapshot', 'delete', snapshotId])).stderr, /wasn't found/);

    // templates: the team sees the public base and its own; it may delete its own only
    const second = /Created snapshot (\S+)/.exec(await ok(['sandbox', 'snapshot', 'create', sbx.sandboxId, '--name', 'cli-snap-2']))?.[1];
    assert.ok(second);
    const templates = json<{ templateID: string; aliases: string[]; public: boolean }[]>(await ok(['template', 'list', '--format', 'json']));
    assert.ok(templates.some((t) => t.aliases.includes('base') && t.public));
    assert.match(await ok(['template', 'list']), /base/);
    await ok(['template', 'delete', second, '--yes']);
    assert.equal(await e2b.Template.exists('cli-snap-2'), false);
    const refused = await e2bCli(['template', 'delete', 'base', '--yes']);
    assert.equal(refused.code, 1);
    assert.match(refused.stdout + refused.stderr, /admin key/);
    assert.equal(await e2b.Template.exists('base'), true);
  });
});
