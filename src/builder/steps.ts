// A build's steps as the builder runs them, whoever wrote them (a host recipe, E2B's build
// API): what each compiles to in the sandbox, and the cache key of the layer it makes.
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { invalid } from '../util/errors.js';

/** Files a copy step takes: a tar stream of them (paths relative to the build context) and its content hash. */
export interface FileSource {
  hash: string;
  open(): Readable;
}

export type BuildStep =
  | { kind: 'run'; cmd: string; user?: string; force?: boolean }
  | { kind: 'copy'; src: string; dest: string; owner?: string; mode?: string; files: FileSource; force?: boolean }
  | { kind: 'env'; env: Record<string, string> }
  | { kind: 'workdir'; dir: string }
  | { kind: 'user'; user: string }
  | { kind: 'start'; cmd: string }
  | { kind: 'ready'; cmd: string };

/** The settings a build carries from step to step (and gives the template at the end). */
export interface StepSettings {
  env: Record<string, string>;
  user: string;
  workdir?: string;
  startCommand?: string;
  readyCommand?: string;
}

/** Whether the step makes a layer (runs in a sandbox) rather than changing settings. */
export const makesLayer = (s: BuildStep): s is Extract<BuildStep, { kind: 'run' | 'copy' }> => s.kind === 'run' || s.kind === 'copy';

/** How a step reads in a log line. */
export function describeStep(s: BuildStep): string {
  const short = (t: string) => (t.length > 200 ? `${t.slice(0, 200)}...` : t);
  switch (s.kind) {
    case 'run':
      return short(`RUN ${s.cmd}${s.user ? ` (as ${s.user})` : ''}`);
    case 'copy':
      return short(`COPY ${s.src} ${s.dest}${s.owner ? ` (owner ${s.owner})` : ''}${s.mode ? ` (mode ${s.mode})` : ''}`);
    case 'env':
      return short(
        `ENV ${Object.entries(s.env)
          .map(([k, v]) => `${k}=${v}`)
          .join(' ')}`,
      );
    case 'workdir':
      return `WORKDIR ${s.dir}`;
    case 'user':
      return `USER ${s.user}`;
    case 'start':
      return short(`START ${s.cmd}`);
    case 'ready':
      return short(`READY ${s.cmd}`);
  }
}

/** Applies a settings step (env, workdir, user, start, ready); layer steps leave settings as they are. */
export function applySettings(s: BuildStep, settings: StepSettings): void {
  if (s.kind === 'env') settings.env = { ...settings.env, ...s.env };
  else if (s.kind === 'workdir') settings.workdir = s.dir;
  else if (s.kind === 'user') settings.user = s.user;
  else if (s.kind === 'start') settings.startCommand = s.cmd;
  else if (s.kind === 'ready') settings.readyCommand = s.cmd;
}

/**
 * The cache key of a layer step: the key before it (the parent template's id to begin with),
 * the team (a layer is never another team's), the step, the settings it runs under and the
 * content of the files it copies.
 */
export function layerKey(prev: string, team: string | undefined, step: BuildStep, settings: StepSettings): string {
  const what =
    step.kind === 'run'
      ? ['run', step.cmd, step.user ?? null]
      : step.kind === 'copy'
        ? ['copy', step.src, step.dest, step.owner ?? null, step.mode ?? null, step.files.hash]
        : [step.kind];
  return createHash('sha256')
    .update(JSON.stringify([prev, team ?? null, what, settings.env, settings.user, settings.workdir ?? null]))
    .digest('hex');
}

export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A path pattern as a shell word: glob characters stay active, everything else is literal. */
function globWord(s: string): string {
  return s.replace(/[^A-Za-z0-9_/.*?[\]-]/g, (c) => `\\${c}`);
}

/** Whether a context-relative path stays inside the context (no absolute path, no `..` step). */
export function insideContext(p: string): boolean {
  if (p === '' || p.startsWith('/') || p.includes('\0')) return false;
  return !p.split('/').some((part) => part === '..');
}

/**
 * The command a run step executes: as root with /bin/sh, or through su as another user,
 * in the working directory the build has reached.
 */
export function runArgv(step: Extract<BuildStep, { kind: 'run' }>, settings: StepSettings): string[] {
  const user = step.user ?? settings.user;
  const cd = settings.workdir ? `mkdir -p ${shellQuote(settings.workdir)} 2>/dev/null; cd ${shellQuote(settings.workdir)} && ` : '';
  if (!user || user === 'root') return ['/bin/sh', '-c', `${cd}${step.cmd}`];
  return ['su', '-s', '/bin/sh', user, '-c', `${cd}${step.cmd}`];
}

/**
 * The shell script of a copy step, run as root in the sandbox with the files' tar on its stdin:
 * it unpacks them in a scratch directory, then copies what `src` matches as Docker's COPY does
 * (a directory's content into dest; a file to dest, or into it when dest is a directory or
 * ends in /), keeping symlinks as they are, and gives the copies their owner (the step's,
 * else the build's user) and mode.
 */
export function copyScript(step: Extract<BuildStep, { kind: 'copy' }>, defaultOwner: string | undefined): string {
  const owner = step.owner || defaultOwner || 'root';
  const src = step.src.replace(/\/+$/, '') || '.';
  return [
    'set -e',
    't=$(mktemp -d /tmp/.cubebox-copy.XXXXXX)',
    'trap \'rm -rf "$t"\' EXIT',
    'tar -x -f - -C "$t"',
    'cd "$t"',
    `set -- ${globWord(src)}`,
    `[ -e "$1" ] || [ -L "$1" ] || { echo "COPY: nothing matches ${src.replace(/["$`\\]/g, '')}" >&2; exit 1; }`,
    `dest=${shellQuote(step.dest)}`,
    'case "$dest" in */) mkdir -p "$dest";; esac',
    '[ $# -gt 1 ] && mkdir -p "$dest"',
    'for f in "$@"; do',
    '  if [ -d "$f" ] && [ ! -L "$f" ]; then mkdir -p "$dest"; cp -a "$f"/. "$dest"/; target="$dest"',
    '  elif [ -d "$dest" ] && [ ! -L "$dest" ]; then cp -a "$f" "$dest"/; target="$dest/$(basename "$f")"',
    '  else mkdir -p "$(dirname "$dest")"; rm -f "$dest"; cp -a "$f" "$dest"; target="$dest"; fi',
    `  chown -hR ${shellQuote(owner)} "$target"`,
    step.mode ? `  find "$target" ! -type l -exec chmod ${shellQuote(step.mode)} {} +` : '  :',
    'done',
  ].join('\n');
}

/** A mode as E2B sends it (octal digits, "0755"): checked before it reaches a shell. */
export function checkMode(mode: string, where: string): string {
  if (!/^[0-7]{3,4}$/.test(mode)) throw invalid(`${where}: mode '${mode}' is not an octal file mode`);
  return mode;
}

/** A user or owner (user, user:group, or numeric ids): checked before it reaches a shell. */
export function checkUser(user: string, where: string): string {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$/.test(user)) throw invalid(`${where}: '${user}' is not a user name`);
  return user;
}
