// The builder both the host's recipes and E2B's build API use: it runs a build's layer steps
// in real sandboxes of the template built so far, commits each as a layer (reusing the layer an
// earlier build made for the same parent, step, settings and files), and checks the start
// command. A failure removes what the build made and reports the step's output.
import type { ChildProcess } from 'node:child_process';
import type { SandboxManager } from '../sandbox/manager.js';
import type { Template } from '../template/store.js';
import { CubeboxError, errorMessage } from '../util/errors.js';
import { applySettings, copyScript, describeStep, layerKey, makesLayer, runArgv, type BuildStep, type StepSettings } from './steps.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type BuildLog = (level: LogLevel, message: string, step?: string) => void;

export interface LayerPlan {
  from: Template;
  steps: BuildStep[];
  /** The team the layers belong to (undefined: the host's). */
  team?: string;
  /** Each build sandbox's CPUs and memory. */
  limits?: { cpuCount?: number; memoryMB?: number };
  /** Build every layer anew (the cache is neither read nor kept for the steps it forces). */
  force?: boolean;
  /** Ends the build (time limit, shutdown): the step running is killed. */
  signal?: AbortSignal;
  /** Marks the build's sandboxes (metadata), so that a restart finds what an interrupted build left. */
  metadata?: Record<string, string>;
  /** How long the ready command may take to pass after the start command. */
  readyTimeoutMs?: number;
  log: BuildLog;
}

export interface LayerResult {
  /** The topmost layer's template (the final template takes its layers). */
  top: Template;
  settings: StepSettings;
  steps: { step: string; cached: boolean }[];
  /** Layers this build made (a caller that fails later removes them). */
  made: Template[];
}

/** A step that failed: its number (1-based; 'finalize' for the start check) and the output's last lines. */
export class StepFailure extends CubeboxError {
  constructor(
    readonly step: string,
    message: string,
  ) {
    super('invalid_argument', message);
  }
}

const OUTPUT_LINES = 20;

export async function buildLayers(manager: SandboxManager, plan: LayerPlan): Promise<LayerResult> {
  const { log } = plan;
  let current = plan.from;
  const settings: StepSettings = { env: { ...current.config.env }, user: current.config.user, workdir: current.config.workdir };
  if (current.config.startCommand) settings.startCommand = current.config.startCommand;
  if (current.config.readyCommand) settings.readyCommand = current.config.readyCommand;
  const made: Template[] = [];
  const results: LayerResult['steps'] = [];
  let key = current.id;
  const total = plan.steps.length;
  try {
    for (const [i, step] of plan.steps.entries()) {
      plan.signal?.throwIfAborted();
      const n = String(i + 1);
      const label = `[${i + 1}/${total}] ${describeStep(step)}`;
      if (!makesLayer(step)) {
        applySettings(step, settings);
        log('info', label, n);
        results.push({ step: describeStep(step), cached: true });
        continue;
      }
      key = layerKey(key, plan.team, step, settings);
      const force = plan.force || step.force;
      const cached = force ? undefined : manager.templates.list().find((t) => t.config.cacheKey === key && t.config.buildStep);
      if (cached) {
        log('info', `CACHED ${label}`, n);
        current = cached;
        results.push({ step: describeStep(step), cached: true });
        continue;
      }
      log('info', label, n);
      const started = Date.now();
      current = await runLayerStep(manager, plan, current, step, settings, key, n);
      made.push(current);
      log('info', `[${i + 1}/${total}] done in ${((Date.now() - started) / 1000).toFixed(1)} s`, n);
      results.push({ step: describeStep(step), cached: false });
    }
    if (settings.startCommand) await checkStart(manager, plan, current, settings);
    return { top: current, settings, steps: results, made };
  } catch (err) {
    removeLayers(manager, made, log);
    throw err;
  }
}

/** Removes layers a failed build made, newest first (one another build now stands on stays). */
export function removeLayers(manager: SandboxManager, made: Template[], log: BuildLog): void {
  for (const t of [...made].reverse()) {
    try {
      manager.templates.remove(t.id);
    } catch (e) {
      log('warn', `could not remove layer ${t.name}: ${errorMessage(e)}`);
    }
  }
}

async function runLayerStep(
  manager: SandboxManager,
  plan: LayerPlan,
  parent: Template,
  step: Extract<BuildStep, { kind: 'run' | 'copy' }>,
  settings: StepSettings,
  cacheKey: string,
  n: string,
): Promise<Template> {
  const sbx = await manager.create({ template: parent.id, agent: false, limits: plan.limits, metadata: plan.metadata });
  try {
    const out = (line: string) => plan.log('info', line, n);
    const result =
      step.kind === 'run'
        ? await execCollect(manager, sbx.id, runArgv(step, settings), settings.env, out, plan.signal)
        : await execCollect(manager, sbx.id, ['/bin/sh', '-c', copyScript(step, settings.user)], {}, out, plan.signal, step.files.open());
    if (result.code !== 0) {
      const tail = result.lines.slice(-OUTPUT_LINES).join('\n');
      throw new StepFailure(n, `step ${n} failed (exit ${result.code}): ${describeStep(step)}${tail ? `\n${tail}` : ''}`);
    }
    const name = `${(plan.metadata?.['cubebox.build-name'] ?? parent.name).slice(0, 36)}.step${n}-${cacheKey.slice(0, 10)}`;
    return await manager.snapshot(sbx.id, { name, config: { cacheKey, buildStep: true, ...(plan.team ? { team: plan.team } : {}) } });
  } finally {
    await manager.delete(sbx.id).catch(() => undefined);
  }
}

/**
 * The start command in a sandbox of the finished layers, then the ready command until it
 * passes (bounded): a template whose start command never gets ready is not made.
 */
async function checkStart(manager: SandboxManager, plan: LayerPlan, top: Template, settings: StepSettings): Promise<void> {
  const timeoutMs = plan.readyTimeoutMs ?? 120_000;
  plan.log('info', `[finalize] starting: ${settings.startCommand}`, 'finalize');
  const sbx = await manager.create({ template: top.id, agent: false, limits: plan.limits, metadata: plan.metadata });
  try {
    const cwd = settings.workdir ? `cd ${JSON.stringify(settings.workdir)} 2>/dev/null; ` : '';
    const start = await manager.exec(sbx.id, ['/bin/sh', '-c', `${cwd}(${settings.startCommand}) >/tmp/.cubebox-start.log 2>&1 &`], {
      env: settings.env,
      stdio: 'ignore',
    });
    await new Promise<void>((r) => start.on('close', () => r()));
    if (!settings.readyCommand) return;
    const until = Date.now() + timeoutMs;
    let last = -1;
    while (Date.now() < until) {
      plan.signal?.throwIfAborted();
      const r = await execCollect(manager, sbx.id, ['/bin/sh', '-c', `${cwd}${settings.readyCommand}`], settings.env, () => undefined, plan.signal);
      last = r.code;
      if (last === 0) {
        plan.log('info', '[finalize] the start command is ready', 'finalize');
        return;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    const logTail = await execCollect(manager, sbx.id, ['/bin/sh', '-c', 'tail -n 20 /tmp/.cubebox-start.log'], {}, () => undefined);
    throw new StepFailure(
      'finalize',
      `the start command did not become ready in ${Math.round(timeoutMs / 1000)} s (ready command '${settings.readyCommand}' last exited ${last})` +
        (logTail.lines.length ? `\n${logTail.lines.join('\n')}` : ''),
    );
  } finally {
    await manager.delete(sbx.id).catch(() => undefined);
  }
}

/** Runs a command in the sandbox, passing its output on line by line; keeps the last lines (bounded). */
async function execCollect(
  manager: SandboxManager,
  id: string,
  argv: string[],
  env: Record<string, string>,
  onLine: (line: string) => void,
  signal?: AbortSignal,
  stdin?: NodeJS.ReadableStream,
): Promise<{ code: number; lines: string[] }> {
  const child: ChildProcess = await manager.exec(id, argv, { stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'], env });
  const lines: string[] = [];
  const partial = { out: '', err: '' };
  const take = (which: 'out' | 'err') => (d: Buffer) => {
    partial[which] += d.toString();
    if (partial[which].length > 64 * 1024) partial[which] = partial[which].slice(-64 * 1024); // a line without end
    let nl: number;
    while ((nl = partial[which].indexOf('\n')) >= 0) {
      const line = partial[which].slice(0, nl).slice(0, 4096);
      partial[which] = partial[which].slice(nl + 1);
      lines.push(line);
      if (lines.length > 200) lines.splice(0, lines.length - 200);
      if (line.trim()) onLine(line);
    }
  };
  child.stdout!.on('data', take('out'));
  child.stderr!.on('data', take('err'));
  if (stdin) {
    stdin.on('error', () => child.stdin?.destroy());
    child.stdin!.on('error', () => undefined);
    stdin.pipe(child.stdin!);
  }
  const kill = () => child.kill('SIGKILL');
  signal?.addEventListener('abort', kill, { once: true });
  try {
    const code = await new Promise<number>((resolve) => child.on('close', (c, s) => resolve(c ?? (s ? 137 : 1))));
    for (const rest of [partial.out, partial.err]) {
      if (!rest.trim()) continue;
      lines.push(rest.slice(0, 4096));
      onLine(rest.slice(0, 4096));
    }
    signal?.throwIfAborted();
    return { code, lines };
  } finally {
    signal?.removeEventListener('abort', kill);
  }
}
