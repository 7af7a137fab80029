// Headless Chromium (Debian's, driven by playwright-core) for the dashboard's tests: a profile
// under the test's output directory, and a close that checks the browser's processes and profile
// are gone. Pages record what must never happen: dialogs, uncaught errors, CSP refusals.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { PROJECT_ROOT } from '../../src/config.js';

export const CHROMIUM = '/usr/bin/chromium';
// without the background-networking flags Chromium tries to reach Google's services
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Process ids whose process group is `pgid` (the browser and everything it started). */
function processesOfGroup(pgid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid) out.push(Number(e));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** Our own children that run Chromium: the browser playwright started (it leads its own process group). */
function chromiumChildren(): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid && readFileSync(`/proc/${e}/cmdline`, 'utf8').includes('chromium')) out.push(Number(e));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

export interface PageWatch {
  dialogs: string[];
  errors: string[];
  cspRefusals: string[];
}

export interface TestBrowser {
  context: BrowserContext;
  outDir: string;
  /** A new tab that records dialogs (and dismisses them), page errors and CSP refusals. */
  page(): Promise<{ page: Page; watch: PageWatch }>;
  shot(page: Page, name: string): Promise<string>;
  /** Closes the browser; asserts its processes are gone, then removes its profile. */
  close(): Promise<void>;
}

export async function startBrowser(name: string): Promise<TestBrowser> {
  // screenshots are the run's output: in the checkout (git-ignored), replaced by the next run
  const outDir = join(PROJECT_ROOT, 'test-output', 'browser', name);
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });
  const profile = join(outDir, 'profile');
  const known = new Set(chromiumChildren());
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 800 },
  });
  const groups = chromiumChildren().filter((p) => !known.has(p));
  assert.ok(groups.length >= 1, 'the browser process is a child of the test');
  return {
    context,
    outDir,
    async page() {
      const page = await context.newPage();
      const watch: PageWatch = { dialogs: [], errors: [], cspRefusals: [] };
      page.on('dialog', (d) => {
        watch.dialogs.push(`${d.type()}: ${d.message()}`);
        void d.dismiss().catch(() => undefined);
      });
      page.on('pageerror', (e) => watch.errors.push(e.message));
      page.on('console', (m) => {
        if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) watch.cspRefusals.push(m.text());
      });
      return { page, watch };
    },
    async shot(page, shotName) {
      const path = join(outDir, `${shotName}.png`);
      await page.screenshot({ path });
      return path;
    },
    async close() {
      await context.close();
      for (let i = 0; i < 100 && groups.some((g) => processesOfGroup(g).length); i++) await new Promise((r) => setTimeout(r, 100));
      for (const g of groups) assert.deepEqual(processesOfGroup(g), [], `the browser's processes (group ${g}) are gone`);
      rmSync(profile, { recursive: true, force: true });
      assert.equal(existsSync(profile), false);
    },
  };
}

/** Opens the dashboard and logs in with the keyboard only: the key field has focus, Enter submits. */
export async function logIn(page: Page, url: string, key: string): Promise<void> {
  await page.goto(`${url}/dashboard`);
  await page.locator('input[name="apiKey"]:focus').waitFor();
  await page.keyboard.type(key);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Sandboxes' }).waitFor();
}

/** The page's visible text. */
export const textOf = (page: Page): Promise<string> => page.evaluate(() => document.body.innerText);
