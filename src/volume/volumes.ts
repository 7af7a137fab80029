// Persistent volumes: create, list, delete, the content operations' access, the mounts a
// sandbox asks for, start-up reconciliation and the leak check. A volume belongs to a team;
// its row (store/volumes.ts) is written before its disk is made and removed after the disk is
// gone, so a crash in between leaves a row the start-up reconciliation finishes.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { posix } from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { loopDevicesUnder, mountsUnder } from '../runtime/rootfs.js';
import type { Store, VolumeMountSpec, VolumeRepo, VolumeRow } from '../store/store.js';
import { conflict, errorMessage, invalid, notFound } from '../util/errors.js';
import { randomId } from '../util/ids.js';
import { KeyedMutex } from '../util/lock.js';
import { safeEqual } from '../protocol/signature.js';
import { VolumeFs } from './content.js';
import { checkMountPath } from './mount-path.js';
import { destroyVolumeDisk, mountVolumeDisk, volumeDevice, volumeDir, volumeImage, volumeRoot, volumesDir } from './disk.js';

export type { VolumeMountSpec, VolumeRow } from '../store/store.js';

export const VOLUME_NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/;
export const VOLUME_ID_RE = /^vol_[a-z0-9]{16}$/;
/** Mount paths a volume may not take: the sandbox's own machinery. */
const RESERVED = ['/.cubebox', '/proc', '/sys', '/dev'];
const MAX_MOUNTS = 16;

export class Volumes {
  private readonly locks = new KeyedMutex();
  /** Content requests in flight per volume: a delete cuts them before it unmounts. */
  private readonly inflight = new Map<string, Set<() => void>>();

  constructor(
    private readonly base: Store,
    readonly paths: Paths,
    private readonly log: Logger,
    /** The size of each new volume's disk, MiB. */
    readonly sizeMB: number,
  ) {}

  get store(): VolumeRepo {
    return this.base.volumes;
  }

  /**
   * A new volume of the team. `admit` sees the team's volumes (the quota check) in the same
   * step as the row is written, so concurrent creates cannot overshoot.
   */
  async create(team: string, name: string, admit: (existing: VolumeRow[]) => void): Promise<VolumeRow> {
    if (!VOLUME_NAME_RE.test(name)) throw invalid('name must be 1-63 characters: letters, digits, and . _ - (not first)');
    if (this.store.byName(team, name)) throw conflict(`a volume named '${name}' already exists`);
    admit(this.store.list(team));
    const row: VolumeRow = {
      id: `vol_${randomId(16)}`,
      team,
      name,
      token: randomBytes(24).toString('base64url'),
      sizeMB: this.sizeMB,
      state: 'creating',
      createdAt: Date.now(),
    };
    this.store.insert(row);
    return this.locks.run(row.id, async () => {
      try {
        await mountVolumeDisk(this.paths, row.id, row.sizeMB);
      } catch (err) {
        await destroyVolumeDisk(this.paths, row.id).catch(() => undefined);
        this.store.remove(row.id);
        throw new Error(`making the disk of volume '${name}' failed: ${errorMessage(err)}`, { cause: err });
      }
      this.store.setState(row.id, 'ready');
      this.log.info({ volume: row.id, team }, 'volume created');
      return { ...row, state: 'ready' as const };
    });
  }

  /**
   * The volume if the caller may see it (its team's, or any for an admin), else 404 like an
   * unknown id. One whose delete did not finish is gone, except to a delete's retry.
   */
  get(id: string, team: string, admin = false, deleting = false): VolumeRow {
    const row = VOLUME_ID_RE.test(id) ? this.store.get(id) : undefined;
    if (!row || (row.state === 'deleting' && !deleting) || (!admin && row.team !== team)) throw notFound(`volume '${id}' not found`);
    return row;
  }

  /** Deletes a volume and its disk; refused while any sandbox (running, paused or otherwise) mounts it. */
  async delete(id: string): Promise<void> {
    await this.locks.run(id, async () => {
      const row = this.store.get(id);
      if (!row) throw notFound(`volume '${id}' not found`);
      const users = mountedIn(this.base, id);
      if (users.length) {
        throw conflict(
          `volume '${row.name}' is mounted in sandbox${users.length > 1 ? 'es' : ''} ${users.join(', ')}: kill ${users.length > 1 ? 'them' : 'it'} first`,
        );
      }
      this.store.setState(id, 'deleting'); // no new mount or content request from here on
      for (const cut of this.inflight.get(id) ?? []) cut();
      await destroyVolumeDisk(this.paths, id);
      this.store.remove(id);
      this.log.info({ volume: id }, 'volume deleted');
    });
  }

  /**
   * The volume's files for a content request carrying `token`; undefined for an unknown
   * volume or a wrong token (the same answer: ids do not leak). `cut` is called if the volume
   * is deleted meanwhile; call `done` when the request ends.
   */
  open(id: string, token: string, cut: () => void): { row: VolumeRow; fs: VolumeFs; done: () => void } | undefined {
    const row = VOLUME_ID_RE.test(id) ? this.store.get(id) : undefined;
    if (!row || !safeEqual(token, row.token)) return undefined;
    if (row.state !== 'ready') throw conflict(`volume '${row.name}' is ${row.state}`);
    const dev = volumeDevice(this.paths, id);
    if (dev === undefined) throw new Error(`the disk of volume '${row.name}' is not mounted`);
    let set = this.inflight.get(id);
    if (!set) this.inflight.set(id, (set = new Set()));
    set.add(cut);
    const done = () => {
      set.delete(cut);
      if (!set.size) this.inflight.delete(id);
    };
    return { row, fs: new VolumeFs(volumeRoot(this.paths, id), dev), done };
  }
}

/**
 * The volume mounts of a create request, checked (also against the template's layers: see
 * mount-path.ts) and resolved by name within the team (in
 * the same synchronous step as the sandbox's row is written, so a volume being deleted cannot
 * be mounted meanwhile).
 */
export function resolveVolumeMounts(
  base: Store,
  team: string | null,
  mounts: { name: string; path: string }[] | undefined,
  layers: string[] = [],
): VolumeMountSpec[] {
  if (!mounts?.length) return [];
  if (mounts.length > MAX_MOUNTS) throw invalid(`at most ${MAX_MOUNTS} volume mounts`);
  const store = base.volumes;
  const seen = new Set<string>();
  return mounts.map(({ name, path }) => {
    if (typeof path !== 'string' || !path.startsWith('/') || path.length > 1024 || path.includes('\0'))
      throw invalid(`volume mount path must be an absolute path, got '${String(path).slice(0, 100)}'`);
    const norm = posix.normalize(path).replace(/\/+$/, '');
    if (norm === '' || RESERVED.some((r) => norm === r || norm.startsWith(r + '/'))) throw invalid(`volume mount path '${path}' is reserved`);
    for (const s of seen) {
      if (s === norm || s.startsWith(norm + '/') || norm.startsWith(s + '/')) throw invalid(`volume mount paths '${s}' and '${norm}' overlap`);
    }
    seen.add(norm);
    checkMountPath(layers, norm);
    const row = store.byName(team, name);
    if (!row || row.state !== 'ready') throw notFound(`volume '${name}' not found`);
    return { name, path: norm, volumeId: row.id };
  });
}

/**
 * Start-up: every ready volume's disk is mounted (again, after a reboot); rows left creating
 * or deleting by a crash are finished (their disk removed); volume directories, mounts and
 * loop devices that no row owns are removed.
 */
export async function reconcileVolumes(base: Store, paths: Paths, log: Logger): Promise<string[]> {
  const store = base.volumes;
  const errors: string[] = [];
  const known = new Set<string>();
  for (const row of store.list()) {
    try {
      if (row.state !== 'ready') {
        await destroyVolumeDisk(paths, row.id);
        store.remove(row.id);
        log.warn({ volume: row.id, state: row.state }, 'removed an unfinished volume');
      } else if (volumeDevice(paths, row.id) === undefined) {
        known.add(row.id);
        if (!existsSync(volumeImage(paths, row.id))) throw new Error(`its disk image ${volumeImage(paths, row.id)} is missing`);
        await mountVolumeDisk(paths, row.id, row.sizeMB);
        log.info({ volume: row.id }, 'volume disk mounted again');
      } else known.add(row.id);
    } catch (err) {
      errors.push(`volume ${row.id}: ${errorMessage(err)}`);
      log.error({ volume: row.id, err: errorMessage(err) }, 'volume reconciliation failed');
    }
  }
  for (const id of volumeDirIds(paths)) {
    if (known.has(id)) continue;
    try {
      await destroyVolumeDisk(paths, id);
      log.warn({ volume: id }, 'removed an orphaned volume disk');
    } catch (err) {
      errors.push(`orphan volume ${id}: ${errorMessage(err)}`);
    }
  }
  return errors;
}

/** Ids of the sandboxes (in any state) whose spec mounts the volume. */
function mountedIn(base: Store, volumeId: string): string[] {
  return base.sandboxes
    .specsContaining(volumeId)
    .filter((r) => ((JSON.parse(r.spec) as { volumeMounts?: VolumeMountSpec[] }).volumeMounts ?? []).some((m) => m.volumeId === volumeId))
    .map((r) => r.id);
}

function volumeDirIds(paths: Paths): string[] {
  try {
    return readdirSync(volumesDir(paths)).filter((d) => VOLUME_ID_RE.test(d));
  } catch {
    return [];
  }
}

/** What remains on the host of volumes that no ready row owns (every volume, without a store). */
export function volumeLeaks(paths: Paths, base?: Store): { volume: string; kind: 'mount' | 'device' | 'dir'; what: string }[] {
  const store = base?.volumes;
  const ids = new Set(volumeDirIds(paths));
  const root = volumesDir(paths);
  for (const m of mountsUnder(root)) ids.add(m.slice(root.length + 1).split('/')[0]!);
  for (const l of loopDevicesUnder(root)) ids.add(l.slice(l.indexOf(root) + root.length + 1).split('/')[0]!);
  const out: { volume: string; kind: 'mount' | 'device' | 'dir'; what: string }[] = [];
  for (const id of ids) {
    if (store?.get(id)?.state === 'ready') continue;
    const dir = volumeDir(paths, id);
    for (const m of mountsUnder(dir)) out.push({ volume: id, kind: 'mount', what: m });
    for (const l of loopDevicesUnder(dir)) out.push({ volume: id, kind: 'device', what: l });
    if (existsSync(dir)) out.push({ volume: id, kind: 'dir', what: dir });
  }
  return out;
}
