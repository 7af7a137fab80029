// Where a create goes: a node with a fresh heartbeat that runs the runtime asked for and has a
// free slot; among those, one with a ready pooled sandbox of the template first, then one that
// has the template, then the least loaded (sandboxes per CPU, counting the creates this replica
// sent it since its last heartbeat, which that heartbeat could not count yet).
import type { NodeRecord } from '../store/pg/nodes.js';

export interface PlacementRequest {
  /** The template reference as the create names it (name, name:tag, alias or id). */
  template: string;
  /** The runtime asked for (metadata cubebox.runtime); undefined: any. */
  runtime?: string;
}

/** The node to create on, or undefined when none can take it. `pending`: creates sent to a node since its last heartbeat. */
export function place(nodes: NodeRecord[], req: PlacementRequest, pending: (nodeId: string) => number = () => 0): NodeRecord | undefined {
  const template = req.template.split(':')[0]!; // a tag is the same template's layers
  const able = nodes.filter((n) => (req.runtime === undefined || n.runtimes.includes(req.runtime)) && n.freeSlots - pending(n.id) > 0);
  const score = (n: NodeRecord) => {
    const pooled = n.pooled.includes(template) && pending(n.id) === 0 ? 0 : 1;
    const cached = n.templates.includes(template) || n.templates.includes(req.template) ? 0 : 1;
    return [pooled, cached, (n.sandboxes + pending(n.id)) / Math.max(1, n.cpus)];
  };
  let best: NodeRecord | undefined;
  let bestScore: number[] = [];
  for (const n of able) {
    const s = score(n);
    if (!best || less(s, bestScore)) [best, bestScore] = [n, s];
  }
  return best;
}

function less(a: number[], b: number[]): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! < b[i]!;
  return false;
}
