// The sandboxes view with a hundred sandboxes: every id in the page's text, and how long the
// first paint takes, measured in the browser (reported, not asserted: the host is shared).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';
import { logIn, startBrowser, textOf, type TestBrowser } from './browser.js';

const COUNT = 100;
let e2b: E2B;
let svc: Service;
let dataDir: string;
let key: string;
let browser: TestBrowser;
const ids: string[] = [];

/** Runs `fn` over `items`, eight at a time. */
async function inParallel<T>(items: T[], fn: (x: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: 8 }, worker));
}

describe('the sandboxes view with a hundred sandboxes', { timeout: 300_000 }, () => {
  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService());
    const r = await cli(dataDir, ['keys', 'create', '--name', 'many', '--team', 'dashboard-many']);
    assert.equal(r.code, 0, r.stderr);
    key = r.stdout.trim().split('\n').pop()!.trim();
    const q = await cli(dataDir, [
      'teams',
      'set-quota',
      'dashboard-many',
      '--sandboxes',
      '200',
      '--vcpus',
      '1000',
      '--memory-mb',
      '200000',
      '--disk-mb',
      '400000',
    ]);
    assert.equal(q.code, 0, q.stderr);
    browser = await startBrowser('many');
  });

  after(async () => {
    await browser?.close();
    const kill = (id: string) => e2b.Sandbox.kill(id, { apiKey: key });
    await inParallel(ids, (id) => kill(id).catch(() => undefined));
    await inParallel(ids, async (id) => assert.equal(await kill(id), false, `sandbox ${id} is gone`));
    await svc?.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('lists every one of them; first paint measured in the browser', async (t) => {
    const started = Date.now();
    await inParallel(
      Array.from({ length: COUNT }, (_, i) => i + 1),
      async (n) => ids.push((await e2b.Sandbox.create('base', { apiKey: key, metadata: { batch: 'many', n: String(n) } })).sandboxId),
    );
    t.diagnostic(`${COUNT} sandboxes created through the SDK in ${((Date.now() - started) / 1000).toFixed(1)} s`);

    const { page, watch } = await browser.page();
    await logIn(page, svc.url, key);
    // measured on a reload (the key is in the tab's session storage): from navigation to the rows
    await page.addInitScript(`(() => {
      const seen = () => document.querySelectorAll('table.sandboxes tbody tr').length >= ${COUNT};
      new MutationObserver((_, obs) => {
        if (seen()) { window.__rowsAt = performance.now(); obs.disconnect(); }
      }).observe(document, { childList: true, subtree: true });
    })()`);
    await page.reload();
    await page.waitForFunction(() => (window as unknown as { __rowsAt?: number }).__rowsAt !== undefined);
    const timing = await page.evaluate(() => ({
      rows: (window as unknown as { __rowsAt: number }).__rowsAt,
      fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime,
      dcl:
        performance.getEntriesByType('navigation')[0] &&
        (performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming).domContentLoadedEventEnd,
    }));
    t.diagnostic(
      `first paint with ${COUNT} sandboxes: first contentful paint ${timing.fcp?.toFixed(0)} ms, DOMContentLoaded ${timing.dcl?.toFixed(0)} ms, all ${COUNT} rows in the DOM at ${timing.rows.toFixed(0)} ms`,
    );
    const text = await textOf(page);
    for (const id of ids) assert.ok(text.includes(id), `${id} is listed`);
    await browser.shot(page, 'sandboxes-100');

    // the search narrows the list as it is typed
    await page.getByRole('searchbox', { name: 'Search' }).fill('n=42');
    await page.getByText(`1 of ${COUNT}`).waitFor();
    assert.deepEqual(watch.dialogs, []);
    assert.deepEqual(watch.errors, []);
    assert.deepEqual(watch.cspRefusals, []);
    await page.close();
  });
});
