// Facts about the host: its Debian mirror (apt sources), architecture, programs, free space.
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CubeboxError } from '../../util/errors.js';
import { runCapture, tail } from './exec.js';
import { FULL_PATH } from './recipe.js';

/** The host's configured Debian mirror for suite, from /etc/apt/sources.list{,.d/*.list,.d/*.sources}. */
export async function findDebianMirror(suite: string, aptDir = '/etc/apt'): Promise<string> {
  const entries: { uri: string; suites: string[] }[] = [];
  const files = [path.join(aptDir, 'sources.list')];
  try {
    for (const n of (await fs.readdir(path.join(aptDir, 'sources.list.d'))).sort()) {
      if (n.endsWith('.list') || n.endsWith('.sources')) files.push(path.join(aptDir, 'sources.list.d', n));
    }
  } catch {
    /* no sources.list.d */
  }
  for (const f of files) {
    let text: string;
    try {
      text = await fs.readFile(f, 'utf8');
    } catch {
      continue;
    }
    if (f.endsWith('.sources')) entries.push(...parseDeb822Sources(text));
    else entries.push(...parseOneLineSources(text));
  }
  const usable = entries.filter((e) => /^(https?|file):/.test(e.uri));
  const hit = usable.find((e) => e.suites.includes(suite)) ?? usable.find((e) => e.suites.includes(`${suite}-updates`));
  if (!hit) {
    throw new CubeboxError('unavailable', `no Debian mirror for "${suite}" in ${aptDir}/sources.list or ${aptDir}/sources.list.d: pass a mirror URL`);
  }
  return hit.uri.replace(/\/+$/, '');
}

function parseOneLineSources(text: string): { uri: string; suites: string[] }[] {
  const out: { uri: string; suites: string[] }[] = [];
  for (const raw of text.split('\n')) {
    const line = raw
      .replace(/#.*/, '')
      .replace(/\[[^\]]*\]/, ' ')
      .trim();
    const [type, uri, dist] = line.split(/\s+/);
    if (type === 'deb' && uri && dist) out.push({ uri, suites: [dist] });
  }
  return out;
}

function parseDeb822Sources(text: string): { uri: string; suites: string[] }[] {
  const out: { uri: string; suites: string[] }[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last = '';
    for (const raw of stanza.split('\n')) {
      if (raw.startsWith('#')) continue;
      if (/^\s/.test(raw) && last) {
        fields.set(last, `${fields.get(last)} ${raw.trim()}`);
        continue;
      }
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(raw);
      if (m) {
        last = m[1]!.toLowerCase();
        fields.set(last, m[2]!.trim());
      }
    }
    const types = (fields.get('types') ?? '').split(/\s+/);
    if (!types.includes('deb') || /^(no|false)$/i.test(fields.get('enabled') ?? '')) continue;
    const suites = (fields.get('suites') ?? '').split(/\s+/).filter(Boolean);
    for (const uri of (fields.get('uris') ?? '').split(/\s+/).filter(Boolean)) out.push({ uri, suites });
  }
  return out;
}

export function debianArch(): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386', ppc64: 'ppc64el', s390x: 's390x', riscv64: 'riscv64' };
  const a = map[process.arch];
  if (!a) throw new CubeboxError('unavailable', `no Debian architecture for ${process.arch}`);
  return a;
}

export async function findProgram(name: string): Promise<string | null> {
  for (const dir of FULL_PATH.split(':')) {
    const p = path.join(dir, name);
    try {
      await fs.access(p, fsConstants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

export async function haveProgram(name: string): Promise<boolean> {
  const r = await runCapture(name, ['--version'], undefined);
  return r.code === 0;
}

/** "only N MB free on dir" for each distinct file system holding one of dirs that is nearly full. */
export async function lowSpaceHints(dirs: string[]): Promise<string[]> {
  const out: string[] = [];
  const seen = new Set<number>();
  for (const dir of dirs) {
    for (const d of [dir, path.dirname(dir)]) {
      try {
        const dev = (await fs.stat(d)).dev;
        if (seen.has(dev)) break;
        seen.add(dev);
        const s = await fs.statfs(d);
        const free = s.bavail * s.bsize;
        if (free < 512e6) out.push(`only ${(free / 1e6).toFixed(0)} MB free on ${d}`);
        break;
      } catch {
        /* gone: try its parent */
      }
    }
  }
  return out;
}

export async function diskUsage(dir: string): Promise<number> {
  const r = await runCapture('du', ['-s', '-x', '-B1', dir], undefined);
  const n = Number(r.output.split(/\s/)[0]);
  if (r.code !== 0 || !Number.isFinite(n)) throw new CubeboxError('internal', `du ${dir} failed: ${tail(r.output, 3)}`);
  return n;
}
