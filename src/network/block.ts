// Which block of the sandbox pool an instance takes (several instances share a host), kept
// in its data directory across restarts.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { INSTANCE_BLOCK_PREFIX, formatCidr, overlaps, parseCidr, type Cidr } from './cidr.js';
import { hostRoutes } from './host.js';

/** Where an instance keeps its block of the pool. */
export function blockFile(dataDir: string): string {
  return join(dataDir, 'network-block');
}

/**
 * This instance's block of the pool (the one it had, or the first that no host route touches);
 * refused when a host route covers or crosses the pool. `linkPrefix`: its own links' routes.
 */
export async function instanceBlock(pool: Cidr, dataDir: string, instanceId: string, linkPrefix: string): Promise<string> {
  const routes = (await hostRoutes()).filter((r) => !r.dev.startsWith(linkPrefix));
  for (const r of routes) {
    const c = parseCidr(r.dst);
    // a route inside the pool is another instance's sandbox; one around or across it is the host's network
    if (c && overlaps(c, pool) && c.prefix < pool.prefix)
      throw new Error(`the sandbox subnet ${formatCidr(pool)} overlaps the host's route to ${r.dst}: choose another with --subnet`);
  }
  return chooseBlock(
    pool,
    dataDir,
    instanceId,
    routes.map((r) => r.dst),
  );
}

/**
 * This instance's block: the one recorded in its data directory if it is still inside the
 * pool, else the first free one from a place its id picks (instances rarely race for one).
 */
function chooseBlock(pool: Cidr, dataDir: string, instanceId: string, routes: string[]): string {
  const file = blockFile(dataDir);
  if (existsSync(file)) {
    const kept = parseCidr(readFileSync(file, 'utf8').trim());
    if (kept && overlaps(kept, pool) && kept.prefix >= pool.prefix) return formatCidr(kept);
  }
  const prefix = Math.max(pool.prefix, INSTANCE_BLOCK_PREFIX);
  const count = 2 ** (prefix - pool.prefix);
  const start = Number.parseInt(instanceId.slice(0, 6), 36) % count;
  const taken = routes.map((r) => parseCidr(r)).filter((c): c is Cidr => !!c);
  for (let i = 0; i < count; i++) {
    const block: Cidr = { base: pool.base + ((start + i) % count) * 2 ** (32 - prefix), prefix };
    if (!taken.some((t) => overlaps(t, block))) {
      writeFileSync(file, `${formatCidr(block)}\n`, { mode: 0o644 });
      return formatCidr(block);
    }
  }
  throw new Error(`every block of the sandbox subnet ${formatCidr(pool)} is in use by other instances: give this one another --subnet`);
}
