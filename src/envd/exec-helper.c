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
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

int main(int argc, char **argv) {
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
