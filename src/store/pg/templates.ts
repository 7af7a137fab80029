// Teams' templates as the cluster knows them (`shared_templates`): each row names a template
// published to the template registry (its manifest digest there) with its names, team, public
// flag and settings, so that any node can resolve a reference the way it resolves its own
// templates and pull the layers it lacks (cluster/templates.ts). Deleting the row is deleting
// the template for the cluster: nodes drop their copies once no sandbox uses them.
import type pg from 'pg';
import { migrate } from './migrations.js';
import { openPool, rows, transaction, type PoolLog } from './pool.js';

export interface SharedTemplateRecord {
  id: string;
  team: string;
  name: string;
  aliases: string[];
  public: boolean;
  /** The template's settings (JSON), tags included. */
  config: string;
  /** sha256 digest of its manifest in the registry. */
  manifest: string;
  /** Bytes of its layers. */
  size: number;
  /** The node that published it. */
  nodeId: string;
  createdAt: number;
  publishedAt: number;
}

const toRecord = (r: Record<string, unknown>): SharedTemplateRecord => ({
  id: r.id as string,
  team: r.team as string,
  name: r.name as string,
  aliases: r.aliases as string[],
  public: r.public as boolean,
  config: r.config as string,
  manifest: r.manifest as string,
  size: Number(r.size),
  nodeId: r.node_id as string,
  createdAt: Number(r.created_at),
  publishedAt: Number(r.published_at),
});

export class PgSharedTemplates {
  private constructor(private readonly pool: pg.Pool) {}

  static async open(url: string, log?: PoolLog): Promise<PgSharedTemplates> {
    const pool = openPool(url, log);
    try {
      await migrate(pool);
    } catch (err) {
      await pool.end().catch(() => {});
      throw err;
    }
    return new PgSharedTemplates(pool);
  }

  /**
   * Records a published template (a new one, or a new publication of the same id). A name is
   * one template per team: an older template of that name and team leaves the table (the latest
   * build of a name is the name, as a rebuild would make it).
   */
  async upsert(r: SharedTemplateRecord): Promise<void> {
    await transaction(this.pool, async (c) => {
      await rows(c, 'DELETE FROM shared_templates WHERE team = $1 AND name = $2 AND id <> $3', [r.team, r.name, r.id]);
      await rows(
        c,
        `INSERT INTO shared_templates (id, team, name, aliases, public, config, manifest, size, node_id, created_at, published_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (id) DO UPDATE SET team = $2, name = $3, aliases = $4, public = $5, config = $6, manifest = $7, size = $8,
           node_id = $9, published_at = $11`,
        [r.id, r.team, r.name, r.aliases, r.public, r.config, r.manifest, r.size, r.nodeId, r.createdAt, r.publishedAt],
      );
    });
  }

  /** New settings of a published template (tags, aliases, the public flag); false: not in the table. */
  async setConfig(id: string, config: string, aliases: string[], isPublic: boolean): Promise<boolean> {
    return (
      (await rows(this.pool, 'UPDATE shared_templates SET config = $2, aliases = $3, public = $4 WHERE id = $1 RETURNING id', [id, config, aliases, isPublic]))
        .length > 0
    );
  }

  /** Whether a row went. */
  async delete(id: string): Promise<boolean> {
    return (await rows(this.pool, 'DELETE FROM shared_templates WHERE id = $1 RETURNING id', [id])).length > 0;
  }

  /** The rows a reference could name: by id, or by name or alias (of `name:tag` too) in the team's namespace. */
  async candidates(ref: string, team: string | undefined): Promise<SharedTemplateRecord[]> {
    const colon = ref.lastIndexOf(':');
    const stem = colon > 0 ? ref.slice(0, colon) : ref;
    return (
      await rows(this.pool, 'SELECT * FROM shared_templates WHERE id = $1 OR (team = $2 AND (name = ANY($3) OR aliases && $3)) ORDER BY id LIMIT 16', [
        ref,
        team ?? '',
        [ref, stem],
      ])
    ).map(toRecord);
  }

  /** The rows of these ids (the others are not in the table). */
  async byIds(ids: string[]): Promise<SharedTemplateRecord[]> {
    if (!ids.length) return [];
    return (await rows(this.pool, 'SELECT * FROM shared_templates WHERE id = ANY($1)', [ids])).map(toRecord);
  }

  /** Every row of a team, and the public ones. */
  async visibleTo(team: string): Promise<SharedTemplateRecord[]> {
    return (await rows(this.pool, 'SELECT * FROM shared_templates WHERE team = $1 OR public ORDER BY created_at, id', [team])).map(toRecord);
  }

  close(): Promise<void> {
    return this.pool.end();
  }
}
