import { expect, test } from "bun:test";
import { parseStatus } from "./status.ts";

test("the launcher's status lines become pid, exit, signal, a set-up failure naming its step, or a warning", () => {
  expect(parseStatus("ready 4242\n")).toEqual({ ready: 4242 });
  expect(parseStatus("exit 3")).toEqual({ exit: { kind: "exit", code: 3 } });
  expect(parseStatus("signal 9")).toEqual({ exit: { kind: "signal", signal: 9 } });
  expect(parseStatus("error scratch: open /x.img: No such file or directory")).toEqual({
    exit: {
      kind: "sandbox",
      message: "sandbox set-up failed at scratch: open /x.img: No such file or directory",
      slotFault: true,
    },
  });
  expect(parseStatus("error exec: /no/such/program: No such file or directory")).toEqual({
    exit: { kind: "exit", code: 127 },
    note: "kiln: cannot run the job's command: /no/such/program: No such file or directory\n",
  });
  expect(parseStatus("warning loop: /dev/loop3 still holds /x.img 5 s after the sandbox ended")).toEqual({
    warning: "loop: /dev/loop3 still holds /x.img 5 s after the sandbox ended",
  });
  expect(parseStatus("setup 4242")).toEqual({ setup: 4242 });
  expect(parseStatus("setup-failed exit 100")).toEqual({
    exit: { kind: "setup", message: "the setup exited with status 100", code: 100 },
    note: "kiln: the setup exited with status 100; the job's command did not run\n",
  });
  expect(parseStatus("setup-failed signal 9")).toMatchObject({
    exit: { kind: "setup", message: "the setup was killed by signal 9", code: null },
  });
  expect(parseStatus("setup-failed exec: /bin/sh: No such file or directory")).toMatchObject({
    exit: {
      kind: "setup",
      message: "the setup could not start: /bin/sh: No such file or directory",
      code: null,
    },
  });
  expect(parseStatus("garbage")).toBeNull();
});
