/*
 * envd-exec: the exec helper of envd.
 *
 * envd runs as root of the sandbox and starts processes for other users. Node's child_process
 * can set uid/gid but always clears the supplementary groups, and node-pty keeps envd's own.
 * So envd starts `envd-exec`, which sets the user's groups, gid and uid, changes to the working
 * directory as that user and then exec()s the program: the PID stays the same, so the PID envd
 * reports is the program's.
 *
 * usage: envd-exec [-t] <uid> <gid> <gid,gid,...|-> <cwd> <file> [arg...]
 *   -t  stdin is the process's terminal (a PTY slave): give it to the user first (0620).
 * The program is looked up in PATH of the environment when it has no slash.
 * Exit status on failure: 125 setup error, 126 not executable, 127 not found.
 *
 * usage: envd-exec --xattr
 *   serves file metadata (the user.e2b.* extended attributes, E2B's place for it) on stdin and
 *   stdout with the caller's own credentials: Node has no xattr calls. See xattr_serve below.
 *
 * usage: envd-exec --hostname <name>
 *   sets the sandbox's host name (a sandbox restored from another's checkpoint keeps the old
 *   one in its kernel's memory): Node has no sethostname.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static int parse_id(const char *s, unsigned long *out) {
  char *end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v > 0xfffffffful) return -1;
  *out = v;
  return 0;
}

static void fail(const char *what, const char *arg, int code) {
  fprintf(stderr, "envd-exec: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(errno));
  _exit(code);
}

/* ---- envd-exec --xattr
 * Requests: [u8 op][u32 BE length][payload]; answers: [u32 BE errno, 0 for success][u32 BE length][payload].
 *   'G' path                        -> [u32 n] n x ([u32 klen][key][u32 vlen][value]): the user.e2b.<key> attributes
 *   'S' [u32 plen] path [u32 n] n x ([u32 klen][key][u32 vlen][value])
 *                                   -> sets exactly these user.e2b.<key> attributes, removing the others
 * Paths are absolute and never followed at their last component (the l*xattr calls). Answers are
 * bounded: at most XA_MAX_ENTRIES attributes of at most XA_MAX_VALUE bytes each (larger ones are
 * left out). A malformed request ends the server (envd starts a new one).
 */
#define XA_PREFIX "user.e2b."
#define XA_PREFIX_LEN (sizeof(XA_PREFIX) - 1)
#define XA_MAX_REQUEST (256 * 1024)
#define XA_MAX_ENTRIES 64
#define XA_MAX_VALUE 4096

static unsigned char xa_req[XA_MAX_REQUEST + 1];
static unsigned char xa_out[8 + 4 + XA_MAX_ENTRIES * (8 + 256 + XA_MAX_VALUE)];
static char xa_list[65536];
static char xa_value[XA_MAX_VALUE];

static int read_full(int fd, void *buf, size_t n) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
  const unsigned char *p = buf;
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static uint32_t get_u32(const unsigned char *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

/* A length-prefixed field of the request: its start, or NULL past the end. */
static const unsigned char *xa_field(const unsigned char **at, const unsigned char *end, uint32_t *len) {
  if (end - *at < 4) return NULL;
  *len = get_u32(*at);
  *at += 4;
  if ((uint64_t)(end - *at) < *len) return NULL;
  const unsigned char *f = *at;
  *at += *len;
  return f;
}

/* The full attribute name user.e2b.<key> (a key of 1-200 bytes without NUL), or NULL. */
static const char *xa_name(char *buf, const unsigned char *key, uint32_t klen) {
  if (klen == 0 || klen > 200 || memchr(key, 0, klen)) return NULL;
  memcpy(buf, XA_PREFIX, XA_PREFIX_LEN);
  memcpy(buf + XA_PREFIX_LEN, key, klen);
  buf[XA_PREFIX_LEN + klen] = 0;
  return buf;
}

/* The names of the file's attributes (NUL-separated) in xa_list; ENOTSUP counts as none. */
static ssize_t xa_names(const char *path) {
  ssize_t n = llistxattr(path, xa_list, sizeof(xa_list));
  if (n < 0 && (errno == ENOTSUP || errno == EOPNOTSUPP)) return 0;
  return n;
}

static uint32_t xa_get(const char *path, size_t *outlen) {
  ssize_t n = xa_names(path);
  if (n < 0) return (uint32_t)errno;
  size_t off = 12;
  uint32_t count = 0;
  for (char *name = xa_list; name < xa_list + n && count < XA_MAX_ENTRIES; name += strlen(name) + 1) {
    if (strncmp(name, XA_PREFIX, XA_PREFIX_LEN) != 0 || name[XA_PREFIX_LEN] == 0) continue;
    ssize_t v = lgetxattr(path, name, xa_value, sizeof(xa_value));
    if (v < 0) continue; /* gone meanwhile, or larger than XA_MAX_VALUE */
    size_t klen = strlen(name) - XA_PREFIX_LEN;
    put_u32(xa_out + off, (uint32_t)klen);
    memcpy(xa_out + off + 4, name + XA_PREFIX_LEN, klen);
    off += 4 + klen;
    put_u32(xa_out + off, (uint32_t)v);
    memcpy(xa_out + off + 4, xa_value, (size_t)v);
    off += 4 + (size_t)v;
    count++;
  }
  put_u32(xa_out + 8, count);
  *outlen = off - 8;
  return 0;
}

static uint32_t xa_set(const char *path, const unsigned char *at, const unsigned char *end) {
  if (end - at < 4) return EINVAL;
  uint32_t n = get_u32(at);
  at += 4;
  if (n > XA_MAX_ENTRIES) return E2BIG;
  const unsigned char *fields = at;
  char name[256];
  for (uint32_t i = 0; i < n; i++) { /* check them all before changing anything */
    uint32_t kl, vl;
    const unsigned char *k = xa_field(&at, end, &kl);
    if (!k || !xa_name(name, k, kl) || !xa_field(&at, end, &vl) || vl > XA_MAX_VALUE) return EINVAL;
  }
  ssize_t have = xa_names(path);
  if (have < 0) return (uint32_t)errno;
  for (char *old = xa_list; old < xa_list + have; old += strlen(old) + 1) {
    if (strncmp(old, XA_PREFIX, XA_PREFIX_LEN) == 0 && lremovexattr(path, old) != 0 && errno != ENODATA) return (uint32_t)errno;
  }
  at = fields;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t kl, vl;
    const unsigned char *k = xa_field(&at, end, &kl);
    const unsigned char *v = xa_field(&at, end, &vl);
    if (lsetxattr(path, xa_name(name, k, kl), v, vl, 0) != 0) return (uint32_t)errno;
  }
  return 0;
}

static int xattr_serve(void) {
  unsigned char head[5];
  while (read_full(0, head, 5) == 0) {
    uint32_t len = get_u32(head + 1);
    if (len > XA_MAX_REQUEST || read_full(0, xa_req, len) != 0) return 1;
    const unsigned char *at = xa_req, *end = xa_req + len;
    const unsigned char *path = at;
    uint32_t plen = len;
    if (head[0] == 'S' && !(path = xa_field(&at, end, &plen))) return 1;
    if (head[0] != 'G' && head[0] != 'S') return 1;
    size_t outlen = 0;
    uint32_t err;
    if (plen == 0 || path[0] != '/' || memchr(path, 0, plen)) {
      err = EINVAL;
    } else {
      char p[4097];
      if (plen >= sizeof(p)) {
        err = ENAMETOOLONG;
      } else {
        memcpy(p, path, plen);
        p[plen] = 0;
        err = head[0] == 'G' ? xa_get(p, &outlen) : xa_set(p, at, end);
      }
    }
    if (err) outlen = 0;
    put_u32(xa_out, err);
    put_u32(xa_out + 4, (uint32_t)outlen);
    if (write_full(1, xa_out, 8 + outlen) != 0) return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--xattr") == 0) return xattr_serve();
  if (argc == 3 && strcmp(argv[1], "--hostname") == 0) {
    if (sethostname(argv[2], strlen(argv[2])) != 0) fail("sethostname", argv[2], 125);
    return 0;
  }
  int argi = 1;
  int tty = 0;
  if (argi < argc && strcmp(argv[argi], "-t") == 0) {
    tty = 1;
    argi++;
  }
  if (argc - argi < 5) {
    fprintf(stderr, "usage: envd-exec [-t] <uid> <gid> <gids|-> <cwd> <file> [arg...]\n");
    return 125;
  }
  unsigned long uid, gid;
  if (parse_id(argv[argi], &uid) || parse_id(argv[argi + 1], &gid)) {
    fprintf(stderr, "envd-exec: bad uid or gid\n");
    return 125;
  }
  gid_t groups[256];
  size_t ngroups = 0;
  const char *glist = argv[argi + 2];
  if (strcmp(glist, "-") != 0) {
    char *copy = strdup(glist);
    if (!copy) return 125;
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
      unsigned long g;
      if (parse_id(tok, &g)) {
        fprintf(stderr, "envd-exec: bad group list\n");
        return 125;
      }
      if (ngroups < sizeof(groups) / sizeof(groups[0])) groups[ngroups++] = (gid_t)g;
    }
    free(copy);
  }
  const char *cwd = argv[argi + 3];
  char **cmd = &argv[argi + 4];

  if (tty && isatty(0)) {
    /* Best effort: the terminal belongs to the user, like a login would arrange. */
    if (fchown(0, (uid_t)uid, (gid_t)gid) != 0 || fchmod(0, 0620) != 0) { /* ignore */ }
  }
  {
    /* Commands are the preferred OOM victims inside the sandbox's memory limit, not envd
     * (score 0); raising a score needs no privilege. */
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      if (write(fd, "500", 3) < 0) { /* ignore */ }
      close(fd);
    }
  }
  if (setgroups(ngroups, groups) != 0) fail("setgroups", NULL, 125);
  if (setgid((gid_t)gid) != 0) fail("setgid", NULL, 125);
  if (setuid((uid_t)uid) != 0) fail("setuid", NULL, 125);
  if (cwd[0] != '\0' && chdir(cwd) != 0) fail("chdir", cwd, 125);

  execvp(cmd[0], cmd);
  fail("exec", cmd[0], errno == ENOENT || errno == ENOTDIR ? 127 : 126);
  return 127;
}
