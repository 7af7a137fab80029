// Per language: the kernel behind it, and the helper code that sets a context's working
// directory and environment variables. Values are quoted for each language, never pasted in.
import { existsSync } from 'node:fs';

export type Language = 'python' | 'python3' | 'javascript' | 'typescript' | 'r' | 'bash' | 'java';

/** The contract's normalisation: empty is python; js and ts are short names. */
export function normalizeLanguage(language: string | null | undefined): string {
  const l = (language ?? '').trim().toLowerCase();
  if (!l) return 'python';
  if (l === 'js') return 'javascript';
  if (l === 'ts') return 'typescript';
  return l;
}

/** Jupyter kernelspec names of the languages that run in Jupyter kernels. */
export const JUPYTER_KERNELS: Record<string, string> = { python: 'python3', python3: 'python3', r: 'ir' };

/** Each language, and the program it needs in the sandbox (none: always there). */
const PROGRAMS: Record<Language, string | undefined> = {
  python: undefined,
  python3: undefined,
  javascript: undefined,
  typescript: undefined,
  bash: undefined,
  r: '/usr/bin/R',
  java: '/usr/bin/java',
};

/** The languages this sandbox can run (a template may lack R or the JDK). */
export function availableLanguages(): Language[] {
  return (Object.keys(PROGRAMS) as Language[]).filter((l) => l !== 'python3' && (!PROGRAMS[l] || existsSync(PROGRAMS[l])));
}

export function isAvailableLanguage(l: string): l is Language {
  return Object.hasOwn(PROGRAMS, l) && (l === 'python3' || availableLanguages().includes(l as Language));
}

const json = (v: string) => JSON.stringify(v);
/**
 * A Java string literal: JSON's escapes are Java's. Java reads \uXXXX before it parses the
 * literal, but JSON writes that form only for control characters other than line breaks,
 * which a literal may hold, and a backslash of the value comes out doubled.
 */
const javaString = (v: string) => JSON.stringify(v);
const shellQuote = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function cwdCode(language: string, cwd: string): string {
  switch (language) {
    case 'python':
    case 'python3':
      return `__import__('os').chdir(${json(cwd)})`;
    case 'javascript':
    case 'typescript':
      return `process.chdir(${json(cwd)})`;
    case 'r':
      return `setwd(${json(cwd)})`;
    case 'bash':
      return `cd ${shellQuote(cwd)}`;
    case 'java':
      // as upstream: the JVM cannot change its working directory, so only user.dir follows
      return `System.setProperty("user.dir", ${javaString(cwd)});`;
    default:
      return '';
  }
}

/** Code that sets (value string) or unsets (value null) each variable. */
export function envCode(language: string, vars: Record<string, string | null>): string {
  const entries = Object.entries(vars).filter(([k]) => k !== '' && !k.includes('=') && !k.includes('\0'));
  if (!entries.length) return '';
  const set = Object.fromEntries(entries.filter(([, v]) => v !== null)) as Record<string, string>;
  const unset = entries.filter(([, v]) => v === null).map(([k]) => k);
  switch (language) {
    case 'python':
    case 'python3':
      return `__import__('os').environ.update(__import__('json').loads(${json(JSON.stringify(set))}))\nfor __k in ${JSON.stringify(unset)}: __import__('os').environ.pop(__k, None)`;
    case 'javascript':
    case 'typescript':
      return `Object.assign(process.env, ${JSON.stringify(set)}); for (const k of ${JSON.stringify(unset)}) delete process.env[k];`;
    case 'r': {
      const lines = [];
      if (Object.keys(set).length) lines.push(`do.call(Sys.setenv, as.list(jsonlite::fromJSON(${json(JSON.stringify(set))})))`);
      if (unset.length) lines.push(`Sys.unsetenv(c(${unset.map(json).join(', ')}))`);
      return lines.join('\n');
    }
    case 'bash': {
      const ok = entries.filter(([k]) => ENV_NAME.test(k));
      return ok.map(([k, v]) => (v === null ? `unset ${k}` : `export ${k}=${shellQuote(v)}`)).join('\n');
    }
    case 'java': {
      // System properties, as upstream sets them, and the JVM's environment (System.getenv)
      const hook = '((java.util.function.BiConsumer<String, String>) System.getProperties().get("cubebox.setenv"))';
      const statements = entries.map(([k, v]) =>
        v === null
          ? `System.clearProperty(${javaString(k)}); ${hook}.accept(${javaString(k)}, null);`
          : `System.setProperty(${javaString(k)}, ${javaString(v)}); ${hook}.accept(${javaString(k)}, ${javaString(v)});`,
      );
      return `{\n${statements.join('\n')}\n}`; // one block: JShell compiles each snippet on its own
    }
    default:
      return '';
  }
}
