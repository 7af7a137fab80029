// E2B's template build API against a real `cubebox serve`, driven by the published SDK
// (Template().build) the way a user does: every step type, files with owner, mode and a
// symlink, the layer cache, a start command, failures that report their output and leave
// nothing, build status and logs while a build runs, and requests that are refused.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { openPaths } from '../../src/config.js';
import { Store } from '../../src/store/store.js';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, startService, type E2B, type Service } from '../helpers/service.js';

const E2B_CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'node_modules', '.bin', 'e2b');

let e2b: E2B;
let svc: Service;
let dataDir: string;
let key: string;
let ctx: string;
const made: { kill(): Promise<unknown> }[] = [];

async function api(method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetch(`${svc.url}${path}`, {
    method,
    headers: { 'x-api-key': key, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

/** The published E2B CLI in a directory, with only the environment a user would set. */
function e2bCli(cwd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('E2B_')) env[k] = v;
  Object.assign(env, { E2B_API_KEY: key, E2B_API_URL: svc.url, E2B_SANDBOX_URL: svc.url, HOME: ctx, NO_UPDATE_NOTIFIER: '1', NO_COLOR: '1' });
  return new Promise((resolve, reject) => {
    const child = spawn(E2B_CLI, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** The SDK's build errors carry the caller's stack in place of their own: keep the message. */
const withMessage = (err: Error) => {
  throw new Error(`${err.name}: ${err.message}`);
};

/** Templates and build layers in the store whose name starts with the prefix. */
function storedTemplates(prefix: string): string[] {
  const store = new Store(openPaths(dataDir, false).db);
  try {
    return store
      .listTemplates()
      .filter((t) => t.name.startsWith(prefix))
      .map((t) => t.name);
  } finally {
    store.close();
  }
}

describe('template builds through the E2B SDK', { timeout: 900_000 }, () => {
  before(async () => {
    ({ svc, dataDir, key, e2b } = await sdkService({ CUBEBOX_POOL: '', CUBEBOX_BUILD_READY_TIMEOUT_SEC: '4' }));
    ctx = mkdtempSync('/var/tmp/cubebox-tplctx-');
    mkdirSync(join(ctx, 'app'));
    writeFileSync(join(ctx, 'app', 'hello.txt'), 'hello from the context\n');
    writeFileSync(join(ctx, 'app', 'old.txt'), 'renamed\n');
    writeFileSync(join(ctx, 'app', 'junk.txt'), 'removed\n');
    symlinkSync('hello.txt', join(ctx, 'app', 'link'));
  });
  after(async () => {
    for (const s of made) await s.kill().catch(() => {});
    await svc.stop();
    await destroyInstance(undefined, dataDir);
    rmSync(ctx, { recursive: true, force: true });
  });

  const appTemplate = () =>
    e2b
      .Template({ fileContextPath: ctx })
      .fromTemplate('base')
      .setEnvs({ MODE: 'prod' })
      .copy('app', '/home/user/app', { mode: 0o750 })
      .runCmd('id -un > /home/user/who-root', { user: 'root' })
      .runCmd('git init -q /home/user/repo && git -C /home/user/repo -c user.name=t -c user.email=t@t commit -q --allow-empty -m first')
      .makeDir('/home/user/data/sub')
      .makeSymlink('/home/user/app/hello.txt', '/home/user/hello-link')
      .remove('/home/user/app/junk.txt')
      .rename('/home/user/app/old.txt', '/home/user/app/new.txt')
      .gitClone('file:///home/user/repo', '/home/user/clone')
      .setWorkdir('/home/user/app')
      .setUser('user')
      .setStartCmd('echo started > /tmp/started; sleep infinity', e2b.waitForFile('/tmp/started'));

  it('builds every step type from a template; sandboxes see files, env, user, workdir and the start command; a rebuild is cached', async () => {
    const logs: string[] = [];
    const built = await e2b.Template.build(appTemplate(), 'tb-app', { cpuCount: 1, memoryMB: 512, onBuildLogs: (l) => logs.push(l.message) }).catch(
      withMessage,
    );
    assert.ok(built.templateId && built.buildId);
    assert.ok(
      logs.some((l) => /\[3\/\d+\] RUN id -un/.test(l)),
      logs.join('\n'),
    );
    assert.ok(
      logs.some((l) => /done in [\d.]+ s/.test(l)),
      logs.join('\n'),
    );

    const sbx = await e2b.Sandbox.create('tb-app');
    made.push(sbx);
    const run = async (cmd: string) => (await sbx.commands.run(cmd)).stdout;
    assert.equal(await run('cat /home/user/app/hello.txt'), 'hello from the context\n');
    assert.equal(await run('stat -c "%U %a" /home/user/app/hello.txt'), 'user 750\n');
    assert.equal(await run('readlink /home/user/app/link'), 'hello.txt\n');
    assert.equal(await run('echo "$MODE $(whoami) $(pwd)"'), 'prod user /home/user/app\n');
    assert.equal(await run('cat /home/user/who-root /home/user/app/new.txt /home/user/hello-link'), 'root\nrenamed\nhello from the context\n');
    assert.equal(await run('test -d /home/user/data/sub && test ! -e /home/user/app/junk.txt && git -C /home/user/clone log --format=%s'), 'first\n');
    assert.equal(await run('cat /tmp/started'), 'started\n', 'the start command ran before create returned');
    await sbx.kill();

    // the same template again: every layer from the cache, same template id
    const again: string[] = [];
    const second = await e2b.Template.build(appTemplate(), 'tb-app', { onBuildLogs: (l) => again.push(l.message) }).catch(withMessage);
    assert.equal(second.templateId, built.templateId);
    assert.ok(
      again.some((l) => l.startsWith('CACHED [3/')),
      again.join('\n'),
    );
    assert.ok(!again.some((l) => /done in/.test(l)), again.join('\n'));
    assert.equal(await e2b.Template.exists('tb-app'), true);
  });

  it("keeps a team's builds, files and templates its own", async () => {
    const other = await cli(dataDir, ['keys', 'create', '--name', 'other', '--team', 'tb-other-team']);
    assert.equal(other.code, 0, other.stderr);
    const otherKey = other.stdout.trim().split('\n').pop()!.trim();
    const mine = await api('POST', '/v3/templates', { name: 'tb-own' });
    const as = (method: string, path: string, body?: unknown) =>
      fetch(`${svc.url}${path}`, {
        method,
        headers: { 'x-api-key': otherKey, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    const { templateID, buildID } = mine.json as { templateID: string; buildID: string };
    assert.equal((await as('GET', `/templates/${templateID}/builds/${buildID}/status`)).status, 404);
    assert.equal((await as('POST', `/v2/templates/${templateID}/builds/${buildID}`, { fromTemplate: 'base', steps: [] })).status, 404);
    assert.equal((await as('GET', `/templates/${templateID}/files/${'a'.repeat(64)}`)).status, 404);
    // the same name in another team is that team's own template
    const theirs = await as('POST', '/v3/templates', { name: 'tb-own' });
    assert.equal(theirs.status, 202);
    assert.notEqual(((await theirs.json()) as { templateID: string }).templateID, templateID);
    // an upload link is for its team and hash only
    const link = (await api('GET', `/templates/${templateID}/files/${'b'.repeat(64)}`)).json as { url: string; present: boolean };
    assert.equal(link.present, false);
    const forged = link.url.replace('b'.repeat(64), 'c'.repeat(64));
    assert.equal((await fetch(forged, { method: 'PUT', body: 'x' })).status, 403);
    assert.equal((await fetch(link.url, { method: 'PUT', body: 'not a tar at all, long enough to fill a header? no' })).status, 400);

    // E2B's public flag: another team may then start sandboxes of the template, by its id
    const app = (await api('GET', '/templates/tb-app')).json as { templateID: string };
    assert.equal((await as('POST', '/sandboxes', { templateID: app.templateID })).status, 404);
    assert.equal((await api('PATCH', `/v2/templates/${app.templateID}`, { public: true })).status, 200);
    const created = await as('POST', '/sandboxes', { templateID: app.templateID });
    assert.equal(created.status, 201);
    const sandboxID = ((await created.json()) as { sandboxID: string }).sandboxID;
    assert.equal((await as('DELETE', `/sandboxes/${sandboxID}`)).status, 204);
    assert.equal((await as('PATCH', `/v2/templates/${app.templateID}`, { public: false })).status, 403, 'only its team changes it');
    assert.equal((await api('PATCH', `/templates/${app.templateID}`, { public: false })).status, 200);
  });

  it('refuses a second build of a name under way (409) and builds past the team bound (429)', async () => {
    const slow = await e2b.Template.buildInBackground(e2b.Template().fromTemplate('base').runCmd('sleep 5'), 'tb-q0');
    assert.equal((await api('POST', '/v3/templates', { name: 'tb-q0' })).status, 409);
    const queued = [slow];
    for (let i = 1; i < 4; i++)
      queued.push(
        await e2b.Template.buildInBackground(
          e2b
            .Template()
            .fromTemplate('base')
            .setEnvs({ Q: String(i) }),
          `tb-q${i}`,
        ),
      );
    // (the SDK itself waits out a 429 with Retry-After: asked directly, the bound answers)
    const fifth = await api('POST', '/v3/templates', { name: 'tb-q4' });
    const refused = await api('POST', `/v2/templates/${fifth.json.templateID as string}/builds/${fifth.json.buildID as string}`, {
      fromTemplate: 'base',
      steps: [],
    });
    assert.equal(refused.status, 429);
    assert.match(refused.json.message as string, /builds waiting or running/);
    for (const b of queued) {
      for (let i = 0; i < 300 && ['building', 'waiting'].includes((await e2b.Template.getBuildStatus(b)).status); i++)
        await new Promise((r) => setTimeout(r, 100));
      assert.equal((await e2b.Template.getBuildStatus(b)).status, 'ready');
    }
  });

  it('a failing runCmd reports its output in the SDK error and leaves nothing', async () => {
    const t = e2b.Template().fromImage('e2bdev/base').runCmd('echo made > /tmp/x').runCmd('echo marker-output-xyz; exit 3');
    await assert.rejects(e2b.Template.build(t, 'tb-fail'), (err: Error) => {
      assert.match(err.message, /exit 3/);
      assert.match(err.message, /marker-output-xyz/);
      return true;
    });
    assert.equal(await e2b.Template.exists('tb-fail'), false);
    assert.deepEqual(storedTemplates('tb-fail'), [], 'no template rows or layers');
  });

  it('reports status and logs while a build runs', async () => {
    const t = e2b.Template().fromTemplate('base').runCmd('echo begun; sleep 2; echo finished-step');
    const info = await e2b.Template.buildInBackground(t, 'tb-bg');
    const seen = new Set<string>();
    let status = await e2b.Template.getBuildStatus(info);
    for (let i = 0; i < 300 && (status.status === 'building' || status.status === 'waiting'); i++) {
      seen.add(status.status);
      await new Promise((r) => setTimeout(r, 100));
      status = await e2b.Template.getBuildStatus(info);
    }
    assert.equal(status.status, 'ready');
    assert.ok(seen.has('building'), [...seen].join());
    const logs = await api('GET', `/templates/${info.templateId}/builds/${info.buildId}/logs?limit=1000`);
    const messages = (logs.json.logs as { message: string }[]).map((l) => l.message);
    assert.ok(messages.includes('finished-step'), messages.join('\n'));
    const offset = await api('GET', `/templates/${info.templateId}/builds/${info.buildId}/status?logsOffset=2&limit=1`);
    assert.equal((offset.json.logEntries as unknown[]).length, 1);
  });

  it('refuses bad requests with a message naming the cause, and leaves nothing', async () => {
    const start = async (steps: unknown[], extra: Record<string, unknown> = {}) => {
      const r = await api('POST', '/v3/templates', { name: 'tb-bad' });
      assert.equal(r.status, 202, JSON.stringify(r.json));
      return api('POST', `/v2/templates/${r.json.templateID as string}/builds/${r.json.buildID as string}`, { fromTemplate: 'base', steps, ...extra });
    };
    let r = await start([{ type: 'FROB', args: ['x'] }]);
    assert.equal(r.status, 400);
    assert.match(r.json.message as string, /unknown step type 'FROB'/);
    r = await start([{ type: 'COPY', args: ['app', '/x'], filesHash: 'a'.repeat(64) }]);
    assert.equal(r.status, 400);
    assert.match(r.json.message as string, /never uploaded/);
    r = await start([{ type: 'COPY', args: ['../etc', '/x'], filesHash: 'a'.repeat(64) }]);
    assert.equal(r.status, 400);
    assert.match(r.json.message as string, /outside the build context/);
    r = await start([], { fromTemplate: 'no-such-template' });
    assert.equal(r.status, 400);
    assert.match(r.json.message as string, /no-such-template/);
    const reserved = await api('POST', '/v3/templates', { name: 'base' });
    assert.equal(reserved.status, 409);

    const aws = e2b.Template().fromAWSRegistry('123.dkr.ecr.us-east-1.amazonaws.com/x:1', { accessKeyId: 'a', secretAccessKey: 'b', region: 'us-east-1' });
    await assert.rejects(e2b.Template.build(aws, 'tb-aws'), /type 'aws' is not supported/);

    // any other image goes through the registry import: whatever it answers, the build names the image
    await assert.rejects(e2b.Template.build(e2b.Template().fromImage('python:3.12').runCmd('true'), 'tb-image').catch(withMessage), /python:3\.12/);
    assert.deepEqual(storedTemplates('tb-image'), []);

    const never = e2b.Template().fromTemplate('base').runCmd('echo layer').setStartCmd('sleep infinity', 'false');
    await assert.rejects(e2b.Template.build(never, 'tb-never'), /did not become ready/);
    assert.deepEqual(storedTemplates('tb-never'), []);
    assert.deepEqual(storedTemplates('tb-bad'), []);
  });

  it('the published CLI builds a Dockerfile (FROM e2bdev/base, RUN, COPY, ENV, WORKDIR, USER) and lists the template', async () => {
    const dir = join(ctx, 'cli');
    mkdirSync(dir);
    writeFileSync(join(dir, 'notes.txt'), 'copied by the CLI\n');
    writeFileSync(
      join(dir, 'e2b.Dockerfile'),
      [
        'FROM e2bdev/base',
        'RUN mkdir -p /srv/app && echo ran > /srv/app/ran.txt',
        'COPY notes.txt /srv/app/notes.txt',
        'ENV STAGE=cli',
        'WORKDIR /srv/app',
        'USER user',
        '',
      ].join('\n'),
    );
    const r = await e2bCli(dir, ['template', 'create', 'tb-cli', '--dockerfile', 'e2b.Dockerfile', '--cpu-count', '1', '--memory-mb', '512']);
    assert.equal(r.code, 0, r.out);
    const list = await e2bCli(dir, ['template', 'list']);
    assert.equal(list.code, 0, list.out);
    assert.match(list.out, /tb-cli/);
    const sbx = await e2b.Sandbox.create('tb-cli');
    made.push(sbx);
    const out = await sbx.commands.run('cat ran.txt notes.txt; echo "$STAGE $(whoami) $(pwd)"');
    assert.equal(out.stdout, 'ran\ncopied by the CLI\ncli user /srv/app\n');
    await sbx.kill();

    writeFileSync(join(dir, 'multi.Dockerfile'), 'FROM e2bdev/base AS one\nRUN true\nFROM e2bdev/base\nRUN true\n');
    const multi = await e2bCli(dir, ['template', 'create', 'tb-multi', '--dockerfile', 'multi.Dockerfile']);
    assert.notEqual(multi.code, 0);
    assert.match(multi.out, /Multi-stage/);
  });

  it('a build under way when the service stops is failed with the reason after the restart, its sandboxes gone', async () => {
    const t = e2b.Template().fromTemplate('base').runCmd('sleep 600');
    const info = await e2b.Template.buildInBackground(t, 'tb-restart');
    for (let i = 0; i < 100 && (await e2b.Template.getBuildStatus(info)).status !== 'building'; i++) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 1000)); // the step's sandbox is up
    await svc.crash();
    svc = await startService(dataDir, { env: { CUBEBOX_POOL: '' } });
    process.env.E2B_API_URL = svc.url;
    process.env.E2B_SANDBOX_URL = svc.url;
    const after = await e2b.Template.getBuildStatus(info);
    assert.equal(after.status, 'error');
    assert.match(after.reason?.message ?? '', /interrupted by a restart/);
    assert.deepEqual(storedTemplates('tb-restart'), []);
    const store = new Store(openPaths(dataDir, false).db);
    try {
      const left = store.listSandboxes().filter((r) => (JSON.parse(r.spec) as { metadata?: Record<string, string> }).metadata?.['cubebox.build']);
      assert.deepEqual(left, [], 'the build sandbox of the interrupted build is gone');
    } finally {
      store.close();
    }
  });

  it('the host CLI builds a recipe with the same builder, printing numbered steps and the time taken', async () => {
    const recipe = join(ctx, 'recipe.json');
    writeFileSync(
      recipe,
      JSON.stringify({ from: 'base', steps: [{ run: 'echo host > /tmp/host.txt' }, { copy: { src: 'app', dest: '/opt/app' } }, { env: { HOST: '1' } }] }),
    );
    const r = await cli(dataDir, ['template', 'build', 'tb-host', '--recipe', recipe]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /\[1\/3\] built +RUN echo host/);
    assert.match(r.stderr, /\[2\/3\] built +COPY app \/opt\/app/);
    assert.match(r.stderr, /built 'tb-host' in [\d.]+ s/);
    const again = await cli(dataDir, ['template', 'build', 'tb-host2', '--recipe', recipe]);
    assert.match(again.stderr, /\[1\/3\] cached +RUN echo host/);
  });
});
