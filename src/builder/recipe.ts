import { spawnChild as spawn } from '../util/exec.js';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { isAbsolute, join, relative } from 'node:path';
import type { SandboxManager } from '../sandbox/manager.js';
import { CubeboxError, errorMessage, invalid } from '../util/errors.js';
import { NAME_RE } from '../util/ids.js';
import type { Template, TemplateConfig } from '../template/store.js';

// Builds sit above sandboxes and templates: a recipe runs its steps in real sandboxes and
// commits each as a template layer.

/**
 * A build recipe: a parent template plus steps. `run` and `copy` steps execute in a real
 * sandbox of the template built so far and are committed as a layer each; the other steps
 * change the new template's settings.
 */
export interface Recipe {
  from: string;
  steps: RecipeStep[];
}

export type RecipeStep =
  | { run: string }
  | { copy: { src: string; dest: string } }
  | { env: Record<string, string> }
  | { workdir: string }
  | { user: string }
  | { start: string }
  | { ready: string };

export interface BuildResult {
  template: Template;
  /** Per step: whether its layer came from the cache. */
  steps: { step: string; cached: boolean }[];
}

export function parseRecipe(text: string): Recipe {
  let r: unknown;
  try {
    r = JSON.parse(text);
  } catch (err) {
    throw invalid(`the recipe is not valid JSON: ${errorMessage(err)}`);
  }
  const recipe = r as Recipe;
  if (!recipe || typeof recipe.from !== 'string' || !Array.isArray(recipe.steps)) throw invalid('a recipe needs "from" (a template) and "steps" (a list)');
  recipe.steps.forEach((s, i) => {
    const keys = s && typeof s === 'object' ? Object.keys(s) : [];
    const known = ['run', 'copy', 'env', 'workdir', 'user', 'start', 'ready'];
    if (keys.length !== 1 || !known.includes(keys[0]!)) throw invalid(`step ${i + 1} must have exactly one of ${known.join(', ')}`);
    const st = s as Record<string, unknown>;
    if ('copy' in st) {
      const c = st.copy as { src?: unknown; dest?: unknown };
      if (typeof c?.src !== 'string' || typeof c?.dest !== 'string' || !c.dest.startsWith('/'))
        throw invalid(`step ${i + 1}: copy needs "src" (in the context) and an absolute "dest"`);
    } else if ('env' in st) {
      if (typeof st.env !== 'object' || st.env === null || Object.values(st.env).some((v) => typeof v !== 'string'))
        throw invalid(`step ${i + 1}: env must map names to strings`);
    } else if (typeof Object.values(st)[0] !== 'string') {
      throw invalid(`step ${i + 1}: ${keys[0]} must be a string`);
    }
  });
  return recipe;
}

const describe = (s: RecipeStep) => JSON.stringify(s).slice(0, 120);

/**
 * Builds a template from a recipe. Unchanged steps reuse the layer an earlier build made
 * (keyed by the parent, the step, the settings so far and the copied files' content). A
 * failing step reports its output and removes what this build made.
 */
export async function buildRecipe(
  manager: SandboxManager,
  name: string,
  recipe: Recipe,
  opts: { contextDir?: string; onProgress?: (line: string) => void } = {},
): Promise<BuildResult> {
  const progress = opts.onProgress ?? (() => undefined);
  if (!NAME_RE.test(name)) throw invalid(`bad template name '${name}': use lowercase letters, digits, '.', '_' and '-' (max 63)`);
  if (manager.templates.find(name)) throw new CubeboxError('conflict', `template '${name}' already exists`);
  let current = manager.templates.get(recipe.from);
  const settings: Partial<TemplateConfig> = { env: { ...current.config.env }, user: current.config.user, workdir: current.config.workdir };
  const made: Template[] = [];
  const results: BuildResult['steps'] = [];
  let key = current.id;
  try {
    for (const [i, step] of recipe.steps.entries()) {
      const label = `step ${i + 1}/${recipe.steps.length}`;
      if ('env' in step) settings.env = { ...settings.env, ...step.env };
      else if ('workdir' in step) settings.workdir = step.workdir;
      else if ('user' in step) settings.user = step.user;
      else if ('start' in step) settings.startCommand = step.start;
      else if ('ready' in step) settings.readyCommand = step.ready;
      if (!('run' in step) && !('copy' in step)) {
        results.push({ step: describe(step), cached: true });
        continue;
      }
      const contentHash = 'copy' in step ? hashContext(opts.contextDir, step.copy.src) : '';
      key = createHash('sha256')
        .update(JSON.stringify([key, step, settings.env, settings.user, settings.workdir, contentHash]))
        .digest('hex');
      const cached = manager.templates.list().find((t) => t.config.cacheKey === key);
      if (cached) {
        progress(`${label}: ${describe(step)} (cached)`);
        current = cached;
        results.push({ step: describe(step), cached: true });
        continue;
      }
      progress(`${label}: ${describe(step)}`);
      current = await runStep(manager, current, step, settings, `${name}.step${i + 1}-${key.slice(0, 10)}`, key, opts.contextDir, progress);
      made.push(current);
      results.push({ step: describe(step), cached: false });
    }
    // the final template: the last layer's stack with the recipe's settings
    const final = manager.templates.addDerived(name, current, settings);
    return { template: final, steps: results };
  } catch (err) {
    for (const t of made.reverse()) {
      try {
        manager.templates.remove(t.id);
      } catch (e) {
        progress(`could not remove ${t.name}: ${errorMessage(e)}`);
      }
    }
    throw err;
  }
}

function hashContext(contextDir: string | undefined, src: string): string {
  const path = contextPath(contextDir, src);
  const h = createHash('sha256');
  const walk = (p: string) => {
    const st = statSync(p);
    h.update(`${relative(path, p)}:${st.mode}:${st.size}\n`);
    if (st.isDirectory()) {
      for (const e of readdirSync(p).sort()) walk(join(p, e));
    } else if (st.isFile()) {
      h.update(readFileSync(p));
    }
  };
  walk(path);
  return h.digest('hex');
}

/** A path inside the build context (refusing anything that resolves outside it). */
function contextPath(contextDir: string | undefined, src: string): string {
  if (!contextDir) throw invalid('a copy step needs a build context directory');
  const root = realpathSync(contextDir);
  const full = isAbsolute(src) ? src : join(root, src);
  let real: string;
  try {
    real = realpathSync(full);
  } catch {
    throw invalid(`copy source '${src}' does not exist in the build context`);
  }
  if (real !== root && !real.startsWith(root + '/')) throw invalid(`copy source '${src}' is outside the build context`);
  return real;
}

async function runStep(
  manager: SandboxManager,
  parent: Template,
  step: RecipeStep,
  settings: Partial<TemplateConfig>,
  layerName: string,
  cacheKey: string,
  contextDir: string | undefined,
  progress: (line: string) => void,
): Promise<Template> {
  const sbx = await manager.create({ template: parent.id, agent: false });
  try {
    let result: { code: number; output: string };
    if ('run' in step) {
      const argv = settings.user && settings.user !== 'root' ? ['su', '-s', '/bin/sh', settings.user, '-c', step.run] : ['/bin/sh', '-c', step.run];
      result = await execCollect(manager, sbx.id, argv, { env: settings.env, cwd: settings.workdir }, progress);
    } else if ('copy' in step) {
      const path = contextPath(contextDir, step.copy.src);
      const isDir = statSync(path).isDirectory();
      const dest = step.copy.dest;
      // stream a tar of the source into the sandbox; tar extracts it inside, as the sandbox sees it
      const target = isDir ? dest : dest.replace(/\/[^/]*$/, '') || '/';
      const inner = isDir ? `mkdir -p '${dest}' && tar -x -C '${dest}'` : `mkdir -p '${target}' && tar -x -O > '${dest}'`;
      const tarArgs = isDir ? ['-c', '-C', path, '.'] : ['-c', '-C', join(path, '..'), relative(join(path, '..'), path)];
      result = await execCollect(manager, sbx.id, ['/bin/sh', '-c', inner], {}, progress, tarArgs);
    } else {
      throw new Error('not a layer step');
    }
    if (result.code !== 0) {
      throw new CubeboxError(
        'invalid_argument',
        `build step failed (exit ${result.code}): ${describe(step)}\n${result.output.trim().split('\n').slice(-40).join('\n')}`,
      );
    }
    return await manager.snapshot(sbx.id, { name: layerName, config: { cacheKey, buildStep: true } });
  } finally {
    await manager.delete(sbx.id).catch(() => undefined);
  }
}

async function execCollect(
  manager: SandboxManager,
  id: string,
  argv: string[],
  opts: { env?: Record<string, string>; cwd?: string },
  progress: (line: string) => void,
  tarArgs?: string[],
): Promise<{ code: number; output: string }> {
  const child = await manager.exec(id, argv, { stdio: [tarArgs ? 'pipe' : 'ignore', 'pipe', 'pipe'], env: opts.env, cwd: opts.cwd });
  let output = '';
  const onData = (d: Buffer) => {
    const text = d.toString();
    output += text;
    if (output.length > 1_000_000) output = output.slice(-500_000);
    for (const line of text.split('\n')) if (line.trim()) progress(`  ${line}`);
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  if (tarArgs) {
    const tar = spawn('tar', tarArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
    tar.stdout.pipe(child.stdin!);
    tar.stderr.on('data', onData);
  }
  const code = await new Promise<number>((resolve) => child.on('close', (c, s) => resolve(c ?? (s ? 137 : 1))));
  return { code, output };
}
