/*
 * floor-probe: the smallest agents a sandbox could run in place of a Node envd, measured by
 * `cubebox bench --only floor` (src/bench/floor-bench.ts) beside today's envd, to choose how to
 * lower the Node-per-sandbox floor with numbers. No sandbox runs it.
 *
 * usage: floor-probe init <socket>
 *   a static init: PID 1 of a container, reaps every child, and answers each HTTP request on
 *   the unix socket with 204 (what a static init would answer to the host's /health).
 *
 * usage: floor-probe spawner <socket>
 *   a fork server: on each connection, every line "<absolute path>\n" is run (fork, exec with
 *   stdio on /dev/null, wait) and answered "<exit status>\n".
 *
 * Static (-static -Os), so it runs on any root, busybox included.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int listen_unix(const char *path) {
  struct sockaddr_un addr;
  if (strlen(path) >= sizeof(addr.sun_path)) return -1;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  unlink(path);
  if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, 128) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Reads a request's head (up to its blank line, 8 KiB at most) and answers 204. */
static void answer_http(int c) {
  char buf[8192];
  size_t got = 0;
  while (got < sizeof(buf) - 1) {
    ssize_t n = read(c, buf + got, sizeof(buf) - 1 - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    got += (size_t)n;
    buf[got] = '\0';
    if (strstr(buf, "\r\n\r\n")) break;
  }
  static const char reply[] = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
  write_all(c, reply, sizeof(reply) - 1);
}

/* Accepts connections on the unix socket one at a time and hands each to serve_one. */
static int serve(const char *path, void (*serve_one)(int)) {
  signal(SIGPIPE, SIG_IGN);
  int fd = listen_unix(path);
  if (fd < 0) {
    perror("floor-probe: listen");
    return 1;
  }
  for (;;) {
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      perror("floor-probe: accept");
      return 1;
    }
    serve_one(c);
    close(c);
  }
}

/* Runs one program with stdio on /dev/null and waits for it: its exit status, or 128+signal. */
static int run_one(const char *file) {
  pid_t pid = fork();
  if (pid < 0) return 125;
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
    }
    char *const argv[] = {(char *)file, NULL};
    execv(file, argv);
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return 125;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void serve_spawns(int c) {
  char line[4096];
  size_t got = 0;
  for (;;) {
    ssize_t n = read(c, line + got, sizeof(line) - 1 - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    got += (size_t)n;
    char *nl;
    while ((nl = memchr(line, '\n', got)) != NULL) {
      *nl = '\0';
      char out[16];
      int len = snprintf(out, sizeof(out), "%d\n", line[0] == '/' ? run_one(line) : 127);
      if (write_all(c, out, (size_t)len) != 0) return;
      size_t used = (size_t)(nl - line) + 1;
      memmove(line, nl + 1, got - used);
      got -= used;
    }
    if (got == sizeof(line) - 1) return; /* a line longer than the buffer: drop the client */
  }
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "init") == 0) {
    /* as PID 1: ignoring SIGCHLD has the kernel reap every child, orphans included */
    signal(SIGCHLD, SIG_IGN);
    return serve(argv[2], answer_http);
  }
  if (argc == 3 && strcmp(argv[1], "spawner") == 0) return serve(argv[2], serve_spawns);
  fprintf(stderr, "usage: floor-probe init|spawner <socket>\n");
  return 2;
}
