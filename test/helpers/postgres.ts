// A real PostgreSQL for one test: Debian's server binaries, a fresh cluster in its own directory
// under /var/tmp (owned by the postgres user: initdb refuses root), listening on a unix socket in
// that directory only (no TCP port). stop() stops it and removes the directory, and asserts
// that no server process of it is left.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const BIN = '/usr/lib/postgresql/15/bin';
const POSTGRES_UID = 101;

export interface TestPostgres {
  /** postgresql://postgres@/postgres?host=<dir>: the socket in the cluster's directory. */
  url: string;
  dir: string;
  /** Stops the server, keeping its data (start() brings it back). */
  halt(): Promise<void>;
  start(): Promise<void>;
  /** Stops the server and removes its directory; asserts nothing is left. */
  stop(): Promise<void>;
}

async function pgUser(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await run('runuser', ['-u', 'postgres', '--', join(BIN, cmd), ...args], { timeout: 60_000 }).catch((err: Error & { stderr?: string }) => {
    throw new Error(`${cmd} failed: ${err.stderr ?? err.message}`);
  });
  return stdout;
}

function postgresIds(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  const f = line?.split(':');
  return { uid: Number(f?.[2] ?? POSTGRES_UID), gid: Number(f?.[3] ?? POSTGRES_UID) };
}

/** The pids of server processes whose command line names the directory. */
function serverPids(dir: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(dir)) out.push(Number(p));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

export async function startPostgres(): Promise<TestPostgres> {
  const dir = mkdtempSync('/var/tmp/cubebox-test-pg-');
  const { uid, gid } = postgresIds();
  chownSync(dir, uid, gid);
  const data = join(dir, 'data');
  await pgUser('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
  const start = async () => {
    await pgUser('pg_ctl', [
      '-D',
      data,
      '-w',
      '-t',
      '60',
      '-l',
      join(dir, 'server.log'),
      '-o',
      `-c listen_addresses='' -k ${dir} -c fsync=off -c max_connections=50`,
      'start',
    ]);
  };
  const halt = async () => {
    if (existsSync(join(data, 'postmaster.pid'))) await pgUser('pg_ctl', ['-D', data, '-w', '-t', '60', '-m', 'fast', 'stop']);
  };
  await start();
  return {
    url: `postgresql://postgres@/postgres?host=${dir}`,
    dir,
    halt,
    start,
    async stop() {
      await halt();
      rmSync(dir, { recursive: true, force: true });
      assert.ok(!existsSync(dir), `${dir} is removed`);
      assert.deepEqual(serverPids(dir), [], `no server process of ${dir} is left`);
    },
  };
}
