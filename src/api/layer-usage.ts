// The disk a team's own template layers (its snapshots and its forks' templates) take on the
// host, for its disk quota: real bytes on disk, each file once however many layers link it.
import type { Logger } from 'pino';
import type { Template } from '../template/store.js';
import { spawnChild } from '../util/exec.js';

const MiB = 1024 * 1024;
/** du prints one short line per directory; anything longer is not du's answer. */
const MAX_OUTPUT = 4 * MiB;

/**
 * The one measure of layer disk use: the bytes the directories take on disk (allocated
 * blocks, not apparent sizes, so sparse files count what they hold), each inode counted once
 * however many of the directories link it (GNU du, in its own process, so a large layer never
 * stalls the service). Gives the bytes each directory adds in the order given: a file
 * hard-linked from an earlier directory adds nothing to a later one, and the sum is the
 * total. Data shared by reflink is counted in every file that shares it. Links are not
 * followed; a directory that is gone adds 0.
 */
export function layerDiskBytes(dirs: readonly string[]): Promise<Map<string, number>> {
  if (!dirs.length) return Promise.resolve(new Map());
  return new Promise((resolve, reject) => {
    const child = spawnChild('du', ['--block-size=1', '--summarize', '--one-file-system', '--', ...dirs], { stdio: ['ignore', 'pipe', 'ignore'] });
    child.on('error', reject);
    let out = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.length > MAX_OUTPUT) child.kill('SIGKILL');
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const sizes = new Map<string, number>();
      for (const line of out.split('\n')) {
        const tab = line.indexOf('\t');
        const n = Number(line.slice(0, tab));
        if (tab > 0 && Number.isSafeInteger(n)) sizes.set(line.slice(tab + 1), n);
      }
      // du exits 1 for a directory that went away meanwhile and still reports the others
      if (signal || (code !== 0 && sizes.size === 0)) reject(new Error(`du of ${dirs.length} layer directories failed (${signal ?? `exit ${code}`})`));
      else resolve(sizes);
    });
  });
}

/**
 * Each team's own layers and what they took on disk at the last measure. A team owns the
 * layers of its templates that no public template holds (a snapshot's parent layers from
 * `base` are the host's); a layer shared by several of its templates counts once. Admission
 * is synchronous, so it reads the last measure; a new layer is measured (admitLayer) before
 * it may stay, a removed one stops counting at once, and anything else that changed is
 * measured again in the background.
 */
export class TeamLayers {
  /** Per team: the bytes each of its layers added at the last measure. */
  private readonly measured = new Map<string, Map<string, number>>();
  private readonly background = new Set<string>();

  constructor(
    private readonly templates: () => Template[],
    private readonly log?: Logger,
  ) {}

  /** The team's own layer directories, oldest template first (a later layer linking an earlier one's files adds only the rest). */
  layersOf(team: string): string[] {
    const all = [...this.templates()].sort((a, b) => a.createdAt - b.createdAt);
    const shared = new Set(all.filter((t) => t.config.team === undefined).flatMap((t) => t.layers));
    const own = new Set<string>();
    for (const t of all) if (t.config.team === team) for (const l of [...t.layers].reverse()) if (!shared.has(l)) own.add(l);
    return [...own];
  }

  /** The team's layers in MiB, from the last measure; starts a new measure when they changed since. */
  mb(team: string): number {
    const layers = this.layersOf(team);
    const last = this.measured.get(team);
    let bytes = 0;
    let changed = (last?.size ?? 0) !== layers.length;
    for (const l of layers) {
      const b = last?.get(l);
      if (b === undefined) changed = true;
      else bytes += b;
    }
    if (changed) this.measureLater(team);
    return Math.ceil(bytes / MiB);
  }

  /** Measures the team's layers now. */
  async measure(team: string): Promise<void> {
    const layers = this.layersOf(team);
    const sizes = await layerDiskBytes(layers);
    this.measured.set(team, new Map(layers.map((l) => [l, sizes.get(l) ?? 0])));
  }

  /** Measures every team that owns layers (at start: admission then counts them). */
  async measureAll(): Promise<void> {
    const teams = new Set(this.templates().flatMap((t) => (t.config.team === undefined ? [] : [t.config.team])));
    for (const team of teams) await this.measure(team).catch((err: Error) => this.log?.warn({ team, err: err.message }, 'measuring template layers failed'));
  }

  private measureLater(team: string): void {
    if (this.background.has(team)) return;
    this.background.add(team);
    void this.measure(team)
      .catch((err: Error) => this.log?.warn({ team, err: err.message }, 'measuring template layers failed'))
      .finally(() => this.background.delete(team));
  }
}
