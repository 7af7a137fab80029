// What `base` is made of: the package list, the user, and the files the recipe writes into
// the tree. Everything here is part of the cache keys (see cache.ts).

/**
 * The packages that make `base`, on top of debootstrap's minbase variant: what E2B's own
 * `base` image (python:3.11 on Debian bookworm) gives agents, less the compilers and Node.js
 * (hundreds of MB; `sudo apt-get install build-essential nodejs npm` adds them).
 */
export const BASE_PACKAGES: readonly string[] = [
  'bash',
  'coreutils',
  'python3',
  // `python` and `pip` as in E2B's image (its tests run `python -m http.server`), and venv
  'python-is-python3',
  'python3-pip',
  'python3-venv',
  'git',
  'curl',
  'wget',
  'ca-certificates',
  'gnupg',
  'netbase',
  'openssh-client',
  'sudo',
  'ncurses-bin',
  'procps',
  'unzip',
  'xz-utils',
  'bzip2',
  'file',
  'patch',
  // Resolves the sandbox's own hostname whatever it is and whatever /etc/hosts says, so
  // sudo does not complain "unable to resolve host".
  'libnss-myhostname',
];

export const BASE_USER = { name: 'user', uid: 1000, gid: 1000, home: '/home/user', shell: '/bin/bash' } as const;

export const VARIANT = 'minbase';
export const FULL_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Files the recipe writes into the tree. Part of the rootfs cache key. */
export const FILES: Record<string, { content: string; mode: number }> = {
  '/etc/sudoers.d/user': { content: `${BASE_USER.name} ALL=(ALL:ALL) NOPASSWD: ALL\n`, mode: 0o440 },
  '/etc/hostname': { content: 'localhost\n', mode: 0o644 },
  '/etc/hosts': {
    content: '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n',
    mode: 0o644,
  },
  '/etc/resolv.conf': { content: '', mode: 0o644 },
  '/etc/profile': {
    // Debian's /etc/profile, with one PATH for every user (as in E2B's images). It must
    // stay quiet and succeed: the SDK runs every command as `/bin/bash -l -c cmd`.
    content: `# /etc/profile: system-wide .profile file for the Bourne shell (sh(1))
# and Bourne compatible shells (bash(1), ksh(1), ash(1), ...).

PATH="${FULL_PATH}"
export PATH

if [ "\${PS1-}" ]; then
  if [ "\${BASH-}" ] && [ "$BASH" != "/bin/sh" ]; then
    # The file bash.bashrc already sets the default PS1.
    if [ -f /etc/bash.bashrc ]; then
      . /etc/bash.bashrc
    fi
  else
    if [ "$(id -u)" -eq 0 ]; then
      PS1='# '
    else
      PS1='$ '
    fi
  fi
fi

if [ -d /etc/profile.d ]; then
  for i in /etc/profile.d/*.sh; do
    if [ -r "$i" ]; then
      . "$i"
    fi
  done
  unset i
fi
`,
    mode: 0o644,
  },
  // Like Debian's slim images: no documentation, manual pages or translations, now or
  // from packages installed later (copyright files stay).
  '/etc/dpkg/dpkg.cfg.d/cubebox-slim': {
    content: `path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
`,
    mode: 0o644,
  },
  // pip installs as in E2B's image (Debian's own Python is otherwise "externally managed"):
  // root into the system, the user into ~/.local.
  '/etc/pip.conf': { content: '[global]\nbreak-system-packages = true\n', mode: 0o644 },
  // apt keeps no downloaded packages in the image.
  '/etc/apt/apt.conf.d/cubebox-clean': {
    content: 'APT::Keep-Downloaded-Packages "false";\n',
    mode: 0o644,
  },
};

/** Bumped whenever the post-debootstrap recipe below changes in a way FILES does not show. */
export const RECIPE_VERSION = 1;
