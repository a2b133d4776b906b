#!/bin/sh
# A small real build: compile a C program, run its self-test, and leave the binary as an artifact.
set -eu
echo "building on $(uname -n) as $(id -un 2>/dev/null || id -u), job $KILN_JOB_ID"
cd "${TMPDIR:-$HOME}"
cat > hello.c <<'C'
#include <stdio.h>
int main(void) { printf("hello from a Kiln build\n"); return 0; }
C
cc -O2 -Wall -o hello hello.c
./hello
mkdir -p "$KILN_OUT"
cp hello "$KILN_OUT/hello"
echo "built $(wc -c < hello) bytes"
