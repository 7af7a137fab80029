import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Each sandbox's root maps to its own block of 65536 host ids. */
export const ID_BLOCK = 65536;

/** Sandboxes an instance can hold at once: one id block each (and one address slot each, see network/cidr.ts). */
export const ID_SLOTS = 1024;

/** What instances made before the limit was raised use, so their sandboxes keep their ids. */
const LEGACY_SLOTS = 512;

/** An instance's host ids: `slots` blocks of ID_BLOCK from `base`. */
export interface IdRegion {
  base: number;
  slots: number;
}

/**
 * Per-instance region of host ids above 2^31, so instances on one host rarely overlap:
 * 31 regions of 1024 blocks fit below 2^32.
 */
export function idRegionBase(instanceId: string, slots = ID_SLOTS): number {
  const regions = Math.floor(2 ** 31 / (slots * ID_BLOCK)) - 1;
  const region = createHash('sha256').update(instanceId).digest().readUInt32BE(0) % regions;
  return 2 ** 31 + region * slots * ID_BLOCK;
}

/**
 * The instance's region, kept in its data directory (`id-region`) so that a sandbox's files
 * keep their owners across upgrades: an instance that already has sandboxes but no record
 * keeps the 512-slot region it was made with.
 */
export function openIdRegion(dataDir: string, instanceId: string, hasSandboxes: boolean): IdRegion {
  const file = join(dataDir, 'id-region');
  if (existsSync(file)) {
    const r = JSON.parse(readFileSync(file, 'utf8')) as Partial<IdRegion>;
    const ok = Number.isInteger(r.base) && Number.isInteger(r.slots) && r.base! >= 2 ** 31 && r.slots! > 0 && r.base! + r.slots! * ID_BLOCK <= 2 ** 32 - 1;
    if (!ok) throw new Error(`${file} does not hold an id region (base >= 2^31, slots, inside 32 bits): ${JSON.stringify(r)}`);
    return { base: r.base!, slots: r.slots! };
  }
  const slots = hasSandboxes ? LEGACY_SLOTS : ID_SLOTS;
  const region = { base: idRegionBase(instanceId, slots), slots };
  writeFileSync(`${file}.tmp`, `${JSON.stringify(region)}\n`, { mode: 0o644 });
  renameSync(`${file}.tmp`, file);
  return region;
}
