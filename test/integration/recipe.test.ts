import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { buildRecipe, parseRecipe, type Recipe } from '../../src/builder/recipe.js';
import { CubeboxError } from '../../src/util/errors.js';
import { assertNoSandboxLeaks, destroyInstance, execIn, newInstance } from '../helpers/instance.js';

describe('template build recipes', { timeout: 600_000 }, () => {
  let m: SandboxManager;
  let ctx: string;
  const recipe: Recipe = {
    from: 'busybox',
    steps: [
      { run: 'echo built > /built.txt && mkdir -p /opt' },
      { copy: { src: 'app', dest: '/opt/app' } },
      { env: { GREETING: 'hi from the recipe' } },
      { workdir: '/opt/app' },
      { start: 'echo started > /tmp/started; sleep 100000' },
      { ready: 'test -f /tmp/started' },
    ],
  };

  before(async () => {
    m = await newInstance();
    ctx = mkdtempSync('/var/tmp/cubebox-recipe-');
    mkdirSync(join(ctx, 'app'));
    writeFileSync(join(ctx, 'app', 'hello.txt'), 'hello from the context\n');
  });
  after(async () => {
    rmSync(ctx, { recursive: true, force: true });
    await destroyInstance(m);
  });

  // The first build of `recipe` as template `app` (made once, by whichever test needs it first).
  let appBuilt: ReturnType<typeof buildRecipe> | undefined;
  const buildApp = () => (appBuilt ??= buildRecipe(m, 'app', recipe, { contextDir: ctx }));

  it('runs the steps in real sandboxes, commits layers, and applies settings', async () => {
    const r = await buildApp();
    assert.deepEqual(
      r.steps.map((s) => s.cached),
      [false, false, true, true, true, true],
    );
    const sbx = await m.create({ template: 'app', agent: false });
    const out = await execIn(m, sbx.id, ['sh', '-c', 'cat /built.txt /opt/app/hello.txt /tmp/started; echo "$GREETING"']);
    assert.equal(out.stdout, 'built\nhello from the context\nstarted\nhi from the recipe\n');
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
  });

  it('caches unchanged steps across builds', async () => {
    await buildApp();
    const layersBefore = readdirSync(m.paths.layersDir).length;
    const r = await buildRecipe(m, 'app-again', recipe, { contextDir: ctx });
    assert.ok(
      r.steps.every((s) => s.cached),
      JSON.stringify(r.steps),
    );
    assert.equal(readdirSync(m.paths.layersDir).length, layersBefore, 'no new layers');
    // a changed file in the context invalidates the copy step, not the run step before it
    writeFileSync(join(ctx, 'app', 'hello.txt'), 'changed\n');
    const r2 = await buildRecipe(m, 'app-changed', recipe, { contextDir: ctx });
    assert.deepEqual(
      r2.steps.slice(0, 2).map((s) => s.cached),
      [true, false],
    );
  });

  it('reports a failing step with its output and leaves nothing behind', async () => {
    const templatesBefore = m.templates.list().length;
    const layersBefore = readdirSync(m.paths.layersDir).length;
    const bad: Recipe = { from: 'busybox', steps: [{ run: 'echo step-one-ok > /x' }, { run: 'echo this-is-the-output; echo to-stderr >&2; exit 3' }] };
    await assert.rejects(buildRecipe(m, 'broken', bad, { contextDir: ctx }), (err: unknown) => {
      assert.ok(err instanceof CubeboxError);
      assert.match(err.message, /exit 3/);
      assert.match(err.message, /this-is-the-output/);
      assert.match(err.message, /to-stderr/);
      return true;
    });
    assert.equal(m.templates.list().length, templatesBefore);
    assert.equal(readdirSync(m.paths.layersDir).length, layersBefore);
    assert.equal(m.list().length, 0, 'no build sandbox remains');
  });

  it('refuses bad recipes clearly', () => {
    assert.throws(() => parseRecipe('{'), /not valid JSON/);
    assert.throws(() => parseRecipe('{"from": "busybox"}'), /"steps"/);
    assert.throws(() => parseRecipe('{"from": "busybox", "steps": [{"explode": 1}]}'), /step 1 must have exactly one of/);
    assert.throws(() => parseRecipe('{"from": "busybox", "steps": [{"copy": {"src": "a", "dest": "rel"}}]}'), /absolute/);
  });

  it('refuses copy sources outside the build context', async () => {
    await assert.rejects(
      buildRecipe(m, 'escape', { from: 'busybox', steps: [{ copy: { src: '../../etc/passwd', dest: '/p' } }] }, { contextDir: ctx }),
      /outside the build context|does not exist/,
    );
    assert.equal(m.list().length, 0);
  });
});
