// The bare-runtime baseline: the same runtime binary and wrapper as the sandboxes, on a plain
// bundle whose root is the busybox template's layer (no overlay, no user namespace, no disk,
// no ledger, no agent), so that a ratio to it shows what cubebox adds.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { OciRuntime } from '../runtime/oci-runtime.js';
import type { SandboxManager } from '../sandbox/manager.js';

export class BareRuntime {
  readonly runtime: OciRuntime;
  /** The sleep argument of the containers' one process: unique to this run, to look for leftovers. */
  readonly marker: string;
  private readonly made = new Set<string>();
  private seq = 0;

  /**
   * dir: a directory of the bench's (bundles and logs go there); rootfs: a read-only root
   * (the busybox template's layer); binary: the runtime binary configuration names, if any.
   */
  constructor(
    m: SandboxManager,
    private readonly dir: string,
    private readonly rootfs: string,
    binary?: string,
  ) {
    this.runtime = new OciRuntime(m.runtime.name, join(m.paths.runRoot, 'bare'), m.cgroupMode, { binary });
    this.marker = `${100000 + (process.pid % 100000)}${Date.now() % 1000}`;
  }

  get name(): string {
    return this.runtime.name;
  }

  /**
   * Writes a bundle of its own for a new container (the runtime writes its pid file into the
   * bundle). By default its process is a busybox sleep; `process` gives another one, with more
   * mounts, and `socketDir` binds a new directory of the bundle (sockDir) there, read-write.
   */
  prepare(opts: { process?: { args: string[]; env?: string[] }; mounts?: object[]; socketDir?: string } = {}): {
    id: string;
    bundle: string;
    log: string;
    sockDir: string;
  } {
    const id = `cubebox-bench-${process.pid}-${this.seq++}`;
    const bundle = join(this.dir, `bare-${id}`);
    const sockDir = join(bundle, 'sock');
    mkdirSync(bundle);
    const mounts = [...(opts.mounts ?? [])];
    if (opts.socketDir) {
      mkdirSync(sockDir);
      mounts.push({ destination: opts.socketDir, type: 'bind', source: sockDir, options: ['rbind', 'rw'] });
    }
    writeFileSync(
      join(bundle, 'config.json'),
      JSON.stringify({
        ociVersion: '1.0.2',
        process: {
          terminal: false,
          user: { uid: 0, gid: 0 },
          args: opts.process?.args ?? ['/bin/sleep', this.marker],
          cwd: '/',
          env: ['PATH=/bin:/usr/bin', ...(opts.process?.env ?? [])],
        },
        root: { path: this.rootfs, readonly: true },
        // a /dev of its own, as every runtime's default config has: without it the runtime makes
        // its device links in the shared rootfs, and concurrent runs race on them (EEXIST)
        mounts: [
          { destination: '/proc', type: 'proc', source: 'proc' },
          { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
          ...mounts,
        ],
        linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }, { type: 'ipc' }, { type: 'uts' }, { type: 'network' }] },
      }),
    );
    return { id, bundle, log: join(bundle, 'log'), sockDir };
  }

  /** `<runtime> run -d` of a prepared bundle; the container process's pid. */
  async run(c: { id: string; bundle: string; log: string }): Promise<number> {
    this.made.add(c.id);
    return this.runtime.run(c.id, c.bundle, c.log);
  }

  async delete(id: string): Promise<void> {
    await this.runtime.forceDelete(id);
    this.made.delete(id);
  }

  /** Deletes every container this run made that is still there; returns those that would not go. */
  async deleteAll(): Promise<string[]> {
    const failed: string[] = [];
    await Promise.all(
      [...this.made].map((id) =>
        this.delete(id).catch(() => {
          failed.push(id);
        }),
      ),
    );
    for (const id of await this.runtime.list()) if (id.startsWith(`cubebox-bench-${process.pid}-`) && !failed.includes(id)) failed.push(id);
    return failed;
  }
}
