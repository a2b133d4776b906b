/*
 * The floor of any sandbox that gives each job namespaces of its own, for `scripts/bench sandbox`: N times,
 * clone a child into new PID, mount, network, IPC, UTS and cgroup namespaces; the child makes its mounts
 * private, mounts a /proc for its PID namespace and a 16 MiB tmpfs on /tmp, drops to nobody and execs
 * /bin/true; the parent waits for it. No root to build, no seccomp, no capabilities to drop, no status to
 * report: what is left is the kernel's price of the namespaces and the exec.
 *
 * Usage: floor N (as root). Its CPU, and that of the children it waited for, divided by N is the figure.
 */
#define _GNU_SOURCE
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

static char stack[1 << 16];

static int job(void *arg) {
  (void)arg;
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) return perror("private"), 1;
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) return perror("proc"), 1;
  if (mount("none", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777") < 0) return perror("tmp"), 1;
  if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0) return perror("uid"), 1;
  execl("/bin/true", "true", (char *)NULL);
  perror("exec");
  return 127;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 50;
  int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP | SIGCHLD;
  for (int i = 0; i < n; i++) {
    pid_t pid = clone(job, stack + sizeof stack, flags, NULL);
    if (pid < 0) return perror("clone"), 1;
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "floor: a launch failed\n");
      return 1;
    }
  }
  return 0;
}
