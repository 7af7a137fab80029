// E2B's build request (TemplateBuildStartV2, what the SDK's Template().build and `e2b template
// create` send) as the builder's steps: RUN [cmd, user?], COPY [src, dest, owner, mode] with
// the uploaded files' hash, ENV [k, v, ...], WORKDIR [dir], USER [user]; the SDK's helpers
// (apt/pip/npm install, git clone, makeDir, symlinks, remove, rename) arrive as RUN steps.
import { invalid } from '../util/errors.js';
import { localTemplateFor } from '../template/image-source.js';
import { checkMode, checkUser, insideContext, type BuildStep, type FileSource } from './steps.js';

export interface E2BStep {
  type: string;
  args?: string[];
  filesHash?: string;
  force?: boolean;
}

export interface E2BBuildRequest {
  fromImage?: string;
  fromTemplate?: string;
  fromImageRegistry?: { type?: string; username?: string; password?: string; [k: string]: unknown };
  steps?: E2BStep[];
  startCmd?: string;
  readyCmd?: string;
  force?: boolean;
}

/** Where the build starts: a cubebox template by name, or an image from a registry. */
export type BaseRef = { template: string } | { image: string; registry?: { type: 'registry'; username?: string; password?: string } };

export function baseOf(req: E2BBuildRequest): BaseRef {
  const image = typeof req.fromImage === 'string' ? req.fromImage.trim() : '';
  const tpl = typeof req.fromTemplate === 'string' ? req.fromTemplate.trim() : '';
  if ((image === '') === (tpl === '')) throw invalid('give exactly one of fromImage and fromTemplate');
  if (tpl) {
    if (req.fromImageRegistry) throw invalid('fromImageRegistry goes with fromImage, not fromTemplate');
    return { template: tpl };
  }
  const local = localTemplateFor(image);
  const reg = req.fromImageRegistry;
  if (reg) {
    if (reg.type === 'aws' || reg.type === 'gcp') {
      throw invalid(`fromImageRegistry of type '${reg.type}' is not supported: use a generic registry (type 'registry', username and password)`);
    }
    if (reg.type !== 'registry') throw invalid(`fromImageRegistry type '${String(reg.type)}' is unknown (known: registry)`);
    if (typeof reg.username !== 'string' || typeof reg.password !== 'string') throw invalid('fromImageRegistry needs username and password');
  }
  if (local && !reg) return { template: local };
  return { image, registry: reg ? { type: 'registry', username: reg.username, password: reg.password } : undefined };
}

const str = (v: unknown): v is string => typeof v === 'string';

/**
 * The request's steps, then its start and ready commands, checked: unknown step types, bad
 * arguments, copy sources outside the context and files never uploaded are refused here.
 */
export function compileSteps(req: E2BBuildRequest, files: (hash: string) => FileSource | undefined): BuildStep[] {
  const steps = req.steps ?? [];
  if (!Array.isArray(steps)) throw invalid('steps must be a list');
  if (steps.length > 500) throw invalid('a build takes at most 500 steps');
  const out: BuildStep[] = steps.map((s, i): BuildStep => {
    const where = `step ${i + 1}`;
    if (!s || typeof s !== 'object' || !str(s.type)) throw invalid(`${where}: a step needs a type`);
    const args = s.args ?? [];
    if (!Array.isArray(args) || !args.every(str)) throw invalid(`${where}: args must be a list of strings`);
    const force = s.force === true;
    switch (s.type.toUpperCase()) {
      case 'RUN': {
        if (!args[0]) throw invalid(`${where}: RUN needs a command`);
        return { kind: 'run', cmd: args[0], user: args[1] ? checkUser(args[1], where) : undefined, force };
      }
      case 'COPY':
      case 'ADD': {
        const [src, dest, owner, mode] = args;
        if (!src || !dest) throw invalid(`${where}: COPY needs a source and a destination`);
        const clean = src.replace(/^(\.\/)+/, '').replace(/\/+$/, '') || '.';
        if (clean !== '.' && !insideContext(clean)) throw invalid(`${where}: COPY source '${src}' is outside the build context`);
        if (!str(s.filesHash)) throw invalid(`${where}: COPY needs the filesHash of its uploaded files`);
        const f = files(s.filesHash);
        if (!f) throw invalid(`${where}: the files of COPY ${src} (hash ${s.filesHash.slice(0, 12)}...) were never uploaded`);
        return {
          kind: 'copy',
          src: clean,
          dest,
          owner: owner ? checkUser(owner, where) : undefined,
          mode: mode ? checkMode(mode, where) : undefined,
          files: f,
          force,
        };
      }
      case 'ENV':
      case 'ARG': {
        if (args.length % 2 !== 0) throw invalid(`${where}: ENV takes name and value pairs`);
        const env: Record<string, string> = {};
        for (let k = 0; k < args.length; k += 2) {
          if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(args[k]!)) throw invalid(`${where}: '${args[k]}' is not an environment variable name`);
          env[args[k]!] = args[k + 1]!;
        }
        return { kind: 'env', env };
      }
      case 'WORKDIR':
        if (!args[0]) throw invalid(`${where}: WORKDIR needs a directory`);
        return { kind: 'workdir', dir: args[0].startsWith('/') ? args[0] : `/${args[0]}` };
      case 'USER':
        if (!args[0]) throw invalid(`${where}: USER needs a user`);
        return { kind: 'user', user: checkUser(args[0], where) };
      default:
        throw invalid(`${where}: unknown step type '${s.type.slice(0, 40)}' (known: RUN, COPY, ENV, WORKDIR, USER)`);
    }
  });
  if (req.startCmd !== undefined && req.startCmd !== null) {
    if (!str(req.startCmd)) throw invalid('startCmd must be a string');
    if (req.startCmd.trim()) out.push({ kind: 'start', cmd: req.startCmd });
  }
  if (req.readyCmd !== undefined && req.readyCmd !== null) {
    if (!str(req.readyCmd)) throw invalid('readyCmd must be a string');
    if (req.readyCmd.trim()) out.push({ kind: 'ready', cmd: req.readyCmd });
  }
  return out;
}
