/*
 * syscall-probe: tries one kernel operation an attacker inside a sandbox would use and
 * prints "ok" or the errno name. Built statically by the security tests and copied into
 * a sandbox, so it needs nothing from the template.
 *
 * Where a refusal by the seccomp filter and one by the kernel's capability checks would
 * look alike, the probe passes an argument the kernel rejects first with another errno
 * (a bad pointer: EFAULT, bad flags: EINVAL, a bad fd: EBADF); EPERM then means the
 * filter stopped the call before the kernel saw it.
 *
 *   syscall-probe <op>    exit 0 when the operation succeeded, 1 when it failed
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x80
#endif

struct clone_args_min {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

static const char *errname(int e) {
  switch (e) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EFAULT: return "EFAULT";
    case EINVAL: return "EINVAL";
    case EBADF: return "EBADF";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case ENOSPC: return "ENOSPC";
    case EUSERS: return "EUSERS";
    default: return strerrorname_np(e) ? strerrorname_np(e) : "E?";
  }
}

static int report(long rc) {
  if (rc < 0) {
    printf("%s\n", errname(errno));
    return 1;
  }
  printf("ok\n");
  return 0;
}

/* A child in new namespaces (flags) through clone or clone3; the child exits 0 at once. */
static long spawn_in(unsigned long flags, int use_clone3) {
  long pid;
  if (use_clone3) {
    struct clone_args_min a;
    memset(&a, 0, sizeof a);
    a.flags = flags;
    a.exit_signal = SIGCHLD;
    pid = syscall(SYS_clone3, &a, sizeof a);
  } else {
    pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
  }
  if (pid == 0) _exit(0);
  if (pid < 0) return -1;
  int status;
  waitpid((pid_t)pid, &status, 0);
  return 0;
}

static int write_file(const char *path, const char *s) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  int ok = write(fd, s, strlen(s)) == (ssize_t)strlen(s);
  close(fd);
  return ok ? 0 : -1;
}

/* unshare -Urm; mount -t tmpfs: the classic way to get CAP_SYS_ADMIN over a mount namespace. */
static long userns_mount(void) {
  char map[64];
  uid_t uid = getuid();
  gid_t gid = getgid();
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0) return -1;
  snprintf(map, sizeof map, "0 %u 1\n", uid);
  if (write_file("/proc/self/uid_map", map) < 0) return -1;
  if (write_file("/proc/self/setgroups", "deny") < 0) return -1;
  snprintf(map, sizeof map, "0 %u 1\n", gid);
  if (write_file("/proc/self/gid_map", map) < 0) return -1;
  return mount("none", "/tmp", "tmpfs", 0, NULL);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: syscall-probe <op>\n");
    return 2;
  }
  const char *op = argv[1];
  setvbuf(stdout, NULL, _IONBF, 0);
  if (!strcmp(op, "ids")) return printf("uid=%u euid=%u\n", getuid(), geteuid()) < 0;
  if (!strcmp(op, "unshare-user")) return report(unshare(CLONE_NEWUSER));
  if (!strcmp(op, "unshare-user-mount")) return report(userns_mount());
  if (!strcmp(op, "unshare-net")) return report(unshare(CLONE_NEWNET));
  if (!strcmp(op, "unshare-time")) return report(unshare(CLONE_NEWTIME));
  if (!strcmp(op, "clone-newuser")) return report(spawn_in(CLONE_NEWUSER, 0));
  if (!strcmp(op, "clone-newns")) return report(spawn_in(CLONE_NEWNS, 0));
  if (!strcmp(op, "clone-plain")) return report(spawn_in(0, 0));
  if (!strcmp(op, "clone3-newuser")) return report(spawn_in(CLONE_NEWUSER, 1));
  if (!strcmp(op, "clone3-plain")) return report(spawn_in(0, 1));
  /* bad filesystem-type pointer: the kernel copies it before any capability check (EFAULT) */
  if (!strcmp(op, "mount")) return report(syscall(SYS_mount, "none", "/tmp", (char *)1, 0, NULL));
  /* bad flags: EINVAL from the kernel before the capability check */
  if (!strcmp(op, "umount2")) return report(umount2("/", 0x7fff0000));
  /* a bad fd: EBADF from the kernel */
  if (!strcmp(op, "setns")) return report(setns(-1, 0));
  if (!strcmp(op, "pivot-root")) return report(syscall(SYS_pivot_root, "/", "/"));
  /* the session keyring's id: works unprivileged when the call is allowed */
  if (!strcmp(op, "keyctl")) return report(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 1));
  if (!strcmp(op, "add-key")) return report(syscall(SYS_add_key, "user", "cubebox-probe", "x", 1, -2 /* process keyring */));
  if (!strcmp(op, "request-key")) return report(syscall(SYS_request_key, "user", "cubebox-probe", NULL, 0));
  if (!strcmp(op, "bpf")) return report(syscall(SYS_bpf, 0, NULL, 0));
  /* a NULL attr: EFAULT from the kernel */
  if (!strcmp(op, "perf-event-open")) return report(syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
  /* user-mode-only faults are allowed unprivileged when the call is allowed */
  if (!strcmp(op, "userfaultfd")) return report(syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */));
  if (!strcmp(op, "fsopen")) return report(syscall(SYS_fsopen, (char *)1, 0));
  if (!strcmp(op, "open-tree")) return report(syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */));
  fprintf(stderr, "syscall-probe: unknown op %s\n", op);
  return 2;
}
