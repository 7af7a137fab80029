import { spawnChild as spawn } from '../util/exec.js';
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { isAbsolute, join, relative } from 'node:path';
import type { SandboxManager } from '../sandbox/manager.js';
import { CubeboxError, errorMessage, invalid } from '../util/errors.js';
import { NAME_RE } from '../util/ids.js';
import { isRuntimeName, runtimeNames } from '../runtime/registry.js';
import type { Template } from '../template/store.js';
import { buildLayers, removeLayers } from './build.js';
import type { BuildStep, FileSource } from './steps.js';

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
  /** The runtime the template's sandboxes need (one of the registry's). */
  runtime?: string;
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
  if (recipe.runtime !== undefined && !(typeof recipe.runtime === 'string' && isRuntimeName(recipe.runtime)))
    throw invalid(`"runtime" must be one of ${runtimeNames().join(', ')}`);
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

/** A recipe's steps as the builder runs them (copy sources are read from the context directory). */
export function recipeSteps(recipe: Recipe, contextDir: string | undefined): BuildStep[] {
  return recipe.steps.map((s): BuildStep => {
    if ('run' in s) return { kind: 'run', cmd: s.run };
    if ('copy' in s) return { kind: 'copy', src: contextRelative(contextDir, s.copy.src), dest: s.copy.dest, files: contextFiles(contextDir!, s.copy.src) };
    if ('env' in s) return { kind: 'env', env: s.env };
    if ('workdir' in s) return { kind: 'workdir', dir: s.workdir };
    if ('user' in s) return { kind: 'user', user: s.user };
    if ('start' in s) return { kind: 'start', cmd: s.start };
    return { kind: 'ready', cmd: s.ready };
  });
}

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
  const from = manager.templates.get(recipe.from);
  const started = Date.now();
  const r = await buildLayers(manager, {
    from,
    steps: recipeSteps(recipe, opts.contextDir),
    metadata: { 'cubebox.build-name': name },
    log: (_level, message) => progress(message),
  });
  try {
    // the final template: the last layer's stack with the recipe's settings
    const template = manager.templates.addDerived(name, r.top, { ...r.settings, ...(recipe.runtime ? { runtime: recipe.runtime } : {}) });
    progress(`built '${name}' in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return { template, steps: r.steps };
  } catch (err) {
    removeLayers(manager, r.made, (_l, m) => progress(m));
    throw err;
  }
}

function contextRelative(contextDir: string | undefined, src: string): string {
  const root = realpathSync(contextDir!);
  return relative(root, contextPath(contextDir, src)) || '.';
}

/** A copy source in the context: its content hash, and a tar of it (relative to the context). */
function contextFiles(contextDir: string, src: string): FileSource {
  const path = contextPath(contextDir, src);
  const root = realpathSync(contextDir);
  return {
    hash: hashContext(path),
    open() {
      const tar = spawn('tar', ['-c', '-C', root, relative(root, path) || '.'], { stdio: ['ignore', 'pipe', 'ignore'] });
      return tar.stdout;
    },
  };
}

function hashContext(path: string): string {
  const h = createHash('sha256');
  const walk = (p: string) => {
    const st = lstatSync(p);
    h.update(`${relative(path, p)}:${st.mode}:${st.size}\n`);
    if (st.isSymbolicLink()) h.update(readlinkSync(p));
    else if (st.isDirectory()) {
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
