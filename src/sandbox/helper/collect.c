/*
 * kiln-sandbox --collect: copies a finished job's $KILN_OUT (its /tmp/out) to a directory on the host.
 *
 * Every path below /tmp/out is the job's to shape: a symlink to /etc, a fifo, a directory swapped for a
 * link halfway through. So nothing is opened by path on the host. The job's root is opened once through
 * /proc/PID/root, /tmp/out is resolved inside it with openat2(RESOLVE_IN_ROOT|RESOLVE_NO_SYMLINKS), and
 * every entry below is opened from its parent's fd, one component at a time, with RESOLVE_BENEATH and
 * RESOLVE_NO_SYMLINKS, then fstat'ed: only regular files and directories are taken. Reads run with the
 * job's uid as the filesystem uid, so nothing the job itself could not read is ever copied. Files are
 * created with O_EXCL in a directory Kiln made, and the byte budget is checked before a byte is written.
 * See README.md ("--collect") for the command line and the lines it prints.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdarg.h>
#include <linux/openat2.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "collect.h"

#define MAX_DEPTH 32 /* deeper trees are skipped: the walk recurses, and no build output nests deeper */
#define NAME_CAP 201 /* the longest name component Kiln accepts (src/protocol/artifact-name.ts) */
/* Entries looked at, all directories together. Each kept file is a file on the worker's disk, a request
 * and a row on the master, and each skipped one a line in the job's log: a tree this big is to be tarred. */
#define MAX_ENTRIES 100000
#define STR(x) #x
#define XSTR(x) STR(x)

static uid_t job_uid;
static gid_t job_gid;
static unsigned long long budget, used;
static long entries;

static void __attribute__((noreturn, format(printf, 2, 3))) collect_die(const char *step, const char *fmt, ...) {
  int e = errno;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  dprintf(2, "error %s: %s: %s\n", step, msg, strerror(e));
  exit(1);
}

/* The filesystem ids every open is checked against: the job's while reading its tree, ours (root) while
 * writing the copy. setfsuid never fails visibly, so each switch is read back. */
static void fs_ids(uid_t uid, gid_t gid) {
  setfsgid(gid);
  setfsuid(uid);
  if ((uid_t)setfsuid((uid_t)-1) != uid || (gid_t)setfsgid((gid_t)-1) != gid) {
    errno = EPERM;
    collect_die("setfsuid", "could not switch to %u:%u", uid, gid);
  }
}
#define AS_JOB() fs_ids(job_uid, job_gid)
#define AS_ROOT() fs_ids(0, 0)

/* The same rule as Kiln's artifact names, for one component: a letter or digit, then letters, digits
 * and . _ + -; so never empty, never . or .., never a control character or a slash. */
static bool name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > NAME_CAP) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || !strchr("._+-", c))) return false;
  }
  return true;
}

/* A job-chosen name, printable on one line: bytes outside [A-Za-z0-9._+-/] become \xHH. */
static void print_name(const char *prefix, const char *name) {
  char out[8192];
  size_t o = 0;
  for (const char *parts[2] = {prefix, name}, **p = parts; p < parts + 2; p++)
    for (const unsigned char *s = (const unsigned char *)*p; *s && o + 5 < sizeof out; s++) {
      bool plain = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                   strchr("._+-/", *s);
      if (plain) out[o++] = (char)*s;
      else o += (size_t)snprintf(out + o, sizeof out - o, "\\x%02x", *s);
    }
  out[o] = 0;
  fputs(out, stdout);
}

static void skip(const char *prefix, const char *name, const char *why) {
  fputs("skip ", stdout);
  print_name(prefix, name);
  printf(" %s\n", why);
}

static const char *kind_of(mode_t m) {
  if (S_ISLNK(m)) return "a symbolic link";
  if (S_ISFIFO(m)) return "a fifo";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m) || S_ISBLK(m)) return "a device node";
  return "not a regular file or directory";
}

/* Opens NAME below DIR without following anything: no symlink anywhere, no magic link, no mount
 * crossing, nothing outside DIR; O_NONBLOCK so a fifo swapped in after the fstatat cannot hang us. */
static int open_beneath(int dir, const char *name, int flags) {
  struct open_how how = {
      .flags = (uint64_t)(flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC),
      .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
  };
  return (int)syscall(SYS_openat2, dir, name, &how, sizeof how);
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Copies exactly `size` bytes (fewer if the file is shorter now): never more than was counted. */
static long long copy_bytes(int from, int to, long long size) {
  long long done = 0;
  while (done < size) {
    ssize_t n = sendfile(to, from, NULL, (size_t)(size - done > (1 << 30) ? (1 << 30) : size - done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) break;
    done += n;
  }
  return done;
}

/* Walks one directory. Returns false once collection must stop (the budget is passed, or there are too
 * many entries): nothing more is copied after that. */
static bool walk(int src, int dst, const char *prefix, int depth) {
  DIR *d = fdopendir(dup(src));
  if (!d) collect_die("read", "%s", prefix[0] ? prefix : "$KILN_OUT");
  char **names = NULL;
  size_t n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    names = realloc(names, sizeof *names * (n + 1));
    if (!names || !(names[n++] = strdup(e->d_name))) collect_die("read", "out of memory");
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, by_name); /* a stable order for the log and the tests */
  bool go_on = true;
  for (size_t i = 0; i < n && go_on; i++) {
    const char *name = names[i];
    struct stat st;
    if (++entries > MAX_ENTRIES) {
      skip(prefix, name, "one entry too many: $KILN_OUT holds more than " XSTR(MAX_ENTRIES) "; this and the rest are not collected");
      go_on = false;
      continue;
    }
    if (!name_ok(name)) {
      skip(prefix, name, "a name Kiln does not allow (letters, digits and . _ + -, not first)");
      continue;
    }
    AS_JOB();
    if (fstatat(src, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
      skip(prefix, name, strerror(errno));
      continue;
    }
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
      skip(prefix, name, kind_of(st.st_mode));
      continue;
    }
    if (S_ISDIR(st.st_mode) && depth >= MAX_DEPTH) {
      skip(prefix, name, "nested too deep");
      continue;
    }
    int in = open_beneath(src, name, S_ISDIR(st.st_mode) ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    struct stat now;
    if (in < 0) {
      /* ELOOP/ENOTDIR: it was swapped for a link or something else since the fstatat */
      skip(prefix, name, errno == ELOOP || errno == ENOTDIR || errno == EXDEV ? "changed during collection" :
                         errno == EACCES ? "not readable by the job" : strerror(errno));
      continue;
    }
    if (fstat(in, &now) < 0 || (now.st_mode & S_IFMT) != (st.st_mode & S_IFMT)) {
      close(in);
      skip(prefix, name, "changed during collection");
      continue;
    }
    char path[8192];
    snprintf(path, sizeof path, "%s%s", prefix, name);
    AS_ROOT();
    if (S_ISDIR(now.st_mode)) {
      int out = -1;
      if (mkdirat(dst, name, 0700) == 0 || errno == EEXIST)
        out = openat(dst, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (out < 0) {
        close(in);
        skip(prefix, name, "a file of that name was uploaded already");
        continue;
      }
      char sub[sizeof path + 1];
      snprintf(sub, sizeof sub, "%s/", path);
      go_on = walk(in, out, sub, depth + 1);
      close(out);
      close(in);
      continue;
    }
    /* The budget is counted on the size now, before the copy exists, and the copy takes no more. */
    unsigned long long size = (unsigned long long)now.st_size;
    if (size > budget - used) {
      close(in);
      fputs("over ", stdout);
      print_name("", path);
      printf(" %llu\n", size);
      go_on = false;
      continue;
    }
    int out = openat(dst, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0) {
      close(in);
      skip(prefix, name, errno == EEXIST ? "a file of that name was uploaded already" : strerror(errno));
      continue;
    }
    used += size;
    AS_JOB(); /* sendfile reads through `in`, opened as the job; nothing is resolved from here */
    long long got = copy_bytes(in, out, (long long)size);
    int e = errno;
    /* The job's permission bits travel with the file (an executable stays one), never write for others.
     * As root: the copy is root's file, and fchmod(2) checks the file system uid. */
    AS_ROOT();
    if (got >= 0 && fchmod(out, now.st_mode & 0755) < 0) got = -1, e = errno;
    close(in);
    if (close(out) < 0 && got >= 0) got = -1, e = errno;
    if (got < 0) {
      errno = e;
      collect_die("copy", "%s", path);
    }
    printf("file %s %lld\n", path, got);
  }
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  return go_on;
}

int collect_main(int argc, char **argv) {
  static const char usage[] =
      "usage: kiln-sandbox --collect PID --to DIR --uid UID --gid GID --budget BYTES";
  const char *to = NULL;
  long pid = 0;
  bool have_uid = false, have_gid = false, have_budget = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(argv[i + 1], &end, 10);
    bool num = *argv[i + 1] && !*end && !errno && argv[i + 1][0] != '-';
    if (!strcmp(argv[i], "--collect") && num && v > 0 && v <= INT_MAX) pid = (long)v;
    else if (!strcmp(argv[i], "--to") && argv[i + 1][0] == '/') to = argv[i + 1];
    else if (!strcmp(argv[i], "--uid") && num && v > 0 && v < UINT32_MAX) job_uid = (uid_t)v, have_uid = true;
    else if (!strcmp(argv[i], "--gid") && num && v > 0 && v < UINT32_MAX) job_gid = (gid_t)v, have_gid = true;
    else if (!strcmp(argv[i], "--budget") && num) budget = v, have_budget = true;
    else {
      errno = EINVAL;
      collect_die("args", "%s (%s)", argv[i], usage);
    }
  }
  if (argc % 2 == 0 || !pid || !to || !have_uid || !have_gid || !have_budget) {
    errno = EINVAL;
    collect_die("args", "%s", usage);
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  umask(077);
  /* Only the job's own ids may grant access while reading: no supplementary group of ours. */
  if (setgroups(0, NULL) < 0) collect_die("args", "setgroups");

  /* Reaching another process's root needs our own (root) credentials: ptrace access is checked
   * against the filesystem uid. The fd then stands for the job's / whatever happens to the path. */
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/%ld/root", pid);
  int root = open(proc, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) collect_die("target", "%s", proc);
  if (mkdir(to, 0700) < 0 && errno != EEXIST) collect_die("to", "%s", to);
  int dst = open(to, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dst < 0) collect_die("to", "%s", to);

  AS_JOB();
  struct open_how how = {
      .flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
      .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
  };
  int out = (int)syscall(SYS_openat2, root, "tmp/out", &how, sizeof how);
  if (out < 0) {
    /* The job may remove $KILN_OUT or put something else in its place; none of it is an error of ours. */
    struct stat st;
    how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
    int what = errno == ENOTDIR ? (int)syscall(SYS_openat2, root, "tmp/out", &how, sizeof how) : -1;
    if (errno == ENOENT) return 0;
    if (errno == ELOOP) skip("", ".", "a symbolic link");
    else if (what >= 0 && fstat(what, &st) == 0) skip("", ".", kind_of(st.st_mode));
    else if (errno == EACCES) skip("", ".", "not readable by the job");
    else collect_die("open", "/tmp/out of pid %ld", pid);
    return 0;
  }
  walk(out, dst, "", 0);
  return 0;
}
