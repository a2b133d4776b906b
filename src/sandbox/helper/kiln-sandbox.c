/*
 * kiln-sandbox: launches one Kiln job inside fresh namespaces.
 *
 * Bun cannot create namespaces for a child, so the worker execs this small static helper instead. It runs as
 * root and ends as an unprivileged, capability-less, seccomp-filtered job process. See README.md next to
 * this file for the command line, the order of steps and the status protocol.
 *
 * Process layout:
 *   outer (the helper as spawned)   host namespaces; joins the job's cgroups, forwards signals, waits
 *    └─ PID 1 of the job pid ns     new mount/net/ipc/uts/cgroup ns; builds the root, runs the API
 *        │                          forwarder, reaps orphans, reports the result
 *        └─ job                     setsid, drops to the job user, seccomp, exec PROGRAM
 *
 * The outer process deliberately stays in the host's namespaces (only CLONE_NEWPID is unshared there, which
 * affects its children, not itself): that way the job's mount namespace, and with it the scratch mount and
 * its auto-clearing loop device, dies exactly when PID 1 dies.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "collect.h"

#define MAX_LIST 64            /* cap on each repeatable option */
#define MAX_CONNS 256          /* concurrent API connections; more wait in the listen backlog */
#define CONN_BUF 16384         /* bytes buffered per direction per connection */
#define HOST "/.kiln-host"     /* where the host root sits between the two halves of the set-up */
#define API_SOCK "/kiln/api.sock"
#define TEMPLATES "/kiln/templates" /* --templates: where --inject attaches templates */
#define STAGE "/tmp/kiln-scratch"   /* --overlay-root: the scratch, before the pivot (in the skeleton tmpfs) */
#define NEW_ROOT "/tmp/kiln-root"   /* --overlay-root: the overlay, before the pivot */

/* ------------------------------------------------------------------------------------------------------ */
/* Options                                                                                                 */

struct bind_opt { const char *src, *dst; bool ro; int fd; };

static struct {
  const char *root, *kiln_bin, *scratch_file, *scratch_dev, *scratch_tmpfs, *scratch_slot, *slot_root, *hostname,
      *chdir, *api_sock, *setup;
  const char *masks[MAX_LIST], *devs[MAX_LIST], *cgroups[MAX_LIST];
  struct bind_opt binds[MAX_LIST];
  int nmasks, ndevs, ncgroups, nbinds, api_port, status_fd, hold_fd, slot_pidfd;
  pid_t slot_pid;
  uid_t uid;
  gid_t gid, groups[MAX_LIST];
  int ngroups;
  bool have_uid, have_gid, have_root, debug, templates, overlay_root, rw_root, build;
  char **argv;
} o = {.root = "/", .hostname = "kiln", .chdir = "/tmp/home", .status_fd = -1, .hold_fd = -1, .slot_pidfd = -1};

/* Shared between the outer process and PID 1 (MAP_SHARED survives fork): whether PID 1 managed to write
 * its final status line, and which loop device it attached, so the outer process can wait for it to go. */
static struct shared { volatile int final_written; volatile int loop_nr; } *shared;

/* ------------------------------------------------------------------------------------------------------ */
/* Status lines and errors                                                                                 */

static const char *g_step = "args"; /* names the step an error belongs to */
static int g_fail_code = 125;       /* outer process: 125; PID 1 and the job: 127 */
static int g_err_pipe = -1;         /* in the job process, errors go to PID 1 through this pipe */

static void step(const char *name) {
  g_step = name;
  if (!o.debug) return;
  struct timespec ts; /* monotonic microseconds, to see where launch time goes */
  clock_gettime(CLOCK_MONOTONIC, &ts);
  dprintf(2, "kiln-sandbox[%d] %lld.%06ld: %s\n", (int)getpid(), (long long)ts.tv_sec, ts.tv_nsec / 1000, name);
}

/* Writes all of buf, waiting if the fd is a full non-blocking pipe. */
static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EAGAIN) {
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      poll(&p, 1, 1000);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return; /* the reader is gone: nothing useful left to do */
    buf += n;
    len -= (size_t)n;
  }
}

/* One status line, in one write() so concurrent writers never interleave (lines are < PIPE_BUF). */
static void status_line(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
  for (int i = 0; i < n; i++)
    if (buf[i] == '\n') buf[i] = ' ';
  buf[n++] = '\n';
  if (o.status_fd >= 0) write_all(o.status_fd, buf, (size_t)n);
  else if (strncmp(buf, "error ", 6) == 0 || o.debug) write_all(2, buf, (size_t)n);
}

/* Reports a set-up failure as "error STEP: MESSAGE[: strerror]" and exits. */
static void __attribute__((noreturn, format(printf, 2, 3))) fail(bool with_errno, const char *fmt, ...) {
  int e = errno;
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (with_errno && n >= 0 && n < (int)sizeof msg) snprintf(msg + n, sizeof msg - (size_t)n, ": %s", strerror(e));
  if (g_err_pipe >= 0) { /* the job process: PID 1 reports it, so there is exactly one final line */
    char line[1024];
    int len = snprintf(line, sizeof line, "%s: %s", g_step, msg);
    write_all(g_err_pipe, line, len < (int)sizeof line ? (size_t)len : sizeof line - 1);
    _exit(127);
  }
  status_line("error %s: %s", g_step, msg);
  if (shared) shared->final_written = 1;
  _exit(g_fail_code);
}
#define die(...) fail(true, __VA_ARGS__)
#define die_msg(...) fail(false, __VA_ARGS__)

/* ------------------------------------------------------------------------------------------------------ */
/* Small helpers                                                                                           */

static unsigned long parse_num(const char *s, unsigned long max, const char *what) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (!*s || *end || errno || v > max || *s == '-') die_msg("bad %s: %s", what, s);
  return v;
}

/* Host paths must be absolute and must not climb: they are resolved before the pivot. */
static const char *abs_path(const char *p, const char *what) {
  if (p[0] != '/' || strstr(p, "/../") || (strlen(p) >= 3 && !strcmp(p + strlen(p) - 3, "/..")))
    die_msg("%s must be an absolute path: %s", what, p);
  return p;
}

static void xmount(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
  if (mount(src, dst, type, flags, data) < 0) die("mount %s", dst);
}

/* An existing directory is fine; an existing anything else is not: we mount on these paths, and a mount
 * on a symlink would land wherever it points. */
static void xmkdir(const char *path, mode_t mode) {
  struct stat st;
  if (mkdir(path, mode) == 0 || (errno == EEXIST && lstat(path, &st) == 0 && S_ISDIR(st.st_mode))) return;
  if (errno == EEXIST) errno = ENOTDIR;
  die("mkdir %s", path);
}

/* Creates an empty file to bind a non-directory onto. */
static void touch(const char *path, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, mode);
  if (fd < 0) die("create %s", path);
  close(fd);
}

/* Points 0, 1 and 2 at /dev/null (keeping stderr for --debug, or for errors when there is no status fd):
 * the caller then sees EOF on the job's output as soon as the job's processes are gone, even while the
 * helper lingers (waiting, or held by --hold-fd). */
static void drop_stdio(void) {
  int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd < 0) die("open /dev/null");
  /* A copy of the caller's stdout left open would hold its pipe open past the job: no silent failure. */
  for (int i = 0; i <= 2; i++)
    if ((i < 2 || (!o.debug && o.status_fd >= 0)) && fd != i && dup2(fd, i) < 0) die("dup2 /dev/null to %d", i);
  if (fd > 2) close(fd);
}

/* A path through an fd opened on the host before the pivot: immune to symlinks that would otherwise be
 * resolved against the new root, and to the host path changing under us. Needs our /proc mounted. */
static const char *fd_path(int fd, const char *rest) {
  static char buf[PATH_MAX];
  snprintf(buf, sizeof buf, "/proc/self/fd/%d%s%s", fd, rest ? "/" : "", rest ? rest : "");
  return buf;
}

static int open_host(const char *path, int flags) {
  int fd = open(path, flags | O_CLOEXEC);
  if (fd < 0) die("open %s", path);
  return fd;
}

static char *read_file(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open %s", path);
  size_t cap = 16384, len = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (!buf) die_msg("out of memory");
    ssize_t n = read(fd, buf + len, cap - len - 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("read %s", path);
    if (n == 0) break;
    len += (size_t)n;
    if (cap - len < 4096) buf = realloc(buf, cap *= 2);
  }
  close(fd);
  buf[len] = 0;
  return buf;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Read-only remounts                                                                                      */

/* A bind mount starts with the flags of its source, and MS_RDONLY on a recursive bind only reaches the top
 * mount, so every mount at or below one of `prefixes` is remounted read-only one by one, keeping its
 * nosuid/nodev/noexec/atime flags (a bind remount replaces them all). */
static bool under(const char *path, const char *prefix) {
  size_t n = strlen(prefix);
  return strncmp(path, prefix, n) == 0 && (path[n] == 0 || path[n] == '/');
}

static void unescape_octal(char *s) { /* mountinfo writes space, tab, newline and '\' as \ooo */
  char *w = s;
  for (; *s; w++) {
    if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
      *w = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
      s += 4;
    } else {
      *w = *s++;
    }
  }
  *w = 0;
}

static void make_ro(const char **prefixes, int n) {
  char *info = read_file("/proc/self/mountinfo"), *save = NULL;
  for (char *line = strtok_r(info, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    /* fields: id parent major:minor root mount-point options ... */
    char *f[6], *s2 = NULL;
    int i = 0;
    for (char *t = strtok_r(line, " ", &s2); t && i < 6; t = strtok_r(NULL, " ", &s2)) f[i++] = t;
    if (i < 6) continue;
    char *mp = f[4];
    unescape_octal(mp);
    bool match = false;
    for (int j = 0; j < n && !match; j++) match = under(mp, prefixes[j]);
    if (!match) continue;
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY;
    bool atime = false;
    char *s3 = NULL;
    for (char *opt = strtok_r(f[5], ",", &s3); opt; opt = strtok_r(NULL, ",", &s3)) {
      if (!strcmp(opt, "nosuid")) flags |= MS_NOSUID;
      else if (!strcmp(opt, "nodev")) flags |= MS_NODEV;
      else if (!strcmp(opt, "noexec")) flags |= MS_NOEXEC;
      else if (!strcmp(opt, "nodiratime")) flags |= MS_NODIRATIME;
      else if (!strcmp(opt, "noatime")) flags |= MS_NOATIME, atime = true;
      else if (!strcmp(opt, "relatime")) flags |= MS_RELATIME, atime = true;
#ifdef MS_NOSYMFOLLOW
      else if (!strcmp(opt, "nosymfollow")) flags |= MS_NOSYMFOLLOW;
#endif
    }
    if (!atime) flags |= MS_STRICTATIME;
    /* A mount hidden under another one (mounted over it or over a parent dir) is unreachable from the
     * job and can stay as it is; its path then names nothing (ENOENT) or a mere directory inside the
     * covering mount (EINVAL), which is itself in this list. */
    if (mount(NULL, mp, NULL, flags, NULL) < 0 && errno != ENOENT && errno != EINVAL)
      die("remount %s read-only", mp);
  }
  free(info);
}

/* Binds a single non-directory (device node, file, socket) read-only or not. */
static void bind_file(const char *src, const char *dst, bool ro) {
  /* A mount point the skeleton already holds (read-only: it cannot be opened for writing) is used as is. */
  struct stat st;
  if (lstat(dst, &st) < 0) touch(dst, 0644);
  else if (!S_ISREG(st.st_mode)) die_msg("%s is not a file to bind onto", dst);
  xmount(src, dst, NULL, MS_BIND, NULL);
  if (ro) xmount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Building the job's root                                                                                 */

/* Set while a slot keeper builds the skeleton its jobs share (see build_skeleton): only what is the same
 * for every job goes in; each job mounts its own devpts, shm, templates tmpfs and API socket on top. */
static bool g_prebuild;

/* Host objects opened before the pivot (see fd_path). */
static int root_fd = -1, kiln_bin_fd = -1, api_fd = -1, scratch_fd = -1, dev_fds[MAX_LIST];
static int host_pid; /* PID 1 as the host sees it, for the "ready" line */

/* --scratch-slot DIR: the slot keeper's volume, mounted at DIR in the keeper's mount namespace, which we
 * joined. It must be that mount (ext4, its root, not the host directory beneath it) and empty but for
 * lost+found: the keeper wipes it after every job, and a volume still holding anything would hand one
 * job's files to the next. */
static void open_slot_scratch(void) {
  scratch_fd = open_host(o.scratch_slot, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  struct statfs sf;
  struct stat st, up;
  if (fstatfs(scratch_fd, &sf) < 0 || fstat(scratch_fd, &st) < 0 || fstatat(scratch_fd, "..", &up, 0) < 0)
    die("stat %s", o.scratch_slot);
  if (sf.f_type != EXT4_SUPER_MAGIC || st.st_dev == up.st_dev)
    die_msg("%s is not the slot's scratch volume (is its keeper running?)", o.scratch_slot);
  DIR *d = fdopendir(dup(scratch_fd));
  if (!d) die("read %s", o.scratch_slot);
  for (struct dirent *e; (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, "lost+found"))
      die_msg("the slot's scratch volume still holds %s from an earlier job", e->d_name);
  closedir(d);
}

static void open_host_objects(void) {
  step("mount-root");
  root_fd = open_host(o.root, O_RDONLY | O_DIRECTORY);
  step("bind");
  for (int i = 0; i < o.nbinds; i++) o.binds[i].fd = open_host(o.binds[i].src, O_PATH);
  step("kiln");
  if (o.kiln_bin) kiln_bin_fd = open_host(o.kiln_bin, O_PATH);
  step("api");
  if (o.api_sock) api_fd = open_host(o.api_sock, O_PATH);
  step("dev");
  for (int i = 0; i < o.ndevs; i++) dev_fds[i] = open_host(o.devs[i], O_PATH);
  step("scratch");
  if (o.scratch_file) scratch_fd = open_host(o.scratch_file, O_RDWR);
  if (o.scratch_dev) scratch_fd = open_host(o.scratch_dev, O_PATH);
  if (o.scratch_slot) open_slot_scratch();
}

/* Recreates each top-level entry of --root in the skeleton: directories and files are bound (and made
 * read-only afterwards), symlinks copied. The entries we provide ourselves are skipped. */
static void populate_root(void) {
  static const char *const own[] = {"proc", "sys", "dev", "tmp", "kiln", HOST + 1, NULL};
  step("mount-root");
  DIR *d = fdopendir(openat(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d) die("read %s", o.root);
  const char **ro = NULL;
  int nro = 0;
  for (struct dirent *e; (e = readdir(d));) {
    bool skip = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    for (int i = 0; own[i] && !skip; i++) skip = !strcmp(e->d_name, own[i]);
    if (skip) continue;
    struct stat st;
    if (fstatat(root_fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) die("stat %s/%s", o.root, e->d_name);
    char dst[NAME_MAX + 2];
    snprintf(dst, sizeof dst, "/%s", e->d_name);
    if (S_ISLNK(st.st_mode)) {
      char target[PATH_MAX];
      ssize_t n = readlinkat(root_fd, e->d_name, target, sizeof target - 1);
      if (n < 0) die("readlink %s", dst);
      target[n] = 0;
      if (symlink(target, dst) < 0) die("symlink %s", dst);
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      xmkdir(dst, 0755);
      xmount(fd_path(root_fd, e->d_name), dst, NULL, MS_BIND | MS_REC, NULL);
    } else if (S_ISREG(st.st_mode)) {
      touch(dst, 0644);
      xmount(fd_path(root_fd, e->d_name), dst, NULL, MS_BIND, NULL);
    } else {
      continue; /* sockets, fifos, device nodes at the top level have no business in a job's root */
    }
    ro = realloc(ro, sizeof *ro * (size_t)(nro + 1));
    if (!ro || !(ro[nro++] = strdup(dst))) die_msg("out of memory");
  }
  closedir(d);
  make_ro(ro, nro); /* one pass over mountinfo for all of them */
  for (int i = 0; i < nro; i++) free((void *)ro[i]);
  free(ro);
  xmkdir("/sys", 0555); /* no host /sys: it leaks host-wide figures; an empty dir keeps tools quiet */
}

/* A fresh procfs for the new pid namespace; the kernel-wide knobs in it are bound read-only over
 * themselves so even a process that somehow regained privileges could not turn them. */
static void setup_proc(void) {
  step("proc");
  xmkdir("/proc", 0555);
  xmount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  static const char *const ro[] = {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"};
  for (size_t i = 0; i < sizeof ro / sizeof *ro; i++) {
    if (access(ro[i], F_OK) < 0) continue;
    xmount(ro[i], ro[i], NULL, MS_BIND | MS_REC, NULL);
    xmount(NULL, ro[i], NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  }
}

/* Attaches the scratch image to a free loop device that detaches itself (LO_FLAGS_AUTOCLEAR) once its
 * last user, the mount in this namespace, goes away. Returns the device's path; *fd stays open until
 * the mount holds the device, else autoclear would fire at once. `host` is where the host root is: ""
 * before the pivot (--overlay-root), HOST after it. */
static const char *attach_loop(int *fd, const char *host) {
  static char path[64];
  step("loop");
  snprintf(path, sizeof path, "%s/dev/loop-control", host);
  int ctl = open_host(path, O_RDWR);
  for (int attempt = 0; attempt < 64; attempt++) {
    int nr = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (nr < 0) die("LOOP_CTL_GET_FREE");
    snprintf(path, sizeof path, "%s/dev/loop%d", host, nr);
    int lfd = open(path, O_RDWR | O_CLOEXEC);
    if (lfd < 0 && (errno == ENOENT || errno == ENXIO)) continue; /* removed under us: try another */
    if (lfd < 0) die("open %s", path);
    struct loop_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.fd = (unsigned)scratch_fd;
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%s", o.scratch_file);
    int r = ioctl(lfd, LOOP_CONFIGURE, &cfg);
    if (r < 0 && (errno == EINVAL || errno == ENOTTY)) { /* kernel < 5.8: the two-step way */
      r = ioctl(lfd, LOOP_SET_FD, scratch_fd);
      if (r == 0 && ioctl(lfd, LOOP_SET_STATUS64, &cfg.info) < 0) {
        int e = errno;
        ioctl(lfd, LOOP_CLR_FD, 0);
        errno = e;
        die("LOOP_SET_STATUS64 %s", path);
      }
    }
    if (r == 0) {
      shared->loop_nr = nr;
      close(ctl);
      *fd = lfd;
      return path;
    }
    int e = errno;
    close(lfd);
    errno = e;
    if (errno != EBUSY) die("configure %s", path); /* EBUSY: someone else took it first; retry */
  }
  die_msg("no free loop device after 64 attempts");
}

/* ext4 options for a scratch volume, which is thrown away with the job: no cache flush is ever sent to
 * the device (with a loop device each flush is an fsync of the image file on the host's disk, and the
 * unmount as the job's namespace goes sends one). */
#define SCRATCH_EXT4 "nobarrier"
#define SCRATCH_FLAGS (MS_NOSUID | MS_NODEV)

/* Mounts the scratch volume at `at`; `host` as for attach_loop. */
static void mount_scratch(const char *at, const char *host) {
  step("scratch");
  if (o.scratch_file) {
    int lfd;
    const char *dev = attach_loop(&lfd, host);
    step("scratch");
    xmount(dev, at, "ext4", SCRATCH_FLAGS, SCRATCH_EXT4);
    close(lfd);
  } else if (o.scratch_dev) {
    xmount(fd_path(scratch_fd, NULL), at, "ext4", SCRATCH_FLAGS, SCRATCH_EXT4);
  } else if (o.scratch_slot) {
    xmount(fd_path(scratch_fd, NULL), at, NULL, MS_BIND, NULL);
    xmount(NULL, at, NULL, MS_REMOUNT | MS_BIND | SCRATCH_FLAGS, NULL);
  } else {
    char data[64];
    snprintf(data, sizeof data, "size=%s,mode=1777", o.scratch_tmpfs ? o.scratch_tmpfs : "67108864");
    xmount("kiln-scratch", at, "tmpfs", MS_NOSUID | MS_NODEV, data);
  }
}

/* --overlay-root, before the pivot (the host root is still /, the skeleton tmpfs covers the host's /tmp).
 * The scratch goes to a staging point in the skeleton, and the new root is an overlay whose lower layer is
 * --root (overlayfs never writes to it) and whose upper and work dirs are on the scratch: writes to / count
 * against the scratch size and vanish with it. The scratch's `tmp` dir becomes /tmp later; once the host
 * root (and the skeleton with it) is detached, the scratch is reachable only through the overlay and /tmp.
 * Returns where the overlay is mounted, for pivot_root. */
static const char *mount_overlay(void) {
  static const char *const dirs[] = {STAGE "/upper", STAGE "/work", STAGE "/tmp"};
  xmkdir(STAGE, 0700);
  mount_scratch(STAGE, "");
  /* A volume that already holds these would carry an earlier job's root changes: the scratch must be fresh.
   * mkdir also never follows a symlink planted in their place. */
  for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++)
    if (mkdir(dirs[i], 0755) < 0) die("--overlay-root needs a fresh scratch: mkdir %s", dirs[i]);
  /* The merged / takes its owner and mode from the upper dir: give it those of --root's top. */
  struct stat st;
  if (fstat(root_fd, &st) < 0 || chown(dirs[0], st.st_uid, st.st_gid) < 0 ||
      chmod(dirs[0], st.st_mode & 07777) < 0)
    die("copy the mode of %s", o.root);
  step("mount-root");
  xmkdir(NEW_ROOT, 0755);
  /* lowerdir through our fd, as --root may lie under the host's /tmp, now covered by the skeleton.
   * volatile: no syncs reach the scratch, which is thrown away with the job anyway (dpkg fsyncs a lot). */
  char data[256];
  snprintf(data, sizeof data, "lowerdir=/proc/self/fd/%d,upperdir=%s,workdir=%s,volatile", root_fd, dirs[0],
           dirs[1]);
  xmount("kiln-root", NEW_ROOT, "overlay", MS_NOSUID | MS_NODEV, data);
  return NEW_ROOT;
}

/* --rw-root (template builds), before the pivot: the new root is --root itself, bound writable, so what
 * the build writes lands in the tree. nodev: a device node the build manages to leave in the tree opens
 * nothing, here or later; nosuid: no set-uid binary of the tree gains anything while it is being built.
 * Returns where the tree is bound, for pivot_root. */
static const char *mount_rw_root(void) {
  step("mount-root");
  xmkdir(NEW_ROOT, 0755);
  xmount(fd_path(root_fd, NULL), NEW_ROOT, NULL, MS_BIND, NULL);
  xmount(NULL, NEW_ROOT, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, NULL);
  return NEW_ROOT;
}

/* /tmp: the job's only writable space (plus /dev/shm, and / itself with --overlay-root), with HOME and the
 * artifact dir inside. */
static void make_scratch_dirs(void);
static void setup_scratch(void) {
  step("scratch");
  xmkdir("/tmp", 01777);
  if (g_prebuild) return; /* the mount point only */
  if (o.overlay_root) xmount(HOST STAGE "/tmp", "/tmp", NULL, MS_BIND, NULL); /* keeps nosuid,nodev */
  else mount_scratch("/tmp", HOST);
  make_scratch_dirs();
}

static void make_scratch_dirs(void) {
  static const struct { const char *path; mode_t mode; } dirs[] = {{"/tmp/home", 0700}, {"/tmp/out", 0755}};
  if (chmod("/tmp", 01777) < 0) die("chmod /tmp");
  for (size_t i = 0; i < 2; i++) {
    xmkdir(dirs[i].path, dirs[i].mode);
    /* Through an O_NOFOLLOW fd: a reused scratch volume may hold a symlink planted by an earlier job, and
     * the host root is still reachable at this point, so a plain chown could hand a host file over. */
    int fd = open(dirs[i].path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) die("open %s", dirs[i].path);
    if (fchown(fd, o.uid, o.gid) < 0 || fchmod(fd, dirs[i].mode) < 0) die("chown %s", dirs[i].path);
    close(fd);
  }
}


/* A job's own part of /dev, under `at` ("" once pivoted, the skeleton's path before): a private devpts
 * instance and a shm tmpfs, which no other job may share. */
static void setup_dev_own(const char *at) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/dev/pts", at);
  xmount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5");
  snprintf(p, sizeof p, "%s/dev/shm", at);
  xmount("kiln-shm", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
}

/* /dev: a small tmpfs with just the harmless nodes bound from the host, a private devpts and a shm. */
static void setup_dev(void) {
  static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
  static const char *const links[][2] = {
      {"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"},
      {"/proc/self/fd/2", "/dev/stderr"}, {"pts/ptmx", "/dev/ptmx"}};
  char src[64], dst[PATH_MAX];
  step("dev");
  xmkdir("/dev", 0755);
  xmount("kiln-dev", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=4096");
  for (size_t i = 0; i < sizeof nodes / sizeof *nodes; i++) {
    snprintf(src, sizeof src, HOST "/dev/%s", nodes[i]);
    snprintf(dst, sizeof dst, "/dev/%s", nodes[i]);
    bind_file(src, dst, false);
  }
  for (int i = 0; i < o.ndevs; i++) { /* --dev: same path, parent dirs created (e.g. /dev/dri/...) */
    snprintf(dst, sizeof dst, "%s", o.devs[i]);
    for (char *s = dst + 5; (s = strchr(s, '/')); *s++ = '/') {
      *s = 0;
      xmkdir(dst, 0755);
    }
    bind_file(fd_path(dev_fds[i], NULL), dst, false);
  }
  xmkdir("/dev/pts", 0755);
  xmkdir("/dev/shm", 01777);
  if (!g_prebuild) setup_dev_own("");
  for (size_t i = 0; i < sizeof links / sizeof *links; i++)
    if (symlink(links[i][0], links[i][1]) < 0) die("symlink %s", links[i][1]);
}

/* The job's own part of /kiln, under `at` as for setup_dev_own. --templates: stays writable, for root
 * only, so --inject can make mount points in it later. */
static void setup_kiln_own(const char *at) {
  char p[PATH_MAX];
  if (o.templates) {
    snprintf(p, sizeof p, "%s" TEMPLATES, at);
    xmkdir(p, 0755);
    xmount("kiln-templates", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k");
  }
  step("api");
  snprintf(p, sizeof p, "%s" API_SOCK, at);
  if (api_fd >= 0) bind_file(fd_path(api_fd, NULL), p, true);
}

/* /kiln: the Kiln binary, the API socket the forwarder in PID 1 connects to, and --templates. */
static void setup_kiln(void) {
  step("kiln");
  xmkdir("/kiln", 0755);
  /* With --overlay-root, / is writable and --root's own /kiln must not show: a tmpfs of ours, made
   * read-only at the end, as the skeleton is. */
  if (o.overlay_root || o.rw_root) xmount("kiln-dir", "/kiln", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k");
  if (kiln_bin_fd >= 0) {
    xmkdir("/kiln/bin", 0755);
    bind_file(fd_path(kiln_bin_fd, NULL), "/kiln/bin/kiln", true);
  }
  if (g_prebuild) { /* mount points for setup_kiln_own */
    xmkdir(TEMPLATES, 0755);
    touch(API_SOCK, 0644);
  } else {
    setup_kiln_own("");
  }
}

/* --bind / --ro-bind: a top-level DST is created in the skeleton, a deeper one must already exist. */
static void setup_binds(void) {
  step("bind");
  for (int i = 0; i < o.nbinds; i++) {
    struct bind_opt *b = &o.binds[i];
    struct stat src, dst;
    if (fstat(b->fd, &src) < 0) die("stat %s", b->src);
    if (lstat(b->dst, &dst) < 0) {
      if (errno != ENOENT || strchr(b->dst + 1, '/')) die("%s", b->dst);
      if (S_ISDIR(src.st_mode)) xmkdir(b->dst, 0755);
      else touch(b->dst, 0644);
    }
    xmount(fd_path(b->fd, NULL), b->dst, NULL, MS_BIND | MS_REC, NULL);
    if (b->ro) make_ro(&b->dst, 1);
  }
}

/* --mask: hide a path of the job's root behind an empty read-only tmpfs or /dev/null. */
static void setup_masks(void) {
  step("mask");
  for (int i = 0; i < o.nmasks; i++) {
    struct stat st;
    if (stat(o.masks[i], &st) < 0) {
      if (errno == ENOENT || errno == ENOTDIR) continue;
      die("stat %s", o.masks[i]);
    }
    if (S_ISDIR(st.st_mode)) {
      xmount("kiln-mask", o.masks[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0755");
    } else {
      xmount("/dev/null", o.masks[i], NULL, MS_BIND, NULL);
      xmount(NULL, o.masks[i], NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }
  }
}

/*
 * The whole mount set-up. The skeleton tmpfs is mounted over the host's /tmp, which exists on every host,
 * and we pivot into it at once, parking the host root at /.kiln-host. Mounting over /tmp is harmless: the
 * namespace is private, and every host object we need was opened as an fd beforehand, so a --root or
 * bind source that lives under the host's /tmp is still reached. Working inside the new root from the
 * start also keeps all the paths (and mountinfo) simple. At the end the host root is detached, its
 * mount point removed, and /dev and the skeleton itself made read-only.
 */
static void setup_mounts(void) {
  step("mount-root");
  /* Nothing we mount may propagate back to the host, and host mounts must not propagate in. */
  xmount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
  xmount("kiln-root", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m,nr_inodes=65536");
  const char *new_root = o.overlay_root ? mount_overlay() : o.rw_root ? mount_rw_root() : "/tmp";
  step("pivot_root");
  char old[PATH_MAX];
  snprintf(old, sizeof old, "%s" HOST, new_root);
  xmkdir(old, 0700);
  if (syscall(SYS_pivot_root, new_root, old) < 0) die("pivot_root");
  if (chdir("/") < 0) die("chdir /");
  setup_proc(); /* first: fd_path() and make_ro() need our own /proc */
  if (!o.overlay_root && !o.rw_root) {
    populate_root();
  } else { /* --root's own /sys (and anything in it) stays hidden, as with the skeleton */
    step("mount-root");
    xmkdir("/sys", 0555);
    xmount("kiln-sys", "/sys", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555");
  }
  setup_scratch();
  setup_dev();
  setup_kiln();
  setup_binds();
  setup_masks(); /* last, so a mask can hide something inside a bind */
  step("pivot_root");
  if (umount2(HOST, MNT_DETACH) < 0) die("detach the host root");
  if (rmdir(HOST) < 0) die("rmdir " HOST);
  step("mount-root");
  xmount(NULL, "/dev", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL);
  /* the skeleton; with --overlay-root, / stays writable and only our /kiln is sealed */
  const char *seal = o.overlay_root || o.rw_root ? "/kiln" : "/";
  xmount(NULL, seal, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL);
}

/*
 * --slot-root DIR: the job's root is the skeleton its slot keeper built once (build_skeleton), read-only,
 * at DIR in the keeper's mount namespace, of which we hold a private copy. Only what is the job's own is
 * mounted here, on the skeleton's mount points, before we pivot into it: the scratch at /tmp, a devpts and
 * a shm in /dev, the templates tmpfs and the API socket in /kiln; then /proc for our pid namespace.
 * pivot_root(".", ".") stacks the old root on the skeleton, and detaching it leaves nothing of the host
 * reachable (no mount point for it needed in the read-only skeleton).
 */
static void setup_mounts_on_skeleton(void) {
  const char *sk = o.slot_root;
  char p[PATH_MAX];
  step("mount-root");
  /* Nothing we mount may propagate back, and nothing of the keeper's or the host's may propagate in. */
  xmount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
  struct statfs sf;
  if (statfs(sk, &sf) < 0) die("%s", sk);
  if (sf.f_type != TMPFS_MAGIC || !(sf.f_flags & ST_RDONLY))
    die_msg("%s is not the slot's skeleton (is its keeper running?)", sk);
  snprintf(p, sizeof p, "%s/tmp", sk);
  mount_scratch(p, "");
  step("dev");
  setup_dev_own(sk);
  step("kiln");
  setup_kiln_own(sk);
  step("pivot_root");
  if (chdir(sk) < 0) die("chdir %s", sk);
  if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot_root");
  if (umount2(".", MNT_DETACH) < 0) die("detach the host root");
  if (chdir("/") < 0) die("chdir /");
  setup_proc();
  step("scratch");
  make_scratch_dirs();
}

/*
 * The slot keeper's --skeleton DIR: the root every host-root job of the slot starts from, built once the way
 * setup_mounts builds it for a single job (the host's entries bound read-only, masks, /dev's nodes, the
 * kiln binary), on a tmpfs at DIR in the keeper's namespace, then sealed read-only. A child does the
 * work chrooted into DIR, with the host root bound at HOST for the duration, so every path the job-root code
 * uses means what it means after a job's pivot. DIR (like the volume's mount) is unbindable: the recursive
 * binds of host directories skip it, so the skeleton never contains itself, nor a copy of the host root.
 * The skeleton's mounts are then made private: the host's later mounts do not reach it (a job sees the host
 * as it was when its slot's keeper started), and none arrives writable inside the read-only tree.
 */
static void build_skeleton(const char *at) {
  step("skeleton");
  xmount("kiln-root", at, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m,nr_inodes=65536");
  xmount(NULL, at, NULL, MS_UNBINDABLE, NULL);
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    g_prebuild = true;
    o.root = "/";
    open_host_objects();
    char host[PATH_MAX];
    snprintf(host, sizeof host, "%s" HOST, at);
    xmkdir(host, 0700);
    xmount("/", host, NULL, MS_BIND | MS_REC, NULL);
    if (chroot(at) < 0 || chdir("/") < 0) die("chroot %s", at);
    setup_proc(); /* for fd_path() and make_ro(); unmounted below, each job mounts its own */
    populate_root();
    setup_scratch();
    setup_dev();
    setup_kiln();
    setup_masks();
    step("skeleton");
    if (umount2("/proc", MNT_DETACH) < 0) die("umount /proc");
    if (umount2(HOST, MNT_DETACH) < 0) die("detach the host root");
    if (rmdir(HOST) < 0) die("rmdir " HOST);
    xmount(NULL, "/dev", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL);
    xmount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL);
    _exit(0);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) die("waitpid");
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) _exit(1); /* the child wrote its error line */
  xmount(NULL, at, NULL, MS_REC | MS_PRIVATE, NULL);
  xmount(NULL, at, NULL, MS_UNBINDABLE, NULL);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Network: loopback only, plus the API forwarder                                                          */

static void bring_up_lo(void) {
  step("net");
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("socket");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS lo");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS lo");
  close(s);
}

static int api_listen(void) {
  step("api");
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.api_port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("socket");
  if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) die("bind 127.0.0.1:%d", o.api_port);
  if (listen(l, 511) < 0) die("listen");
  return l;
}

/* One forwarded connection: fd[0] is the job's TCP client, fd[1] the API socket. buf[i] holds bytes read
 * from fd[i] not yet written to the other side; eof[i] says fd[i] has sent its EOF, which is passed on
 * as shutdown(SHUT_WR) once buf[i] is drained, so half-closed connections work. broken says a side
 * failed (reset, error): both are then reset rather than closed, so the job's client never takes a cut
 * stream for a complete one. */
struct conn {
  int fd[2];
  bool eof[2], shut[2], broken;
  size_t off[2], len[2];
  char buf[2][CONN_BUF];
};
static struct conn *conns[MAX_CONNS];
static int nconns;

static void conn_drop(int i) {
  /* Linger 0 makes close() send RST instead of FIN (socket(7)). Only the job's TCP side can be reset:
   * AF_UNIX has no RST, and the proxy learns of the end from its own socket closing. */
  struct linger reset = {.l_onoff = 1, .l_linger = 0};
  if (conns[i]->broken) setsockopt(conns[i]->fd[0], SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
  close(conns[i]->fd[0]);
  close(conns[i]->fd[1]);
  free(conns[i]);
  conns[i] = conns[--nconns];
}

static void api_accept(int l) {
  struct sockaddr_un ua = {.sun_family = AF_UNIX};
  snprintf(ua.sun_path, sizeof ua.sun_path, "%s", API_SOCK);
  while (nconns < MAX_CONNS) {
    int c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), one = 1;
    if (c < 0) return; /* EAGAIN, or a connection that died in the backlog */
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* we relay whole writes: no Nagle delay */
    int u = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct conn *k = u < 0 ? NULL : calloc(1, sizeof *k);
    /* A non-blocking AF_UNIX connect completes at once or fails (EAGAIN when the proxy's backlog is full):
     * on failure the client just sees its connection closed. */
    if (!k || connect(u, (struct sockaddr *)&ua, sizeof ua) < 0) {
      free(k);
      if (u >= 0) close(u);
      close(c);
      continue;
    }
    k->fd[0] = c;
    k->fd[1] = u;
    conns[nconns++] = k;
  }
}

static bool conn_broken(struct conn *k) {
  k->broken = true;
  return false;
}

/* Has the peer of fd closed its socket outright, not just shut its write side? poll(2) reports POLLHUP
 * once both directions are shut, whatever events were asked for. */
static bool conn_peer_closed(int fd) {
  struct pollfd p = {.fd = fd};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
}

/* Moves what can be moved without blocking. Returns false when the connection is finished or broken. */
static bool conn_pump(struct conn *k, const short rev[2]) {
  for (int i = 0; i < 2; i++) {
    if (rev[i] & POLLERR) return conn_broken(k);
    if ((rev[i] & (POLLIN | POLLHUP)) && !k->eof[i] && k->len[i] == 0) {
      ssize_t n = read(k->fd[i], k->buf[i], CONN_BUF);
      if (n > 0) k->off[i] = 0, k->len[i] = (size_t)n;
      else if (n == 0) {
        k->eof[i] = true;
        /* The proxy ends a stream with shutdown(SHUT_WR) and keeps its socket until we end ours; one it
         * closed outright before that is one it abandoned (its upstream failed), so the job's client
         * must see a reset, not an EOF that makes a cut download look complete. */
        if (i == 1 && !k->shut[1] && conn_peer_closed(k->fd[1])) return conn_broken(k);
      } else if (errno != EAGAIN && errno != EINTR)
        return conn_broken(k);
    }
  }
  for (int i = 0; i < 2; i++) {
    int to = k->fd[!i];
    while (k->off[i] < k->len[i]) {
      ssize_t n = send(to, k->buf[i] + k->off[i], k->len[i] - k->off[i], MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      if (n < 0) return conn_broken(k);
      k->off[i] += (size_t)n;
    }
    if (k->off[i] == k->len[i]) k->off[i] = k->len[i] = 0;
    if (k->eof[i] && k->len[i] == 0 && !k->shut[!i]) {
      shutdown(to, SHUT_WR);
      k->shut[!i] = true;
    }
  }
  return !(k->eof[0] && k->eof[1] && k->len[0] == 0 && k->len[1] == 0);
}

/* What to poll fd[i] for; 0 means "leave it out", which also stops a hung-up socket we are not ready to
 * read from making poll() spin. */
static short conn_events(const struct conn *k, int i) {
  short ev = 0;
  if (!k->eof[i] && k->len[i] == 0) ev |= POLLIN;
  if (k->len[!i] > 0) ev |= POLLOUT;
  return ev;
}

/* ------------------------------------------------------------------------------------------------------ */
/* The job process                                                                                         */

static int cap_last = 40; /* read from /proc/sys/kernel/cap_last_cap before the pivot */
static mode_t job_umask;

/* Classic BPF, checked top to bottom. Foreign architectures and x32 are killed (their syscall numbers
 * mean something else); the listed calls get EPERM; everything else is allowed. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG_LO(n) (offsetof(struct seccomp_data, args[n])) /* low 32 bits: the kernel truncates these args */
#else
#define ARG_LO(n) (offsetof(struct seccomp_data, args[n]) + 4)
#endif
#define LD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
#define RET(v) BPF_STMT(BPF_RET | BPF_K, (v))
#define DENY(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), RET(SECCOMP_RET_ERRNO | EPERM)
#define CLONE_NEW_ANY 0x7E020000u /* NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET; 0x80 is CSIGNAL */
#ifndef __NR_open_tree_attr
#define __NR_open_tree_attr 467
#endif
#if defined(__x86_64__)
#define MY_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define MY_ARCH AUDIT_ARCH_AARCH64
#else
#error "kiln-sandbox: unsupported architecture"
#endif

static void install_seccomp(void) {
  struct sock_filter f[] = {
      LD(offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MY_ARCH, 1, 0),
      RET(SECCOMP_RET_KILL_PROCESS),
      LD(offsetof(struct seccomp_data, nr)),
#ifdef __x86_64__
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000 /* __X32_SYSCALL_BIT */, 0, 1),
      RET(SECCOMP_RET_KILL_PROCESS),
#endif
      /* clone: refuse any namespace flag, allow threads and plain forks */
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 4),
      LD(ARG_LO(0)),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEW_ANY, 0, 1),
      RET(SECCOMP_RET_ERRNO | EPERM),
      RET(SECCOMP_RET_ALLOW),
      /* clone3 passes its flags in memory, which BPF cannot read: ENOSYS makes libc fall back to clone */
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
      RET(SECCOMP_RET_ERRNO | ENOSYS),
      /* ioctl: no typing into the terminal's input queue */
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 5),
      LD(ARG_LO(1)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCLINUX, 1, 0),
      RET(SECCOMP_RET_ALLOW),
      RET(SECCOMP_RET_ERRNO | EPERM),
      /* personality: only PER_LINUX (0) and the query value 0xffffffff */
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_personality, 0, 5),
      LD(ARG_LO(0)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0xffffffffu, 1, 0),
      RET(SECCOMP_RET_ERRNO | EPERM),
      RET(SECCOMP_RET_ALLOW),
      /* namespaces, mounts, keyrings, kernel attack surface nobody's build needs */
      DENY(__NR_unshare), DENY(__NR_setns), DENY(__NR_mount), DENY(__NR_umount2),
#ifdef __NR_umount
      DENY(__NR_umount),
#endif
      DENY(__NR_pivot_root), DENY(__NR_chroot), DENY(__NR_move_mount), DENY(__NR_open_tree),
      DENY(__NR_open_tree_attr), DENY(__NR_fsopen), DENY(__NR_fsconfig), DENY(__NR_fsmount),
      DENY(__NR_fspick), DENY(__NR_mount_setattr), DENY(__NR_keyctl), DENY(__NR_add_key),
      DENY(__NR_request_key), DENY(__NR_bpf), DENY(__NR_perf_event_open), DENY(__NR_userfaultfd),
      DENY(__NR_kexec_load), DENY(__NR_kexec_file_load), DENY(__NR_init_module), DENY(__NR_finit_module),
      DENY(__NR_delete_module), DENY(__NR_reboot), DENY(__NR_swapon), DENY(__NR_swapoff), DENY(__NR_acct),
      DENY(__NR_quotactl), DENY(__NR_quotactl_fd), DENY(__NR_open_by_handle_at),
      DENY(__NR_name_to_handle_at),
      /* io_uring: a second syscall interface that seccomp cannot see into, and a steady source of
       * kernel exploits; Docker's default profile denies it too. Builds fall back to plain I/O. */
      DENY(__NR_io_uring_setup), DENY(__NR_io_uring_enter), DENY(__NR_io_uring_register),
      /* the rest of what Docker's default profile denies to a container without capabilities: the
       * kernel log, filesystem-wide watches, the clock, port I/O, legacy calls nobody's build makes */
      DENY(__NR_fanotify_init), DENY(__NR_syslog), DENY(__NR_settimeofday), DENY(__NR_clock_settime),
      DENY(__NR_clock_adjtime), DENY(__NR_vhangup),
#ifdef __NR_iopl
      DENY(__NR_iopl), DENY(__NR_ioperm),
#endif
#ifdef __NR_ustat
      DENY(__NR_ustat), DENY(__NR_sysfs), DENY(__NR_uselib), DENY(__NR__sysctl),
#endif
#ifdef __NR_lookup_dcookie
      DENY(__NR_lookup_dcookie),
#endif
      RET(SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = (unsigned short)(sizeof f / sizeof *f), .filter = f};
  step("seccomp");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("PR_SET_NO_NEW_PRIVS");
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) die("PR_SET_SECCOMP");
}

/*
 * --build: PROGRAM stays uid 0 (a template build must own files as root, set set-uid bits, run
 * maintainer scripts that switch users) but keeps only these capabilities, in every set including the
 * bounding set, so neither it nor anything it execs can get the others back:
 *   CHOWN         dpkg and tar give files their owners
 *   DAC_OVERRIDE  dpkg writes into directories and files whose modes would stop a plain owner
 *   FOWNER        chmod and utime on files of other owners (tar -p, dpkg)
 *   FSETID        keep set-uid/set-gid bits when dpkg writes and chowns such binaries
 *   KILL          apt and maintainer scripts signal helpers that switched to another uid
 *   SETUID/SETGID apt's download methods drop to _apt; adduser, su, runuser in maintainer scripts
 *   SETFCAP       postinsts that setcap a binary (a job runs with no bounding set and NoNewPrivs, so
 *                 file capabilities in a template never give a job anything)
 * Left out on purpose: SYS_ADMIN (mount, namespaces), MKNOD (device nodes would land in the tree; the
 * tree is bound nodev anyway and debootstrap copes without), SYS_CHROOT (debootstrap's second stage runs
 * inside the tree and needs none), NET_* (the network is loopback only), SYS_PTRACE, SYS_MODULE, and the
 * rest. NoNewPrivs and the seccomp filter come on top, as for jobs.
 */
#define BUILD_CAPS                                                                                      \
  ((1ULL << CAP_CHOWN) | (1ULL << CAP_DAC_OVERRIDE) | (1ULL << CAP_FOWNER) | (1ULL << CAP_FSETID) |    \
   (1ULL << CAP_KILL) | (1ULL << CAP_SETGID) | (1ULL << CAP_SETUID) | (1ULL << CAP_SETFCAP))

static void __attribute__((noreturn)) exec_builder(char *const *argv, const char *dir, char *const *envp) {
  step("caps");
  for (int c = 0; c <= cap_last; c++)
    if (!(BUILD_CAPS & (1ULL << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
      die("PR_CAPBSET_DROP %d", c);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) die("clear ambient");
  step("setuid");
  if (setgroups(0, NULL) < 0) die("setgroups");
  step("caps");
  /* Root's exec recomputes permitted as the bounding set: with permitted already equal to it, nothing is
   * gained, so NoNewPrivs takes nothing away. */
  struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof d);
  d[0].effective = d[0].permitted = (uint32_t)BUILD_CAPS;
  d[1].effective = d[1].permitted = (uint32_t)(BUILD_CAPS >> 32);
  if (syscall(SYS_capset, &h, d) < 0) die("capset");
  memset(d, 0, sizeof d);
  if (syscall(SYS_capget, &h, d) < 0) die("capget");
  if (d[0].permitted != (uint32_t)BUILD_CAPS || d[1].permitted != (uint32_t)(BUILD_CAPS >> 32))
    die_msg("capabilities did not stick");
  install_seccomp();
  step("chdir");
  if (chdir(dir) < 0) die("%s", dir);
  step("exec");
  if (envp) execve(argv[0], argv, envp);
  else execvp(argv[0], argv);
  die("%s", argv[0]);
}

/* --setup: what the setup phase runs (see init_loop), made by PID 1 before it starts it. */
static bool g_setup_phase;
static char *setup_argv[5], **setup_envp;

/* The setup's environment: the job's, with a root's HOME and a PATH that has the sbin directories dpkg
 * looks for (ldconfig, start-stop-daemon). */
static void prepare_setup(void) {
  extern char **environ;
  static char home[] = "HOME=/root";
  static char path[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/kiln/bin";
  size_t n = 0, k = 0;
  while (environ[n]) n++;
  setup_envp = calloc(n + 3, sizeof *setup_envp);
  if (!setup_envp) die_msg("out of memory");
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "HOME=", 5) && strncmp(environ[i], "PATH=", 5)) setup_envp[k++] = environ[i];
  setup_envp[k++] = home;
  setup_envp[k++] = path;
  static char sh[] = "/bin/sh", flags[] = "-ec", name[] = "kiln-setup";
  setup_argv[0] = sh;
  setup_argv[1] = flags;
  setup_argv[2] = (char *)o.setup;
  setup_argv[3] = name;
  setup_argv[4] = NULL;
}

/* Runs in the child PID 1 starts; never returns. Errors go to PID 1 through err_fd (closed by exec). It
 * shares PID 1's memory until exec (see init_loop): it may change only what PID 1 restores afterwards
 * (g_err_pipe, g_step) and must not allocate. */
static void __attribute__((noreturn)) job_main(int err_fd) {
  g_err_pipe = err_fd;
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL); /* PID 1 blocks signals for its signalfd: undo that */
  umask(job_umask);
  step("setsid");
  /* Its own session and process group: PID 1 signals the group, and the job has no controlling tty
   * unless its stdin is a terminal, which then becomes its own (stealing nothing: arg 0). */
  if (setsid() < 0) die("setsid");
  if (isatty(0)) ioctl(0, TIOCSCTTY, 0);
  /* Only 0, 1 and 2 reach PROGRAM: everything else (status and hold fds, sockets, err_fd) closes on exec. */
  if (syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) < 0)
    for (int fd = 3; fd < 65536; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
  if (o.build) exec_builder(o.argv, o.chdir, NULL);
  if (g_setup_phase) exec_builder(setup_argv, "/", setup_envp);
  step("caps");
  /* The bounding set can only be shrunk while we still hold CAP_SETPCAP, i.e. before dropping root. */
  for (int c = 0; c <= cap_last; c++)
    if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL) die("PR_CAPBSET_DROP %d", c);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) die("clear ambient");
  step("setuid");
  if (setgroups((size_t)o.ngroups, o.groups) < 0) die("setgroups");
  if (setresgid(o.gid, o.gid, o.gid) < 0) die("setresgid %u", o.gid);
  if (setresuid(o.uid, o.uid, o.uid) < 0) die("setresuid %u", o.uid);
  uid_t r, e, s;
  gid_t rg, eg, sg;
  if (getresuid(&r, &e, &s) < 0 || r != o.uid || e != o.uid || s != o.uid) die_msg("uid did not stick");
  if (getresgid(&rg, &eg, &sg) < 0 || rg != o.gid || eg != o.gid || sg != o.gid) die_msg("gid did not stick");
  step("caps");
  /* setresuid away from 0 already cleared permitted/effective; make it explicit and check. */
  struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof d);
  if (syscall(SYS_capset, &h, d) < 0) die("capset");
  if (syscall(SYS_capget, &h, d) < 0) die("capget");
  for (int i = 0; i < 2; i++)
    if (d[i].effective || d[i].permitted || d[i].inheritable) die_msg("capabilities survived");
  install_seccomp(); /* last privileged step: it also forbids what came before */
  step("chdir");
  if (chdir(o.chdir) < 0) die("%s", o.chdir);
  step("exec");
  execvp(o.argv[0], o.argv);
  die("%s", o.argv[0]);
}

/* clone's entry point for the job; PID 1's end of the error pipe closes with the job's exec. */
static int job_entry(void *err_fd) { job_main(*(int *)err_fd); }

/* ------------------------------------------------------------------------------------------------------ */
/* PID 1: init of the job's pid namespace                                                                   */

static const int fwd_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

/* Once the job is forked, PID 1 keeps uid 0 but only CAP_KILL, in every set and in the bounding set: it
 * signals the job's process group and, at the end, every process of the namespace, all of another uid.
 * Nothing else it does needs a capability: poll, waitpid, relay bytes between sockets, connect to the
 * root-owned API socket, write the status line. So a bug in the relay would hand a job nothing more.
 * NoNewPrivs and the bounding set keep an exec from winning anything back. */
static void drop_pid1_caps(void) {
  step("caps");
  for (int c = 0; c <= cap_last; c++)
    if (c != CAP_KILL && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL) die("PR_CAPBSET_DROP %d", c);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) die("clear ambient");
  struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof d);
  d[0].effective = d[0].permitted = 1u << CAP_KILL;
  if (syscall(SYS_capset, &h, d) < 0) die("capset");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("PR_SET_NO_NEW_PRIVS");
  memset(d, 0, sizeof d);
  if (syscall(SYS_capget, &h, d) < 0) die("capget");
  if (d[0].permitted != 1u << CAP_KILL || d[1].permitted || d[0].inheritable || d[1].inheritable)
    die_msg("PID 1 kept capabilities other than CAP_KILL");
  step("init");
}

/* A line in the job's log (our stdout is the job's), between the setup's output and the job's. */
static void log_marker(const char *text) { write_all(1, text, strlen(text)); }

/*
 * Starts the job's program (or, in the setup phase, the setup) and returns its pid once it has exec'd;
 * err is empty then, else it holds the "STEP: MESSAGE" the child reported before exiting.
 *
 * The child shares our memory until its exec (as posix_spawn does): copying PID 1's address space for a
 * process that replaces it at once was the most expensive step of a launch on hosts where page tables
 * are costly (VMs). We are suspended meanwhile, so nothing runs concurrently on the shared memory; the
 * child runs on its own stack, and the globals it sets for itself are restored below.
 */
static pid_t spawn(char *err, size_t errsz) {
  int ep[2];
  if (pipe2(ep, O_CLOEXEC) < 0) die("pipe");
  step("fork");
  /* Room for execvp's fallback for scripts without "#!", which copies argv onto the stack, above a guard
   * page: an overflow faults instead of writing into our memory. */
  size_t argc = 0, page = (size_t)sysconf(_SC_PAGESIZE);
  while (o.argv[argc]) argc++;
  size_t size = (((256 * 1024 + (argc + 3) * sizeof(char *)) + page - 1) / page + 1) * page;
  char *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED || mprotect(stack, page, PROT_NONE) < 0) die("job stack");
  pid_t pid = clone(job_entry, stack + size, CLONE_VM | CLONE_VFORK | SIGCHLD, &ep[1]);
  g_err_pipe = -1;
  g_step = "fork";
  if (pid < 0) die("fork");
  munmap(stack, size);
  close(ep[1]);
  /* The child's exec closes the pipe; anything read before EOF is its error report. */
  size_t elen = 0;
  for (ssize_t n; elen < errsz - 1 && (n = read(ep[0], err + elen, errsz - 1 - elen)) != 0;)
    if (n > 0) elen += (size_t)n;
    else if (errno != EINTR) break;
  close(ep[0]);
  err[elen] = 0;
  return pid;
}

static void __attribute__((noreturn)) init_loop(int listener) {
  step("init");
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  for (size_t i = 0; i < sizeof fwd_signals / sizeof *fwd_signals; i++) sigaddset(&set, fwd_signals[i]);
  /* The signals are already blocked (since before the fork in main): a signalfd lets the poll loop handle
   * them, so nothing runs in signal handlers and nothing is lost in between. */
  int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sfd < 0) die("signalfd");
  char err[1024];
  /* --setup first: as root with the build capabilities, on the same overlay, with the API forwarder (the
   * job's egress proxy) running in the loop below; the job's command starts only once it exited 0 and
   * every process it left was killed. */
  bool in_setup = o.setup != NULL;
  pid_t job;
  if (in_setup) {
    prepare_setup();
    log_marker("--- kiln: setup ---\n");
    g_setup_phase = true;
    job = spawn(err, sizeof err);
    g_setup_phase = false;
    if (!err[0]) status_line("setup %d", host_pid);
  } else {
    job = spawn(err, sizeof err);
    drop_pid1_caps(); /* the job has its own copy of our credentials: this changes only ours */
    if (!err[0]) status_line("ready %d", host_pid);
  }

  int job_status = 0;
  bool job_done = err[0] != 0, setup_failed = false;
  while (!job_done) {
    struct pollfd p[2 + 2 * MAX_CONNS];
    int np = 0;
    p[np++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    p[np++] = (struct pollfd){.fd = nconns < MAX_CONNS ? listener : -1, .events = POLLIN};
    for (int i = 0; i < nconns; i++)
      for (int j = 0; j < 2; j++) {
        short ev = conn_events(conns[i], j);
        p[np++] = (struct pollfd){.fd = ev ? conns[i]->fd[j] : -1, .events = ev};
      }
    if (poll(p, (nfds_t)np, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    for (int i = nconns - 1; i >= 0; i--) { /* backwards: conn_drop moves the last one into slot i */
      short rev[2] = {p[2 + 2 * i].revents, p[3 + 2 * i].revents};
      if ((rev[0] || rev[1]) && !conn_pump(conns[i], rev)) conn_drop(i);
    }
    if (p[1].revents) api_accept(listener);
    struct signalfd_siginfo si;
    bool exited = false;
    while (!exited && read(sfd, &si, sizeof si) == sizeof si) {
      if (si.ssi_signo != SIGCHLD) {
        kill(-job, (int)si.ssi_signo); /* to the job's (or the setup's) whole process group */
        continue;
      }
      /* Orphans of the namespace are reparented to us: reap them all, note the job's own status. */
      for (pid_t w; (w = waitpid(-1, &job_status, WNOHANG)) > 0;)
        if (w == job) {
          exited = true;
          break;
        }
    }
    if (!exited) continue;
    if (!in_setup) {
      job_done = true;
      break;
    }
    /* The setup is over: nothing it started may see the job (daemons, setsid, nohup, open connections). */
    in_setup = false;
    step("reap");
    while (nconns > 0) conn_drop(nconns - 1);
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) continue;
    if (!WIFEXITED(job_status) || WEXITSTATUS(job_status) != 0) {
      setup_failed = job_done = true;
      break;
    }
    log_marker("--- kiln: job ---\n");
    job = spawn(err, sizeof err);
    drop_pid1_caps();
    if (err[0]) break;
    status_line("ready %d", host_pid);
  }
  /* The job is over: nothing it started may outlive it (daemons, setsid, nohup). */
  step("reap");
  while (nconns > 0) conn_drop(nconns - 1);
  if (listener >= 0) close(listener);
  kill(-1, SIGKILL);
  while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) continue;
  drop_stdio();
  int code;
  if (err[0] && in_setup) {
    status_line("setup-failed %s", err);
    code = 127;
  } else if (err[0]) {
    status_line("error %s", err);
    code = 127;
  } else if (WIFSIGNALED(job_status)) {
    status_line("%ssignal %d", setup_failed ? "setup-failed " : "", WTERMSIG(job_status));
    code = 128 + WTERMSIG(job_status);
  } else {
    status_line("%sexit %d", setup_failed ? "setup-failed " : "", WEXITSTATUS(job_status));
    code = WEXITSTATUS(job_status);
  }
  shared->final_written = 1;
  step("exit");
  /* --hold-fd: stay alive, so /proc/PID/root/tmp/out can be collected, until the worker closes it. */
  for (char buf[256]; o.hold_fd >= 0;) {
    struct pollfd p = {.fd = o.hold_fd, .events = POLLIN};
    poll(&p, 1, -1);
    ssize_t n = read(o.hold_fd, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
  }
  _exit(code);
}

static void __attribute__((noreturn)) pid1_main(int alive_fd) {
  g_fail_code = 127;
  step("init");
  /* Die with the outer process. The flag is cleared by fork and cannot be checked with getppid() here
   * (our parent is outside the namespace: it reads 0), so check the outer's end of a pipe instead. */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) die("PR_SET_PDEATHSIG");
  struct pollfd p = {.fd = alive_fd, .events = POLLIN};
  if (poll(&p, 1, 0) != 0) die_msg("the helper's parent died");
  close(alive_fd);
  job_umask = umask(0); /* PID 1 creates everything with exact modes; the job gets the caller's umask */
  /* Still on the host's /proc: /proc/self names us by our host pid, which the worker needs. */
  char self[32];
  ssize_t n = readlink("/proc/self", self, sizeof self - 1);
  if (n <= 0) die("readlink /proc/self");
  self[n] = 0;
  host_pid = atoi(self);
  char *last = read_file("/proc/sys/kernel/cap_last_cap");
  cap_last = atoi(last);
  free(last);
  step("unshare");
  /* --slot: the slot keeper's network namespace (lo already up, kept across the slot's jobs) and a private
   * copy of its mount namespace, where the slot's scratch volume is mounted. setns through the pidfd is
   * atomic: it fails if the keeper is gone rather than joining whatever reused its pid. */
  if (o.slot_pidfd >= 0 && setns(o.slot_pidfd, CLONE_NEWNET | CLONE_NEWNS) < 0) die("join the slot keeper");
  int fresh = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP | (o.slot_pidfd >= 0 ? 0 : CLONE_NEWNET);
  if (unshare(fresh) < 0) die("unshare");
  if (o.slot_pidfd >= 0) close(o.slot_pidfd), o.slot_pidfd = -1;
  open_host_objects();
  if (o.slot_root) setup_mounts_on_skeleton();
  else setup_mounts();
  /* Everything is bound now: drop our references to host objects. */
  int *fds[] = {&root_fd, &kiln_bin_fd, &api_fd, &scratch_fd};
  for (size_t i = 0; i < sizeof fds / sizeof *fds; i++)
    if (*fds[i] >= 0) close(*fds[i]), *fds[i] = -1;
  for (int i = 0; i < o.ndevs; i++) close(dev_fds[i]);
  for (int i = 0; i < o.nbinds; i++) close(o.binds[i].fd);
  step("hostname");
  if (sethostname(o.hostname, strlen(o.hostname)) < 0) die("sethostname");
  bring_up_lo();
  init_loop(o.api_sock ? api_listen() : -1);
}

/* ------------------------------------------------------------------------------------------------------ */
/* The outer process                                                                                       */

static void parse_args(int argc, char **argv) {
  int i = 1;
  for (; i < argc && strcmp(argv[i], "--"); i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define VAL() (v ? (i++, v) : (die_msg("%s needs a value", a), v))
#define PUSH(arr, n, x) ((n) >= MAX_LIST ? die_msg("too many %s", a) : (void)0, (arr)[(n)++] = (x))
    if (!strcmp(a, "--debug")) o.debug = true;
    else if (!strcmp(a, "--no-net") || !strcmp(a, "--seccomp")) continue; /* always on anyway */
    else if (!strcmp(a, "--root")) o.root = abs_path(VAL(), a), o.have_root = true;
    else if (!strcmp(a, "--overlay-root")) o.overlay_root = true;
    else if (!strcmp(a, "--templates")) o.templates = true;
    else if (!strcmp(a, "--rw-root")) o.rw_root = true;
    else if (!strcmp(a, "--setup")) {
      if (!*(o.setup = VAL())) die_msg("--setup wants a script");
    }
    else if (!strcmp(a, "--build")) o.build = true, o.have_uid = o.have_gid = true;
    else if (!strcmp(a, "--mask")) PUSH(o.masks, o.nmasks, abs_path(VAL(), a));
    else if (!strcmp(a, "--ro-bind") || !strcmp(a, "--bind")) {
      char *s = strdup(VAL()), *colon = s ? strchr(s, ':') : NULL;
      if (!colon) die_msg("%s wants SRC:DST", a);
      *colon = 0;
      if (!strcmp(colon + 1, "/")) die_msg("%s cannot replace /", a);
      struct bind_opt b = {abs_path(s, a), abs_path(colon + 1, a), !strcmp(a, "--ro-bind"), -1};
      PUSH(o.binds, o.nbinds, b);
    } else if (!strcmp(a, "--kiln-bin")) o.kiln_bin = abs_path(VAL(), a);
    else if (!strcmp(a, "--dev")) {
      const char *d = abs_path(VAL(), a);
      if (strncmp(d, "/dev/", 5) || !d[5]) die_msg("--dev wants a path under /dev: %s", d);
      PUSH(o.devs, o.ndevs, d);
    } else if (!strcmp(a, "--scratch-file")) o.scratch_file = abs_path(VAL(), a);
    else if (!strcmp(a, "--scratch-dev")) o.scratch_dev = abs_path(VAL(), a);
    else if (!strcmp(a, "--scratch-slot")) o.scratch_slot = abs_path(VAL(), a);
    else if (!strcmp(a, "--slot-root")) o.slot_root = abs_path(VAL(), a);
    else if (!strcmp(a, "--slot")) o.slot_pid = (pid_t)parse_num(VAL(), INT_MAX, a);
    else if (!strcmp(a, "--scratch-tmpfs")) { /* size=0 would mean "unlimited" to tmpfs */
      if (parse_num(o.scratch_tmpfs = VAL(), ~0UL, a) == 0) die_msg("bad %s: 0", a);
    }
    else if (!strcmp(a, "--uid")) o.uid = (uid_t)parse_num(VAL(), 0xfffffffe, a), o.have_uid = true;
    else if (!strcmp(a, "--gid")) o.gid = (gid_t)parse_num(VAL(), 0xfffffffe, a), o.have_gid = true;
    else if (!strcmp(a, "--groups")) {
      char *s = strdup(VAL()), *save = NULL;
      if (!s) die_msg("out of memory"); /* else the job would silently run without its groups */
      for (char *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save))
        PUSH(o.groups, o.ngroups, (gid_t)parse_num(t, 0xfffffffe, a));
    } else if (!strcmp(a, "--hostname")) {
      o.hostname = VAL();
      if (!*v || strlen(v) > 64) die_msg("bad --hostname");
    } else if (!strcmp(a, "--chdir")) o.chdir = VAL();
    else if (!strcmp(a, "--cgroup")) PUSH(o.cgroups, o.ncgroups, abs_path(VAL(), a));
    else if (!strcmp(a, "--api")) {
      char *s = strdup(VAL()), *colon = s ? strchr(s, ':') : NULL;
      if (!colon) die_msg("--api wants PORT:SOCKET");
      *colon = 0;
      if ((o.api_port = (int)parse_num(s, 65535, a)) == 0) die_msg("bad --api port: 0");
      o.api_sock = abs_path(colon + 1, a);
    } else if (!strcmp(a, "--status-fd")) o.status_fd = (int)parse_num(VAL(), INT_MAX, a);
    else if (!strcmp(a, "--hold-fd")) o.hold_fd = (int)parse_num(VAL(), INT_MAX, a);
    else die_msg("unknown option %s", a);
  }
  if (o.status_fd >= 0 && fcntl(o.status_fd, F_GETFD) < 0) {
    int fd = o.status_fd;
    o.status_fd = -1;
    die("--status-fd %d", fd);
  }
  if (o.hold_fd >= 0 && fcntl(o.hold_fd, F_GETFD) < 0) die("--hold-fd %d", o.hold_fd);
  if (i >= argc - 1) die_msg("usage: kiln-sandbox [OPTIONS] -- PROGRAM [ARG...]");
  o.argv = argv + i + 1;
  if (!o.have_uid || !o.have_gid) die_msg("--uid and --gid are required");
  if (!o.build && (o.uid == 0 || o.gid == 0)) die_msg("the job user must not be root");
  if (o.build && (o.uid != 0 || o.gid != 0 || o.ngroups)) die_msg("--build runs as root: no --uid, --gid, --groups");
  if (!!o.scratch_file + !!o.scratch_dev + !!o.scratch_tmpfs + !!o.scratch_slot > 1)
    die_msg("give at most one --scratch-*");
  if (o.scratch_slot && !o.slot_pid) die_msg("--scratch-slot needs --slot PID");
  if (o.slot_pid && o.build) die_msg("--build takes no --slot");
  /* The skeleton already holds the root, the masks, the devices and the kiln binary the keeper was given. */
  if (o.slot_root && (!o.slot_pid || o.have_root || o.nbinds || o.nmasks || o.ndevs || o.kiln_bin))
    die_msg("--slot-root needs --slot PID and takes no --root, --bind, --ro-bind, --mask, --dev or --kiln-bin");
  if (o.overlay_root && !o.have_root) die_msg("--overlay-root needs --root DIR");
  if (o.rw_root && (!o.have_root || o.overlay_root)) die_msg("--rw-root needs --root DIR and no --overlay-root");
  /* The setup installs into / as root: only an overlay on the job's own scratch may take that. */
  if (o.setup && (!o.overlay_root || o.build)) die_msg("--setup needs --overlay-root and no --build");
}

/* The image a loop device is attached to, from sysfs (where losetup reads it too); false if none. */
static bool loop_backing(int nr, char *buf, size_t size) {
  char path[96];
  snprintf(path, sizeof path, "/sys/block/loop%d/loop/backing_file", nr);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  if (buf[n - 1] == '\n') buf[n - 1] = 0;
  return true;
}

/* The image behind --scratch-dev when it is a loop device the caller attached (with autoclear) to its
 * image: the outer process waits for that device to clear as it does for one it attached itself. */
static char scratch_dev_image[PATH_MAX];
static void note_scratch_loop(void) {
  struct stat st;
  char link[64], target[PATH_MAX];
  if (!o.scratch_dev || stat(o.scratch_dev, &st) < 0 || !S_ISBLK(st.st_mode)) return;
  snprintf(link, sizeof link, "/sys/dev/block/%u:%u", major(st.st_rdev), minor(st.st_rdev));
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n <= 0) return;
  target[n] = 0;
  const char *base = strrchr(target, '/');
  int nr;
  char extra;
  if (!base || sscanf(base + 1, "loop%d%c", &nr, &extra) != 1) return; /* not a whole loop device */
  /* Only a device that clears itself will go: one attached for good stays, and is not waited for. */
  char path[96], flag[8] = "";
  snprintf(path, sizeof path, "/sys/block/loop%d/loop/autoclear", nr);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t got = read(fd, flag, sizeof flag - 1);
  close(fd);
  if (got <= 0 || flag[0] != '1') return;
  if (loop_backing(nr, scratch_dev_image, sizeof scratch_dev_image)) shared->loop_nr = nr;
}

/* After PID 1 is gone the namespace's mounts are torn down and the loop device detaches itself; wait (a
 * little) until it has, so the caller may reuse or delete the image as soon as we exit. */
static void wait_loop_gone(void) {
  char want[PATH_MAX], got[PATH_MAX + 2];
  if (shared->loop_nr < 0) return;
  if (o.scratch_dev) snprintf(want, sizeof want, "%s", scratch_dev_image);
  else if (!realpath(o.scratch_file, want)) return;
  for (int i = 0;; i++) {
    if (i == 5000) {
      /* Not fatal to the job, which has ended, but the caller must know its image is still in use:
       * it retries the detach and keeps the file until the device lets go. */
      status_line("warning loop: /dev/loop%d still holds %s 5 s after the sandbox ended", shared->loop_nr, want);
      return;
    }
    if (!loop_backing(shared->loop_nr, got, sizeof got)) return;
    if (strcmp(got, want)) return; /* detached, and already reused by someone else */
    usleep(1000);
  }
}

/* ------------------------------------------------------------------------------------------------------ */
/* --inject: attach a host directory, read-only, inside a running sandbox                                  */

/* kiln-sandbox --inject PID --ro-bind SRC:/kiln/templates/NAME [--debug]
 * The tree is cloned on the host (where SRC means what the caller means), sealed read-only, and only then
 * carried into the sandbox's mount namespace, so no path is resolved on the host after entering it and
 * nothing is ever mounted in the host's namespace. Errors: "error STEP: MESSAGE" on stderr, exit 1. */
static int inject_main(int argc, char **argv) {
  static const char usage[] = "usage: kiln-sandbox --inject PID --ro-bind SRC:" TEMPLATES "/NAME";
  g_fail_code = 1;
  if (argc < 3) die_msg("%s", usage);
  pid_t pid = (pid_t)parse_num(argv[2], INT_MAX, "--inject pid");
  const char *src = NULL, *dst = NULL;
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "--debug")) {
      o.debug = true;
    } else if (!strcmp(argv[i], "--ro-bind") && i + 1 < argc && !src) {
      char *s = strdup(argv[++i]), *colon = s ? strchr(s, ':') : NULL;
      if (!colon) die_msg("--ro-bind wants SRC:DST");
      *colon = 0;
      src = abs_path(s, "--ro-bind");
      dst = colon + 1;
    } else {
      die_msg("%s", usage);
    }
  }
  /* Exactly one level below the templates dir: nothing else of the job's tree can be covered. */
  const char *name = dst ? dst + strlen(TEMPLATES "/") : NULL;
  if (!dst || pid < 1 || strncmp(dst, TEMPLATES "/", strlen(TEMPLATES "/")) || !*name || strchr(name, '/') ||
      !strcmp(name, ".") || !strcmp(name, ".."))
    die_msg("--inject wants PID and --ro-bind SRC:" TEMPLATES "/NAME, got %s", dst ? dst : "no --ro-bind");
  umask(0); /* the mount point gets exactly 0755 */

  step("open_tree");
  int tree = (int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
  struct stat st;
  if (tree < 0 || fstat(tree, &st) < 0) die("%s", src);
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    die("%s", src);
  }
  /* Read-only for every submount too; private, so the copy shares no propagation with the host's tree
   * (a mount or unmount under SRC on the host will not show up in the job, nor the reverse). */
  struct mount_attr attr = {.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                            .propagation = MS_PRIVATE};
  if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0)
    die("mount_setattr %s", src);

  /* Is PID the init of a kiln sandbox? The pidfd pins the process: setns through it fails if PID died,
   * so the checks below, made through /proc/PID before that, were about the same process. */
  step("target");
  char path[64];
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) die("pid %d", (int)pid);
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  /* NSpid lists the pid in each nested pid namespace: a sandbox's init has two or more, the last one 1. */
  char *status = read_file(path), *ns = strstr(status, "\nNSpid:"), *save = NULL;
  int levels = 0;
  bool init = false;
  if (ns) ns[1 + strcspn(ns + 1, "\n")] = 0;
  for (char *t = ns ? strtok_r(ns + 7, "\t ", &save) : NULL; t; t = strtok_r(NULL, "\t ", &save))
    levels++, init = !strcmp(t, "1");
  if (levels < 2 || !init) die_msg("pid %d is not the init of a sandbox", (int)pid);
  free(status);
  snprintf(path, sizeof path, "/proc/%d/root", (int)pid);
  int root = open_host(path, O_PATH | O_DIRECTORY);
  step("setns");
  if (setns(pidfd, CLONE_NEWNS) < 0) die("pid %d", (int)pid);
  /* setns moved our root to the namespace's root; use the one PID 1 actually has, which is also the
   * only tree reachable from here on, so DST cannot resolve to anything outside the sandbox. */
  if (fchdir(root) < 0 || chroot(".") < 0 || chdir("/") < 0) die("enter the root of pid %d", (int)pid);
  step("target");
  /* The --templates tmpfs: a directory, owned by root, so the job itself cannot have made it. */
  struct statfs sf;
  if (lstat(TEMPLATES, &st) < 0 || statfs(TEMPLATES, &sf) < 0)
    die("pid %d: " TEMPLATES " (no --templates?)", (int)pid);
  if (!S_ISDIR(st.st_mode) || st.st_uid != 0 || sf.f_type != TMPFS_MAGIC)
    die_msg("pid %d: " TEMPLATES " is not the sandbox's templates tmpfs", (int)pid);
  step("mkdir");
  if (mkdir(dst, 0755) < 0) die("%s", dst);
  step("move_mount");
  if (syscall(SYS_move_mount, tree, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
    int e = errno;
    rmdir(dst);
    errno = e;
    die("%s", dst);
  }
  write_all(1, "ok\n", 3);
  return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* --slot-keeper: what a slot keeps across its jobs                                                        */

/*
 * kiln-sandbox --slot-keeper [--dir DIR --scratch-dev DEV] [--debug]
 *
 * Runs for as long as its slot: a network namespace with lo up and a mount namespace (a slave copy of the
 * host's: host mounts still show, ours never leave) in which DEV, an ext4 volume, is mounted at DIR. A job
 * launched with `--slot PID` joins that network namespace and a private copy of that mount namespace, and
 * with `--scratch-slot DIR` gets the volume as /tmp. Making and tearing down a network namespace, a loop
 * device and an ext4 mount for every job cost more than the rest of a launch together.
 *
 * Lines on stdout: `ready PID` once set up; then, for each `wipe` line on stdin (sent once a job's sandbox
 * is gone), `wiped` when the volume holds nothing but lost+found again (`wiped stale` when the host's
 * mounts changed since the keeper started: its view of them is out of date, and a new keeper should take
 * over), or `error wipe: MESSAGE` when it could not be emptied (or holds more than WIPE_MAX entries: a
 * fresh volume is then cheaper). EOF on stdin,
 * or the death of the worker, ends it; the volume's loop device clears itself once no namespace holds the
 * mount any more.
 */
#define WIPE_MAX 100000

/* Empties dir (but its lost+found) without following a symlink or holding an fd per level, however deep the
 * tree. No process of the job is alive while this runs: the tree cannot change under us. */
static const char *wipe(const char *dir) {
  static char msg[512];
  long seen = 0;
  int depth = 0, fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return snprintf(msg, sizeof msg, "open %s: %s", dir, strerror(errno)), msg;
  for (;;) {
    int child = -1, dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
    if (!d) {
      snprintf(msg, sizeof msg, "read a directory: %s", strerror(errno));
      goto fail;
    }
    rewinddir(d);
    for (struct dirent *e; child < 0 && (e = readdir(d));) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      if (depth == 0 && !strcmp(e->d_name, "lost+found")) continue;
      if (++seen > WIPE_MAX) {
        closedir(d);
        snprintf(msg, sizeof msg, "more than %d entries", WIPE_MAX);
        goto fail;
      }
      struct stat st;
      int r = fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW);
      if (r == 0 && !S_ISDIR(st.st_mode)) r = unlinkat(fd, e->d_name, 0);
      else if (r == 0 && unlinkat(fd, e->d_name, AT_REMOVEDIR) < 0 && (errno == ENOTEMPTY || errno == EEXIST)) {
        child = openat(fd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        r = child < 0 ? -1 : 0;
      }
      if (r < 0 && errno != ENOENT) {
        snprintf(msg, sizeof msg, "remove %s: %s", e->d_name, strerror(errno));
        closedir(d);
        goto fail;
      }
    }
    closedir(d);
    if (child >= 0) { /* descend; the emptied directory is removed when its parent is read again */
      close(fd);
      fd = child, depth++;
      continue;
    }
    if (depth == 0) break;
    int up = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    close(fd);
    if ((fd = up) < 0) return snprintf(msg, sizeof msg, "open ..: %s", strerror(errno)), msg;
    depth--;
  }
  close(fd);
  return NULL;
fail:
  close(fd);
  return msg;
}

static int keeper_main(int argc, char **argv) {
  static const char usage[] = "usage: kiln-sandbox --slot-keeper [--dir DIR --scratch-dev DEV] [--skeleton DIR "
                              "[--kiln-bin FILE] [--mask PATH]... [--dev PATH]...] [--debug]";
  const char *dir = NULL, *dev = NULL, *skeleton = NULL;
  g_fail_code = 1;
  o.status_fd = 1;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--debug")) o.debug = true;
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = abs_path(argv[++i], "--dir");
    else if (!strcmp(argv[i], "--scratch-dev") && i + 1 < argc) dev = abs_path(argv[++i], "--scratch-dev");
    else if (!strcmp(argv[i], "--skeleton") && i + 1 < argc) skeleton = abs_path(argv[++i], "--skeleton");
    else if (!strcmp(argv[i], "--kiln-bin") && i + 1 < argc) o.kiln_bin = abs_path(argv[++i], "--kiln-bin");
    else if (!strcmp(argv[i], "--mask") && i + 1 < argc && o.nmasks < MAX_LIST)
      o.masks[o.nmasks++] = abs_path(argv[++i], "--mask");
    else if (!strcmp(argv[i], "--dev") && i + 1 < argc && o.ndevs < MAX_LIST) {
      const char *d = abs_path(argv[++i], "--dev");
      if (strncmp(d, "/dev/", 5) || !d[5]) die_msg("--dev wants a path under /dev: %s", d);
      o.devs[o.ndevs++] = d;
    } else die_msg("%s", usage);
  }
  if (!dir != !dev || (!skeleton && (o.kiln_bin || o.nmasks || o.ndevs))) die_msg("%s", usage);
  step("init");
  pid_t ppid = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) die("PR_SET_PDEATHSIG");
  if (getppid() != ppid) die_msg("the worker died");
  /* The host's mount table, opened before we leave it: poll() says when it changed. Our copy of it, and
   * the skeleton made from that copy, are then out of date (on a host whose mounts are private nothing of
   * the change reaches us), and the keeper says so at the next wipe: the worker replaces it. */
  int host_mounts = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
  if (host_mounts < 0) die("open /proc/self/mountinfo");
  step("unshare");
  if (unshare(CLONE_NEWNS | CLONE_NEWNET) < 0) die("unshare");
  xmount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL);
  bring_up_lo();
  if (dev) {
    step("scratch");
    xmount(dev, dir, "ext4", SCRATCH_FLAGS, SCRATCH_EXT4);
    xmount(NULL, dir, NULL, MS_UNBINDABLE, NULL); /* never in a copy of a host directory: see build_skeleton */
  }
  if (skeleton) build_skeleton(skeleton);
  status_line("ready %d", (int)getpid());
  char line[64];
  size_t len = 0;
  bool stale = false;
  for (;;) {
    struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = skeleton ? host_mounts : -1, .events = POLLPRI}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (p[1].revents & (POLLPRI | POLLERR)) stale = true;
    if (!p[0].revents) continue;
    ssize_t n = read(0, line + len, sizeof line - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    for (char *nl; (nl = memchr(line, '\n', len));) {
      *nl = 0;
      step(line);
      if (!strcmp(line, "wipe")) {
        const char *err = dir ? wipe(dir) : NULL;
        if (err) status_line("error wipe: %s", err);
        else status_line(stale ? "wiped stale" : "wiped");
      } else {
        status_line("error unknown command %s", line);
      }
      len -= (size_t)(nl + 1 - line);
      memmove(line, nl + 1, len);
    }
    if (len == sizeof line - 1) die_msg("command too long");
  }
  return 0;
}

/* --slot PID: the outer process checks that PID is a slot keeper of the worker that started us (the same
 * executable, in --slot-keeper mode, a child of our parent, in a network namespace of its own) through a
 * pidfd, which PID 1 then joins. A keeper that died and whose pid was reused fails the checks or the final
 * liveness test. */
static void open_slot_keeper(void) {
  step("slot");
  int pidfd = (int)syscall(SYS_pidfd_open, o.slot_pid, 0);
  if (pidfd < 0) die("slot keeper %d", (int)o.slot_pid);
  char path[64], exe[PATH_MAX], self[PATH_MAX];
  snprintf(path, sizeof path, "/proc/%d/exe", (int)o.slot_pid);
  ssize_t a = readlink(path, exe, sizeof exe - 1), b = readlink("/proc/self/exe", self, sizeof self - 1);
  if (a <= 0 || b <= 0) die("readlink %s", path);
  exe[a] = self[b] = 0;
  snprintf(path, sizeof path, "/proc/%d/cmdline", (int)o.slot_pid);
  char cmd[256] = {0}; /* argv[0] NUL "--slot-keeper" NUL ...: the rest of the buffer stays zeroed */
  int cfd = open(path, O_RDONLY | O_CLOEXEC);
  if (cfd < 0 || read(cfd, cmd, sizeof cmd - 1) < 0) die("read %s", path);
  close(cfd);
  const char *arg1 = cmd + strnlen(cmd, sizeof cmd - 1) + 1;
  if (arg1 >= cmd + sizeof cmd) arg1 = "";
  snprintf(path, sizeof path, "/proc/%d/stat", (int)o.slot_pid);
  char *pstat = read_file(path), *end = strrchr(pstat, ')');
  int parent = 0;
  if (!end || sscanf(end + 1, " %*c %d", &parent) != 1) die_msg("cannot parse %s", path);
  struct stat theirs, ours;
  snprintf(path, sizeof path, "/proc/%d/ns/net", (int)o.slot_pid);
  if (stat(path, &theirs) < 0 || stat("/proc/self/ns/net", &ours) < 0) die("stat %s", path);
  if (strcmp(exe, self) || strcmp(arg1, "--slot-keeper") || parent != getppid() || theirs.st_ino == ours.st_ino)
    die_msg("pid %d is not a slot keeper of this worker", (int)o.slot_pid);
  free(pstat);
  if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0) die("slot keeper %d", (int)o.slot_pid);
  o.slot_pidfd = pidfd;
}

int main(int argc, char **argv) {
  /* Dispositions set to "ignore" by the caller survive exec: an ignored SIGCHLD would stop us from
   * waiting for our children, an ignored SIGPIPE would leak into the job. Start from the defaults. */
  for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
  if (argc > 1 && !strcmp(argv[1], "--inject")) return inject_main(argc, argv);
  if (argc > 1 && !strcmp(argv[1], "--collect")) return collect_main(argc, argv);
  if (argc > 1 && !strcmp(argv[1], "--slot-keeper")) return keeper_main(argc, argv);
  parse_args(argc, argv);
  step("init");
  /* Die with the worker. Checking getppid() afterwards closes the race where it died just before. */
  pid_t ppid = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) die("PR_SET_PDEATHSIG");
  if (getppid() != ppid) die_msg("the worker died");
  /* Join the job's cgroups first, so every process of the job is born inside them. */
  step("cgroup");
  char pid[24];
  int pidlen = snprintf(pid, sizeof pid, "%d", (int)getpid());
  for (int i = 0; i < o.ncgroups; i++) {
    int fd = open(o.cgroups[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, pid, (size_t)pidlen) != pidlen) die("%s", o.cgroups[i]);
    close(fd);
  }
  if (o.slot_pid) open_slot_keeper();
  step("init");
  shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) shared = NULL, die("mmap");
  shared->loop_nr = -1;
  note_scratch_loop();
  /* Block the signals we handle before forking: PID 1 inherits the mask and turns it into a signalfd;
   * here they are taken with sigwaitinfo. No handler ever runs, no signal is lost in between. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  for (size_t i = 0; i < sizeof fwd_signals / sizeof *fwd_signals; i++) sigaddset(&set, fwd_signals[i]);
  if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) die("sigprocmask");
  int alive[2];
  if (pipe2(alive, O_CLOEXEC) < 0) die("pipe");
  /* Only the pid namespace is unshared here; it applies to our next child, which becomes its PID 1 and
   * creates the other namespaces for itself, so this process stays entirely in the host's. */
  step("unshare");
  if (unshare(CLONE_NEWPID) < 0) die("unshare(CLONE_NEWPID)");
  step("fork");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    close(alive[1]);
    pid1_main(alive[0]);
  }
  close(alive[0]); /* alive[1] stays open until we exit: PID 1 sees POLLHUP if we are already gone */
  drop_stdio();
  step("wait");
  int st = 0;
  for (;;) {
    siginfo_t si;
    int sig = sigwaitinfo(&set, &si);
    if (sig < 0 && errno == EINTR) continue;
    if (sig < 0) die("sigwaitinfo");
    if (sig != SIGCHLD) kill(child, sig); /* PID 1 passes it on to the job's process group */
    else if (waitpid(child, &st, WNOHANG) == child) break;
  }
  signal(SIGPIPE, SIG_IGN); /* the status reader may be gone; we only write to it from here on */
  step("init");
  if (!shared->final_written) {
    if (WIFSIGNALED(st)) die_msg("the sandbox's init was killed by signal %d", WTERMSIG(st));
    die_msg("the sandbox's init exited with %d without a status", WEXITSTATUS(st));
  }
  wait_loop_gone();
  return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
}
