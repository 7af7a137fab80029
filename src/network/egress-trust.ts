// How a sandbox comes to trust the egress proxy's CA: at its first boot the CA is appended to
// its root's system bundle and added where the distribution's tools (update-ca-certificates)
// keep local CAs, both written through its root into its own writable layer (the template's
// files stay as they are, and the sandbox may still manage its trust store); and Python, Node
// and curl are pointed at that bundle. Never through a symlink: a template (a registry image's)
// decides what its paths are.
import { chownSync, existsSync, lstatSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Where distributions keep their system bundle (Debian, Alpine; Fedora, RHEL; others). */
const SYSTEM_BUNDLES = ['/etc/ssl/certs/ca-certificates.crt', '/etc/pki/tls/certs/ca-bundle.crt', '/etc/ssl/ca-bundle.pem', '/etc/ssl/cert.pem'];
/** Debian's and Alpine's directory of local CAs (update-ca-certificates adds them to the bundle). */
const LOCAL_CAS = '/usr/local/share/ca-certificates';
/** The CA alone, bound read-only into every sandbox (Node adds it to its own store). */
export const CA_FILE = '/etc/cubebox-egress-ca.crt';

/** `rel` under `root`, if no component on the way is a symlink (else undefined). */
function plainPath(root: string, rel: string): string | undefined {
  const full = join(root, rel);
  try {
    return realpathSync(full) === join(realpathSync(root), rel) ? full : undefined;
  } catch {
    return undefined;
  }
}

/** Where the template's system bundle is (a plain file in its topmost layer that has one). */
export function systemBundle(layers: string[]): string | undefined {
  for (const path of SYSTEM_BUNDLES)
    for (const l of layers) {
      const full = plainPath(l, path);
      if (full && lstatSync(full).isFile()) return path;
    }
  return undefined;
}

/** The environment of a sandbox of a template with these layers (when the egress proxy runs). */
export function trustEnv(layers: string[]): Record<string, string> {
  const bundle = systemBundle(layers);
  // without a system bundle, only Node's additive one: replacing a trust store would break other HTTPS
  if (!bundle) return { NODE_EXTRA_CA_CERTS: CA_FILE };
  return { NODE_EXTRA_CA_CERTS: CA_FILE, SSL_CERT_FILE: bundle, REQUESTS_CA_BUNDLE: bundle, CURL_CA_BUNDLE: bundle };
}

/**
 * Adds the CA to a new sandbox's root (mounted at `rootfs`, nothing run in it yet): appended to
 * its system bundle, and as a local CA. Files the sandbox's root owns (`owner`: its host id).
 */
export function addCaToRoot(rootfs: string, layers: string[], caPem: string, owner: number | undefined): void {
  const bundle = systemBundle(layers);
  const file = bundle && plainPath(rootfs, bundle);
  if (file && lstatSync(file).isFile() && lstatSync(file).size < 8 << 20) {
    // an existing file: rewritten in place, it keeps its owner and mode (copied up into the sandbox's layer)
    writeFileSync(file, readFileSync(file, 'utf8').replace(/\n?$/, '\n') + caPem);
  }
  const local = plainPath(rootfs, LOCAL_CAS);
  if (local && existsSync(local) && lstatSync(local).isDirectory()) {
    const f = join(local, 'cubebox-egress-ca.crt');
    try {
      writeFileSync(f, caPem, { mode: 0o644, flag: 'wx' }); // never over something there (a symlink)
      if (owner !== undefined) chownSync(f, owner, owner);
    } catch {
      // the template has one: left as it is
    }
  }
}
