/*
 * cubebox-helper: the few host operations Node cannot do itself.
 *
 *   cubebox-helper run-runtime [--private-cgroupv1 [--detach-mounts]] [--hide-proc-sys-net] [--oom-score-adj N] <runtime> [args...]
 *       Runs an OCI runtime. --private-cgroupv1: in a private mount namespace where the
 *       cgroup2 mount at /sys/fs/cgroup/unified is gone, so that crun sees a pure cgroup v1
 *       host on a hybrid-cgroup machine (crun refuses hybrid layouts). That namespace starts
 *       as a copy of the host's mount table, and a copy pins every filesystem in it for as
 *       long as the runtime lives. --detach-mounts, for a call that may live long (`exec`):
 *       every sandbox disk and overlay in it (loop-backed or overlay mounts under a
 *       `sandboxes/` directory) is detached from the copy, so that deleting another sandbox
 *       meanwhile frees its loop device. It costs one unmount per sandbox mount, so short
 *       calls (run, state, delete, pause) skip it: their copy goes when they exit (a started
 *       container leaves it at pivot_root). The host's mounts are untouched.
 *       --hide-proc-sys-net: in a private mount namespace where an empty read-only tmpfs
 *       covers /proc/sys/net. gVisor (before 2024) takes a network namespace that shows
 *       /proc/sys/net/core/rmem_default for the host's and refuses to copy its links; kernels
 *       since 6.x show that file in every namespace. The caller checks the namespace it hands
 *       over is not the host's (that check is what this hides).
 *       --oom-score-adj: with that OOM score, which the processes it starts inherit.
 *
 *   cubebox-helper mount-rootfs <name> <target> <upper> <work> <hostid> <count> <src> <view> [<src> <view>...]
 *       Mounts each read-only layer <src> at <view>, idmapped so that uid/gid N on disk
 *       appears as <hostid>+N (when <hostid> is not 0), then mounts an overlay named
 *       <name> at <target> with the views as lower layers (first pair = topmost).
 *
 *   cubebox-helper mount-view <src> <view> <hostid> <count>
 *       Mounts the directory <src> at <view>, writable (nodev, nosuid), idmapped like the
 *       layers of mount-rootfs: a sandbox's view of a persistent volume.
 *
 *   cubebox-helper mount-disk <image> <target>
 *       Binds a free loop device to the ext4 image (auto-clearing: it goes with the last
 *       unmount) and mounts it at <target> nodev,nosuid,noatime,noinit_itable.
 *
 *   cubebox-helper umount <path>...
 *       Unmounts each path; a path that is not mounted (or missing) is not an error.
 *
 * Exit status 0 on success; otherwise a one-line error on stderr naming the step.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <linux/mount.h>
#include <sys/ioctl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int fail(const char *step, const char *what) {
  fprintf(stderr, "cubebox-helper: %s %s: %s\n", step, what, strerror(errno));
  return 1;
}

/* Undoes mountinfo's octal escapes (\040 for a space, ...) in place. */
static void unescape_mountinfo(char *s) {
  char *out = s;
  for (char *in = s; *in; in++) {
    if (in[0] == '\\' && in[1] >= '0' && in[1] <= '7' && in[2] >= '0' && in[2] <= '7' && in[3] >= '0' && in[3] <= '7') {
      *out++ = (char)((in[1] - '0') * 64 + (in[2] - '0') * 8 + (in[3] - '0'));
      in += 3;
    } else {
      *out++ = *in;
    }
  }
  *out = 0;
}

/*
 * In this (private) mount namespace: detaches every sandbox disk (a loop device, major 7)
 * and overlay mounted under a `sandboxes/` directory. Best effort: a mount that is already
 * gone with its parent is fine.
 */
static void detach_sandbox_mounts(void) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f) return;
  char *line = NULL;
  size_t cap = 0;
  size_t count = 0, room = 0;
  char **todo = NULL;
  while (getline(&line, &cap, f) > 0) {
    unsigned major = 0, minor = 0;
    char mnt[4096], fstype[256];
    /* id parent major:minor root mountpoint options [optional...] - fstype source superopts */
    if (sscanf(line, "%*d %*d %u:%u %*s %4095s", &major, &minor, mnt) != 3) continue;
    char *sep = strstr(line, " - ");
    if (!sep || sscanf(sep + 3, "%255s", fstype) != 1) continue;
    if (major != 7 && strcmp(fstype, "overlay") != 0) continue;
    unescape_mountinfo(mnt);
    /* sandbox disks and views, and volume disks (loop-backed, under a volumes/ directory) */
    if (!strstr(mnt, "/sandboxes/") && !(major == 7 && strstr(mnt, "/volumes/"))) continue;
    if (count == room) {
      room = room ? room * 2 : 64;
      char **grown = realloc(todo, room * sizeof *todo);
      if (!grown) break;
      todo = grown;
    }
    todo[count++] = strdup(mnt);
  }
  free(line);
  fclose(f);
  /* later entries may be mounted on top of earlier ones: detach in reverse order */
  for (size_t i = count; i-- > 0;) {
    if (todo[i]) umount2(todo[i], MNT_DETACH | UMOUNT_NOFOLLOW);
    free(todo[i]);
  }
  free(todo);
}

/* run-runtime [--private-cgroupv1 [--detach-mounts]] [--hide-proc-sys-net] [--oom-score-adj N] <runtime> [args...] */
static int run_runtime(int argc, char **argv) {
  int private_v1 = 0, detach = 0, hide_net = 0;
  const char *oom = NULL;
  while (argc > 0 && strncmp(argv[0], "--", 2) == 0) {
    if (strcmp(argv[0], "--private-cgroupv1") == 0) { private_v1 = 1; argc--; argv++; }
    else if (strcmp(argv[0], "--detach-mounts") == 0) { detach = 1; argc--; argv++; }
    else if (strcmp(argv[0], "--hide-proc-sys-net") == 0) { hide_net = 1; argc--; argv++; }
    else if (strcmp(argv[0], "--oom-score-adj") == 0 && argc > 1) { oom = argv[1]; argc -= 2; argv += 2; }
    else { fprintf(stderr, "cubebox-helper: unknown option %s\n", argv[0]); return 2; }
  }
  if (argc < 1) { fprintf(stderr, "cubebox-helper: run-runtime needs a runtime\n"); return 2; }
  if (oom) {
    /* Inherited by what the runtime starts (exec'd processes): raising needs no privilege. */
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, oom, strlen(oom)) < 0) return fail("write", "/proc/self/oom_score_adj");
    close(fd);
  }
  if (private_v1 || hide_net) {
    if (unshare(CLONE_NEWNS) < 0) return fail("unshare", "mount namespace");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) return fail("mount", "make / private");
  }
  if (hide_net && mount("cubebox", "/proc/sys/net", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=555") < 0)
    return fail("mount", "tmpfs over /proc/sys/net");
  if (private_v1) {
    if (umount2("/sys/fs/cgroup/unified", MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
      return fail("umount", "/sys/fs/cgroup/unified");
    if (detach) detach_sandbox_mounts();
  }
  execv(argv[0], argv);
  return fail("exec", argv[0]);
}

/* A user namespace with the mapping 0 -> hostid (count ids), held open as an fd. */
static int make_userns(unsigned long hostid, unsigned long count) {
  int sync[2];
  if (pipe2(sync, O_CLOEXEC) < 0) return -1;
  pid_t child = fork();
  if (child < 0) return -1;
  if (child == 0) {
    char b = 0;
    close(sync[0]);
    if (unshare(CLONE_NEWUSER) < 0) _exit(1);
    if (write(sync[1], &b, 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  close(sync[1]);
  char b;
  int ok = read(sync[0], &b, 1) == 1;
  close(sync[0]);
  int ns = -1;
  if (ok) {
    char path[64], map[96];
    snprintf(map, sizeof map, "0 %lu %lu\n", hostid, count);
    const char *files[] = {"uid_map", "gid_map"};
    for (int i = 0; i < 2 && ok; i++) {
      snprintf(path, sizeof path, "/proc/%d/%s", child, files[i]);
      int fd = open(path, O_WRONLY | O_CLOEXEC);
      ok = fd >= 0 && write(fd, map, strlen(map)) == (ssize_t)strlen(map);
      if (fd >= 0) close(fd);
    }
    if (ok) {
      snprintf(path, sizeof path, "/proc/%d/ns/user", child);
      ns = open(path, O_RDONLY | O_CLOEXEC);
    }
  }
  /* The child is ours (just forked, not yet reaped), so its PID cannot be stale. */
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  return ns;
}

static int bind_layer(const char *src, const char *view, int userns, int readonly) {
  int tree = syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (tree < 0) return fail("open_tree", src);
  struct mount_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.attr_set = (readonly ? MOUNT_ATTR_RDONLY : 0) | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID;
  if (userns >= 0) {
    attr.attr_set |= MOUNT_ATTR_IDMAP;
    attr.userns_fd = userns;
  }
  if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
    close(tree);
    return fail("mount_setattr", src);
  }
  if (syscall(SYS_move_mount, tree, "", AT_FDCWD, view, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
    close(tree);
    return fail("move_mount", view);
  }
  close(tree);
  return 0;
}

static int unmount_quiet(const char *path) {
  if (umount2(path, UMOUNT_NOFOLLOW) == 0) return 0;
  if (errno == EINVAL || errno == ENOENT) return 0; /* not a mount point (any more) */
  if (errno == EBUSY && umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) == 0) return 0;
  return fail("umount", path);
}

static int mount_rootfs(int argc, char **argv) {
  if (argc < 8 || (argc - 6) % 2 != 0) {
    fprintf(stderr, "cubebox-helper: usage: mount-rootfs <name> <target> <upper> <work> <hostid> <count> <src> <view>...\n");
    return 2;
  }
  const char *name = argv[0], *target = argv[1], *upper = argv[2], *work = argv[3];
  unsigned long hostid = strtoul(argv[4], NULL, 10), count = strtoul(argv[5], NULL, 10);
  int userns = -1;
  if (hostid != 0) {
    userns = make_userns(hostid, count);
    if (userns < 0) return fail("userns", "for idmapped layers");
  }
  size_t optlen = strlen(upper) + strlen(work) + 64;
  for (int i = 6; i < argc; i += 2) optlen += strlen(argv[i + 1]) + 1;
  char *opts = malloc(optlen);
  if (!opts) return fail("malloc", "options");
  strcpy(opts, "lowerdir=");
  for (int i = 6; i < argc; i += 2) {
    if (bind_layer(argv[i], argv[i + 1], userns, 1) != 0) {
      for (int j = 6; j < i; j += 2) unmount_quiet(argv[j + 1]);
      return 1;
    }
    if (i > 6) strcat(opts, ":");
    strcat(opts, argv[i + 1]);
  }
  strcat(opts, ",upperdir=");
  strcat(opts, upper);
  strcat(opts, ",workdir=");
  strcat(opts, work);
  if (mount(name, target, "overlay", MS_NODEV, opts) < 0) {
    int e = errno;
    for (int j = 6; j < argc; j += 2) unmount_quiet(argv[j + 1]);
    errno = e;
    return fail("mount overlay", target);
  }
  return 0;
}

static int mount_view(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "cubebox-helper: usage: mount-view <src> <view> <hostid> <count>\n");
    return 2;
  }
  unsigned long hostid = strtoul(argv[2], NULL, 10), count = strtoul(argv[3], NULL, 10);
  int userns = -1;
  if (hostid != 0) {
    userns = make_userns(hostid, count);
    if (userns < 0) return fail("userns", "for an idmapped view");
  }
  int rc = bind_layer(argv[0], argv[1], userns, 0);
  if (userns >= 0) close(userns);
  return rc;
}

static int mount_disk(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "cubebox-helper: usage: mount-disk <image> <target>\n");
    return 2;
  }
  const char *image = argv[0], *target = argv[1];
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) return fail("open", "/dev/loop-control");
  int img = open(image, O_RDWR | O_CLOEXEC);
  if (img < 0) return fail("open", image);
  for (int attempt = 0; attempt < 32; attempt++) {
    int nr = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (nr < 0) return fail("ioctl", "LOOP_CTL_GET_FREE");
    char dev[64];
    snprintf(dev, sizeof dev, "/dev/loop%d", nr);
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0) return fail("open", dev);
    struct loop_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.fd = (unsigned int)img;
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    strncpy((char *)cfg.info.lo_file_name, image, LO_NAME_SIZE - 1);
    if (ioctl(fd, LOOP_CONFIGURE, &cfg) < 0) {
      int e = errno;
      close(fd);
      if (e == EBUSY) continue; /* another process took this device meanwhile */
      errno = e;
      return fail("ioctl LOOP_CONFIGURE", dev);
    }
    int rc = 0;
    if (mount(dev, target, "ext4", MS_NODEV | MS_NOSUID | MS_NOATIME, "noinit_itable") < 0) rc = fail("mount", target);
    /* closing our fd leaves the mount as the device's last user: autoclear frees it with the umount
     * (and right now, when the mount failed) */
    close(fd);
    close(img);
    close(ctl);
    return rc;
  }
  fprintf(stderr, "cubebox-helper: no free loop device after 32 attempts\n");
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: cubebox-helper run-runtime|mount-rootfs|mount-view|mount-disk|umount ...\n");
    return 2;
  }
  if (strcmp(argv[1], "run-runtime") == 0) return run_runtime(argc - 2, argv + 2);
  if (strcmp(argv[1], "mount-rootfs") == 0) return mount_rootfs(argc - 2, argv + 2);
  if (strcmp(argv[1], "mount-disk") == 0) return mount_disk(argc - 2, argv + 2);
  if (strcmp(argv[1], "mount-view") == 0) return mount_view(argc - 2, argv + 2);
  if (strcmp(argv[1], "umount") == 0) {
    int rc = 0;
    for (int i = 2; i < argc; i++) rc |= unmount_quiet(argv[i]);
    return rc;
  }
  fprintf(stderr, "cubebox-helper: unknown command %s\n", argv[1]);
  return 2;
}
