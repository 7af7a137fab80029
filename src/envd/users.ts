// Users and groups of the sandbox, read from its own /etc/passwd and /etc/group (no NSS: the
// sandbox's files are the truth). The files are re-read when they change.
import { statSync, readFileSync } from 'node:fs';

export interface UserInfo {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
  /** Primary gid first, then every group that lists the user as a member. */
  groups: number[];
}

interface Parsed {
  users: Map<string, UserInfo>;
  uidNames: Map<number, string>;
  gidNames: Map<number, string>;
}

function fileKey(path: string): string {
  try {
    const st = statSync(path);
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return 'missing';
  }
}

function readLines(path: string): string[] {
  try {
    return readFileSync(path, 'utf8').split('\n');
  } catch {
    return [];
  }
}

export class UserDb {
  private cache?: Parsed;
  private cacheKey = '';

  constructor(
    readonly passwdPath = '/etc/passwd',
    readonly groupPath = '/etc/group',
  ) {}

  private load(): Parsed {
    const key = `${fileKey(this.passwdPath)}|${fileKey(this.groupPath)}`;
    if (this.cache && key === this.cacheKey) return this.cache;
    const users = new Map<string, UserInfo>();
    const uidNames = new Map<number, string>();
    const gidNames = new Map<number, string>();
    const members = new Map<string, number[]>();
    for (const line of readLines(this.groupPath)) {
      if (!line || line.startsWith('#')) continue;
      const f = line.split(':');
      if (f.length < 3) continue;
      const gid = Number(f[2]);
      if (!Number.isInteger(gid) || gid < 0) continue;
      const name = f[0] ?? '';
      if (!gidNames.has(gid)) gidNames.set(gid, name);
      for (const m of (f[3] ?? '').split(',')) {
        const member = m.trim();
        if (!member) continue;
        const list = members.get(member) ?? [];
        list.push(gid);
        members.set(member, list);
      }
    }
    for (const line of readLines(this.passwdPath)) {
      if (!line || line.startsWith('#')) continue;
      const f = line.split(':');
      if (f.length < 4) continue;
      const name = f[0] ?? '';
      const uid = Number(f[2]);
      const gid = Number(f[3]);
      if (!name || !Number.isInteger(uid) || uid < 0 || !Number.isInteger(gid) || gid < 0) continue;
      if (users.has(name)) continue;
      const groups = [gid];
      for (const g of members.get(name) ?? []) if (!groups.includes(g)) groups.push(g);
      users.set(name, { name, uid, gid, home: f[5] || '/', shell: f[6] || '/bin/sh', groups });
      if (!uidNames.has(uid)) uidNames.set(uid, name);
    }
    // A sandbox image without /etc/passwd (busybox) still has root.
    if (!users.has('root')) {
      users.set('root', { name: 'root', uid: 0, gid: 0, home: '/root', shell: '/bin/sh', groups: [0] });
      if (!uidNames.has(0)) uidNames.set(0, 'root');
    }
    if (!gidNames.has(0)) gidNames.set(0, 'root');
    this.cache = { users, uidNames, gidNames };
    this.cacheKey = key;
    return this.cache;
  }

  lookup(name: string): UserInfo | undefined {
    return this.load().users.get(name);
  }

  userName(uid: number): string {
    return this.load().uidNames.get(uid) ?? String(uid);
  }

  groupName(gid: number): string {
    return this.load().gidNames.get(gid) ?? String(gid);
  }
}
