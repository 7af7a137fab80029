// The web dashboard in headless Chromium against `cubebox serve`, with sandboxes made through the
// published e2b SDK: log in, see the team's sandboxes (and not another team's), a terminal, a file
// upload, lifecycle actions, and payloads in sandbox-controlled strings that must stay text.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';
import { logIn, startBrowser, textOf, type PageWatch, type TestBrowser } from './browser.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let key: string;
let otherKey: string;
let browser: TestBrowser;
const created: { id: string; apiKey: string }[] = [];

type Sbx = Awaited<ReturnType<E2B['Sandbox']['create']>>;
async function newSandbox(opts: Parameters<E2B['Sandbox']['create']>[1] = {}): Promise<Sbx> {
  const sbx = await e2b.Sandbox.create('base', opts);
  created.push({ id: sbx.sandboxId, apiKey: opts.apiKey ?? key });
  return sbx;
}

async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out waiting until ${what}`);
}

function clean(watch: PageWatch): void {
  assert.deepEqual(watch.dialogs, [], 'no dialog opened');
  assert.deepEqual(watch.errors, [], 'no uncaught error in the page');
  assert.deepEqual(watch.cspRefusals, [], 'the page needed nothing its CSP refuses');
}

describe('the web dashboard in a browser', { timeout: 300_000 }, () => {
  let mine: Sbx[] = [];

  before(async () => {
    ({ svc, dataDir, e2b, key } = await sdkService());
    const r = await cli(dataDir, ['keys', 'create', '--name', 'other', '--team', 'dashboard-other']);
    assert.equal(r.code, 0, r.stderr);
    otherKey = r.stdout.trim().split('\n').pop()!.trim();
    browser = await startBrowser('dashboard');
    mine = [await newSandbox({ metadata: { purpose: 'dashboard', n: '1' } }), await newSandbox({ metadata: { purpose: 'dashboard', n: '2' } })];
  });

  after(async () => {
    await browser?.close();
    for (const s of created) await e2b.Sandbox.kill(s.id, { apiKey: s.apiKey }).catch(() => undefined);
    for (const s of created) assert.equal(await e2b.Sandbox.kill(s.id, { apiKey: s.apiKey }), false, `sandbox ${s.id} is gone`);
    await svc?.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('serves the page with a strict CSP; a key logs in (kept in the tab only) and every sandbox of its team is listed', async () => {
    const res = await fetch(`${svc.url}/dashboard`);
    assert.equal(res.status, 200);
    const csp = res.headers.get('content-security-policy') ?? '';
    assert.match(csp, /script-src 'self'(;|$)/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/);
    assert.doesNotMatch(await res.text(), /<script>|<style>/, 'no inline script or style in the page');
    const js = await fetch(`${svc.url}/dashboard/app.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get('content-type') ?? '', /^text\/javascript/);
    assert.equal(js.headers.get('x-content-type-options'), 'nosniff');
    await js.arrayBuffer();
    for (const path of ['/dashboard/..%2f..%2fpackage.json', '/dashboard/../package.json', '/dashboard/nope.js']) {
      const r = await fetch(`${svc.url}${path}`);
      assert.notEqual(r.status, 200, path);
      assert.doesNotMatch(await r.text(), /"name": "cubebox"/, path);
    }

    const { page, watch } = await browser.page();
    await logIn(page, svc.url, key);
    for (const s of mine) await page.getByText(s.sandboxId, { exact: true }).waitFor();
    const text = await textOf(page);
    for (const s of mine) assert.ok(text.includes(s.sandboxId));
    assert.ok(text.includes('purpose=dashboard'));
    assert.equal(await page.evaluate(() => sessionStorage.getItem('cubebox.apiKey')), key);
    assert.equal((await browser.context.cookies()).length, 0, 'no cookie');
    assert.ok(!page.url().includes(key), 'the key is not in the URL');
    await browser.shot(page, 'sandboxes');
    await page.setViewportSize({ width: 390, height: 844 });
    await browser.shot(page, 'sandboxes-phone');
    await page.setViewportSize({ width: 1280, height: 800 });

    await page.getByRole('button', { name: 'Log out' }).click();
    await page.locator('input[name="apiKey"]').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('cubebox.apiKey')), null, 'log-out clears the key');
    await page.keyboard.type('e2b_not-a-key');
    await page.keyboard.press('Enter');
    await page.getByRole('alert').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('cubebox.apiKey')), null, 'a refused key is not kept');
    clean(watch);
    await page.close();
  });

  it("another team's key sees its own sandboxes and none of the first team's", async () => {
    const theirs = await newSandbox({ apiKey: otherKey, metadata: { purpose: 'other team' } });
    const { page, watch } = await browser.page();
    await logIn(page, svc.url, otherKey);
    await page.getByText(theirs.sandboxId, { exact: true }).waitFor();
    const text = await textOf(page);
    for (const s of mine) assert.ok(!text.includes(s.sandboxId), `${s.sandboxId} is not shown to another team`);
    await page.goto(`${svc.url}/dashboard#/sandbox/${mine[0]!.sandboxId}`);
    await page.getByRole('alert').waitFor();
    assert.match(await textOf(page), /not found/);
    await browser.shot(page, 'other-team');
    clean(watch);
    await page.close();
  });

  it("an admin key sees every team's sandboxes, every team's quota, and the host's pool and create gate", async () => {
    const r = await cli(dataDir, ['keys', 'create', '--name', 'admin', '--admin']);
    assert.equal(r.code, 0, r.stderr);
    const adminKey = r.stdout.trim().split('\n').pop()!.trim();
    const { page, watch } = await browser.page();
    await logIn(page, svc.url, adminKey);
    const theirs = created.find((s) => s.apiKey === otherKey)!;
    for (const id of [...mine.map((s) => s.sandboxId), theirs.id]) await page.getByText(id, { exact: true }).waitFor();
    await page.getByRole('link', { name: 'Team & host' }).click();
    await page.getByRole('heading', { name: 'Teams', exact: true }).waitFor();
    await page
      .getByRole('region', { name: 'Team dashboard-other' })
      .getByRole('row', { name: /^Sandboxes .* 1 of 20/ })
      .waitFor();
    const host = page.getByRole('region', { name: 'Host' });
    await host.getByText('Create gate').waitFor();
    await host.getByText('Network slots').waitFor();
    await host.getByRole('table', { name: /^Runtimes/ }).waitFor();
    await browser.shot(page, 'admin');
    await host.getByRole('table', { name: "Doctor's checks" }).scrollIntoViewIfNeeded();
    await browser.shot(page, 'admin-host');
    clean(watch);
    await page.close();
  });

  it("an admin edits a team's quota in the page, and the API agrees", async () => {
    const r = await cli(dataDir, ['keys', 'create', '--name', 'admin-quota', '--admin']);
    assert.equal(r.code, 0, r.stderr);
    const adminKey = r.stdout.trim().split('\n').pop()!.trim();
    const other = ((await (await fetch(`${svc.url}/teams`, { headers: { 'X-API-Key': otherKey } })).json()) as { teamID: string }[])[0]!.teamID;
    const quotaOf = async (k: string) =>
      ((await (await fetch(`${svc.url}/teams/${other}/quota`, { headers: { 'X-API-Key': k } })).json()) as { quota: Record<string, number> }).quota;
    const { page, watch } = await browser.page();
    await logIn(page, svc.url, adminKey);
    await page.getByRole('link', { name: 'Team & host' }).click();
    const form = page.getByRole('form', { name: `Quota of team ${other}` });
    await form.getByLabel('Sandboxes (running or paused with memory)').fill('7');
    await form.getByLabel('Volumes').fill('3');
    await form.getByRole('button', { name: 'Save quota' }).click();
    await form.getByText('Quota saved.').waitFor();
    const q = await quotaOf(otherKey);
    assert.equal(q.sandboxes, 7, "the team's own key reads the new limit");
    assert.equal(q.volumes, 3);
    await page
      .getByRole('region', { name: 'Team dashboard-other' })
      .getByRole('row', { name: /^Sandboxes .* 1 of 7/ })
      .waitFor();
    await browser.shot(page, 'admin-quota');
    // an empty field is the default again; a team key gets no form at all
    await form.getByLabel('Volumes').fill('');
    await form.getByRole('button', { name: 'Save quota' }).click();
    await until('the default is back', async () => (await quotaOf(adminKey)).volumes === 10);
    clean(watch);
    await page.close();

    const team = await browser.page();
    await logIn(team.page, svc.url, otherKey);
    await team.page.getByRole('link', { name: 'Team & host' }).click();
    await team.page.getByRole('row', { name: /^Sandboxes .* of 7/ }).waitFor();
    assert.equal(await team.page.getByRole('form', { name: /^Quota of team/ }).count(), 0, 'no quota form for a team key');
    await team.page.getByText('cubebox_creates_waiting').waitFor(); // the public /metrics view instead
    assert.equal(await team.page.getByText('Network slots').count(), 0, 'nor the admin host view');
    clean(team.watch);
    await team.page.close();
  });

  it('a key made in the page is shown once and works from the SDK; revoked in the page, it is refused', async () => {
    await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: svc.url });
    const { page, watch } = await browser.page();
    await logIn(page, svc.url, key);
    await page.getByRole('link', { name: 'Team & host' }).click();
    await page.getByLabel('Name of a new key').fill('from-the-page');
    await page.getByRole('button', { name: 'Create key' }).click();
    const value = page.getByLabel('New API key value');
    await value.waitFor();
    const made = await value.inputValue();
    assert.match(made, /^e2b_[0-9a-f]{40}$/);
    await page.getByRole('button', { name: 'Copy', exact: true }).click();
    await page.getByText('Copied.').waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), made);
    await browser.shot(page, 'key-created');
    await page.getByRole('button', { name: 'Done' }).click();
    await value.waitFor({ state: 'detached' });
    assert.ok(!(await textOf(page)).includes(made.slice(12)), 'the key is shown once only');
    const row = page.getByRole('row').filter({ hasText: 'from-the-page' });
    await row.getByText(made.slice(0, 12), { exact: false }).waitFor();

    const listed = await e2b.Sandbox.list({ apiKey: made }).nextItems();
    assert.ok(
      listed.some((s) => s.sandboxId === mine[0]!.sandboxId),
      "the new key sees the team's sandboxes",
    );

    await page.getByRole('button', { name: 'Revoke key from-the-page' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByText('Revoke the key from-the-page?').waitFor();
    await browser.shot(page, 'key-revoke-confirmation');
    await dialog.getByRole('button', { name: 'Revoke' }).click();
    await row.waitFor({ state: 'detached' });
    await assert.rejects(e2b.Sandbox.list({ apiKey: made }).nextItems(), /401|Unauthorized|invalid api key|authenticat/i);
    assert.equal((await fetch(`${svc.url}/teams`, { headers: { 'X-API-Key': made } })).status, 401);
    clean(watch);
    await page.close();
  });

  it("shows a sandbox's egress rules (placeholders as given) and its upstream proxy, never the proxy's password", async () => {
    const password = `dash-pw-${Date.now()}`;
    const sbx = await newSandbox({
      network: {
        rules: { 'api.example': [{ transform: { headers: { 'X-Team': 'dashboard' } } }] },
        egressProxy: { address: '198.51.100.20:1080', username: 'dashuser', password },
      },
    } as Parameters<E2B['Sandbox']['create']>[1]);
    const { page, watch } = await browser.page();
    await logIn(page, svc.url, key);
    await page.getByRole('link', { name: sbx.sandboxId }).click();
    await page.getByRole('tab', { name: 'Network & ports' }).click();
    await page.getByText('SOCKS5 198.51.100.20:1080 as dashuser').waitFor();
    await page.getByText('X-Team: dashboard').waitFor();
    assert.ok((await page.content()).includes('api.example'));
    assert.ok(!(await page.content()).includes(password), "the page holds the proxy's password");
    await browser.shot(page, 'sandbox-network');
    clean(watch);
    await page.close();
    await sbx.kill();
  });

  it('a terminal in the page runs what is typed in it', async () => {
    const { page, watch } = await browser.page();
    await logIn(page, svc.url, key);
    await page.getByRole('link', { name: mine[0]!.sandboxId }).click();
    await page.getByRole('tab', { name: 'Terminal' }).click();
    await page.getByText(/Terminal: connected/).waitFor();
    await page.getByLabel('Terminal', { exact: true }).click();
    await page.keyboard.type('echo hi-from-browser');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => [...document.querySelectorAll('.xterm-rows > div')].some((d) => d.textContent?.trim() === 'hi-from-browser'));
    await browser.shot(page, 'sandbox-terminal');
    clean(watch);
    await page.close();
  });

  it('a file uploaded in the page is what the SDK reads; the page lists and downloads it', async () => {
    const { page, watch } = await browser.page();
    await logIn(page, svc.url, key);
    await page.goto(`${svc.url}/dashboard#/sandbox/${mine[0]!.sandboxId}`);
    await page.getByRole('tab', { name: 'Files' }).click();
    const content = 'uploaded through the dashboard\n';
    await page.locator('input[name="upload"]').setInputFiles({ name: 'from-browser.txt', mimeType: 'text/plain', buffer: Buffer.from(content) });
    await page.getByText('uploaded from-browser.txt').waitFor();
    assert.equal(await mine[0]!.files.read('/home/user/from-browser.txt'), content);
    await page.getByRole('cell', { name: 'from-browser.txt', exact: true }).waitFor();
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download from-browser.txt' }).click()]);
    assert.equal(download.suggestedFilename(), 'from-browser.txt');
    assert.equal(readFileSync((await download.path())!, 'utf8'), content);
    await browser.shot(page, 'sandbox-files');
    clean(watch);
    await page.close();
  });

  it('pause, resume and kill from the page, and the SDK agrees', async () => {
    const sbx = await newSandbox({ metadata: { purpose: 'lifecycle' } });
    const id = sbx.sandboxId;
    const { page, watch } = await browser.page();
    await logIn(page, svc.url, key);
    const row = page.getByRole('row').filter({ hasText: id });
    await row.waitFor();

    await page.getByRole('button', { name: `Pause ${id}` }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Pause' }).click();
    await row.getByText('paused', { exact: true }).waitFor();
    assert.equal((await e2b.Sandbox.getInfo(id)).state, 'paused');

    await page.getByRole('button', { name: `Resume ${id}` }).click();
    await row.getByText('running', { exact: true }).waitFor();
    assert.equal(await sbx.isRunning(), true);

    await page.getByRole('button', { name: `Kill ${id}` }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByText(`Kill ${id}?`).waitFor();
    await browser.shot(page, 'kill-confirmation');
    await page.keyboard.press('Escape'); // cancelling leaves it running
    await dialog.waitFor({ state: 'detached' });
    assert.equal(await sbx.isRunning(), true);
    await page.getByRole('button', { name: `Kill ${id}` }).click();
    await dialog.getByRole('button', { name: 'Kill' }).click();
    await row.waitFor({ state: 'detached' });
    await until('the SDK no longer lists it', async () => !(await e2b.Sandbox.list().nextItems()).some((s) => s.sandboxId === id));
    assert.equal(await e2b.Sandbox.kill(id), false, 'already killed');
    clean(watch);
    await page.close();
  });

  it('starts a sandbox from a template in the page', async () => {
    const { page, watch } = await browser.page();
    await logIn(page, svc.url, key);
    await page.getByRole('link', { name: 'Templates' }).click();
    const row = page.getByRole('row').filter({ has: page.getByRole('cell', { name: 'base', exact: true }) });
    await row.getByRole('button', { name: 'Start sandbox' }).click();
    await page.waitForURL(/#\/sandbox\/[a-z0-9]+$/);
    const id = decodeURIComponent(page.url().split('#/sandbox/')[1]!);
    created.push({ id, apiKey: key });
    await page.getByRole('heading', { name: id }).waitFor();
    assert.equal((await e2b.Sandbox.getInfo(id)).state, 'running');
    clean(watch);
    await page.close();
  });

  it('payloads in metadata, file names, logs, build logs, secrets and template names stay text', async () => {
    const payloads = {
      img: '<img src=x onerror="window.__xss=1">',
      script: '</script><script>window.__xss=2</script>',
      svg: '"><svg onload=alert(3)>',
    };
    const sbx = await newSandbox({ metadata: { ...payloads, purpose: 'xss' } });
    await sbx.files.write(`/home/user/${payloads.img}`, 'x');
    await sbx.files.write(`/home/user/${payloads.svg}`, 'x');
    // the console log is the sandbox's PID 1 output
    await sbx.commands.run(`printf '%s\\n' '${payloads.img}' '${payloads.script}' > /proc/1/fd/1`, { user: 'root' });
    const api = (path: string, init: RequestInit = {}) =>
      fetch(`${svc.url}${path}`, { ...init, headers: { 'X-API-Key': key, 'content-type': 'application/json', ...(init.headers ?? {}) } });
    const logs = (await (await api(`/v2/sandboxes/${sbx.sandboxId}/logs`)).json()) as { logs: { message: string }[] };
    assert.ok(
      logs.logs.some((l) => l.message.includes(payloads.script)),
      'the payload is in the log',
    );
    const secret = await api('/secrets', { method: 'POST', body: JSON.stringify({ name: 'xss-secret', value: 'v', metadata: { note: payloads.img } }) });
    assert.equal(secret.status, 201, await secret.text());
    // template names are refused by the API before any page could show them
    const tpl = await api('/v3/templates', { method: 'POST', body: JSON.stringify({ name: payloads.img, cpuCount: 1, memoryMB: 256 }) });
    assert.equal(tpl.status, 400);

    await e2b.Template.build(e2b.Template().fromTemplate('base').runCmd(`echo '${payloads.img}'`), 'xss-build');

    const { page, watch } = await browser.page();
    await logIn(page, svc.url, key);
    await page.getByText(`img=${payloads.img}`).waitFor();
    assert.ok((await textOf(page)).includes(`script=${payloads.script}`));
    await page.goto(`${svc.url}/dashboard#/sandbox/${sbx.sandboxId}`);
    await page.getByRole('tab', { name: 'Logs' }).click();
    await page.locator('pre.logs').getByText(payloads.script).waitFor();
    await browser.shot(page, 'xss-logs');
    await page.getByRole('tab', { name: 'Files' }).click();
    await page.getByRole('cell', { name: payloads.img, exact: true }).waitFor();
    await page.getByRole('cell', { name: payloads.svg, exact: true }).waitFor();
    await browser.shot(page, 'xss-files');
    await page.getByRole('link', { name: 'Storage' }).click();
    await page.getByText(`note=${payloads.img}`).waitFor();
    await page.getByRole('link', { name: 'Templates' }).click();
    await page.getByRole('cell', { name: 'base', exact: true }).first().waitFor();
    const buildRow = page.getByRole('row').filter({ has: page.getByRole('cell', { name: 'xss-build', exact: true }) });
    await buildRow.getByRole('button', { name: 'Builds' }).click();
    await page.getByRole('button', { name: 'Show log' }).click();
    await page.getByLabel('Build log').getByText(payloads.img).first().waitFor();
    await browser.shot(page, 'xss-build-log');
    await page.getByRole('link', { name: 'Team & host' }).click();
    await page
      .getByText(/peak concurrent sandboxes/)
      .first()
      .waitFor();
    await page.getByRole('row', { name: /^Sandboxes \(running or paused with memory\) \d+ of 20/ }).waitFor();
    await browser.shot(page, 'team');
    assert.equal(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss), undefined, 'no payload ran');
    assert.equal(await page.locator('img[src="x"], svg[onload], script:not([src])').count(), 0, 'no payload became markup');
    clean(watch);
    await page.close();
  });
});
