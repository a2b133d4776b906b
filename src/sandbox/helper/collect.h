/* kiln-sandbox --collect (collect.c): copies a finished job's /tmp/out to the host without following
 * anything the job controls. Returns the helper's exit code. */
#ifndef KILN_COLLECT_H
#define KILN_COLLECT_H
int collect_main(int argc, char **argv);
#endif
