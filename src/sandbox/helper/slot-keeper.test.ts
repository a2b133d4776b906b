/**
 * The slot keeper (kiln-sandbox --slot-keeper, driven through src/sandbox/slot-keeper.ts as the worker
 * drives it): jobs of one slot share its network namespace and its scratch volume, one after another. What
 * one job leaves must never reach the next, a launcher must join nothing but a keeper, and a keeper that
 * goes leaves no loop device or mount behind. Real runs, as root.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  attachScratch,
  createScratch,
  destroyScratch,
  type Scratch,
  type ScratchConfig,
} from "../scratch.ts";
import { type SlotKeeper, startSlotKeeper } from "../slot-keeper.ts";

const isRoot = process.getuid?.() === 0;
const rootTest = test.skipIf(!isRoot);
const REPO = resolve(import.meta.dir, "../../..");
const UID = 61001;
const ENV = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", LANG: "C" };

let dir = "";
let helper = "";
let cfg: ScratchConfig;
const hostMounts = () => readFileSync("/proc/self/mountinfo", "utf8");
let mountsAtStart = "";

async function launch(keeper: SlotKeeper | number, script: string, extra: string[] = []) {
  // Host-root jobs start from the keeper's skeleton, as the worker launches them.
  const slot =
    typeof keeper === "number"
      ? ["--slot", `${keeper}`]
      : keeper.launchArgs({ skeleton: true, volume: true });
  const p = Bun.spawn(
    [helper, "--uid", `${UID}`, "--gid", `${UID}`, ...slot, ...extra, "--", "/bin/sh", "-c", script],
    { stdout: "pipe", stderr: "pipe", env: ENV },
  );
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { stdout, stderr, code };
}

/* The test's directory is masked, as the worker masks its data dir; the secret below it must not show. */
const skeleton = () => ({ kilnBin: helper, masks: [join(dir, "masked")], devices: [] });

async function keeperWithVolume(name: string): Promise<{ keeper: SlotKeeper; volume: Scratch }> {
  const volume = attachScratch(await createScratch(cfg, name, 16 << 20));
  const keeper = await startSlotKeeper(helper, join(dir, "slots", name), volume, skeleton());
  return { keeper, volume };
}

async function stop(k: { keeper: SlotKeeper; volume: Scratch }) {
  await k.keeper.stop();
  await destroyScratch(cfg, k.volume);
}

describe("slot keeper", () => {
  beforeAll(() => {
    if (!isRoot) return;
    mountsAtStart = hostMounts();
    dir = mkdtempSync("/var/tmp/kiln-keeper-test-");
    chmodSync(dir, 0o755);
    helper = join(dir, "kiln-sandbox");
    Bun.spawnSync([join(REPO, "scripts/build-helper"), helper]);
    cfg = { backend: "loop", dir: join(dir, "scratch") };
    mkdirSync(join(dir, "masked"));
    writeFileSync(join(dir, "masked", "secret"), "host secret\n");
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  rootTest(
    "what a job leaves on the slot's volume is gone for the next job, and the host keeps its files",
    async () => {
      const k = await keeperWithVolume("leftovers");
      try {
        const first = await launch(
          k.keeper,
          [
            "echo secret > /tmp/home/secret",
            "mkdir -p /tmp/deep && cd /tmp/deep && i=0 && while [ $i -lt 300 ]; do mkdir d && cd d; i=$((i+1)); done && echo bottom > f",
            "ln -s /etc /tmp/etc-link && ln -s /etc/passwd /tmp/out/passwd-link",
            "mkfifo /tmp/fifo && mkdir /tmp/locked && touch /tmp/locked/f && chmod 000 /tmp/locked",
            "ls -a /tmp | tr '\\n' ' '",
          ].join("; "),
        );
        expect(first.code).toBe(0);
        expect(first.stdout).toBe(". .. deep etc-link fifo home locked lost+found out ");
        await k.keeper.wipe();
        const second = await launch(
          k.keeper,
          "ls -a /tmp | tr '\\n' ' '; echo; ls -A /tmp/out /tmp/home | tr '\\n' ' '; test -e /tmp/home/secret && echo LEAK",
        );
        expect(second.stdout).toBe(". .. home lost+found out \n/tmp/home:  /tmp/out: ");
        // The links were removed, never followed: the host's /etc is whole.
        expect(readFileSync("/etc/passwd", "utf8")).toContain("root:");
        expect(readdirSync("/etc").length).toBeGreaterThan(10);
      } finally {
        await stop(k);
      }
    },
  );

  rootTest("a volume that was not emptied is refused: the job never runs", async () => {
    const k = await keeperWithVolume("unwiped");
    try {
      expect((await launch(k.keeper, "touch /tmp/left")).code).toBe(0);
      const again = await launch(k.keeper, "echo ran");
      expect(again.stdout).toBe("");
      expect(again.code).toBe(127);
      expect(again.stderr).toContain("the slot's scratch volume still holds");
      await k.keeper.wipe();
      expect((await launch(k.keeper, "echo ran")).stdout).toBe("ran\n");
    } finally {
      await stop(k);
    }
  });

  rootTest(
    "jobs of a slot share only lo: a listener a job left is gone, the next binds its port, the host's is out of reach",
    async () => {
      const host = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
      const k = await keeperWithVolume("network");
      try {
        const py = (code: string) => `python3 -c '${code}'`;
        const listen =
          'import socket,os,time\ns=socket.socket();s.bind(("127.0.0.1",7071));s.listen()\nif os.fork()==0:\n  os.setsid();time.sleep(30)';
        const first = await launch(k.keeper, `${py(listen)}; cat /proc/net/dev | grep -c :`);
        expect(first.code).toBe(0);
        expect(first.stdout.trim()).toBe("1"); // lo only
        await k.keeper.wipe();
        const second = await launch(
          k.keeper,
          `${py('import socket\ns=socket.socket();s.bind(("127.0.0.1",7071));print("bound")')}; ${py(
            `import socket\ntry:\n  socket.create_connection(("127.0.0.1",${host.port}),1);print("reached")\nexcept OSError as e:print("refused")`,
          )}`,
        );
        expect(second.stdout).toBe("bound\nrefused\n");
      } finally {
        host.stop(true);
        await stop(k);
      }
    },
  );

  rootTest("--slot joins only a keeper of the same worker", async () => {
    // A process of ours that is no keeper, the test runner itself, and a keeper whose parent is not ours.
    const sleeper = Bun.spawn(["sleep", "30"]);
    const foreign = Bun.spawn(["/bin/sh", "-c", `sleep 30 | ${helper} --slot-keeper`], { stdout: "pipe" });
    const reader = foreign.stdout.getReader();
    const line = new TextDecoder().decode((await reader.read()).value);
    const foreignPid = Number(/^ready (\d+)/.exec(line)?.[1]);
    try {
      for (const pid of [sleeper.pid, process.pid, foreignPid]) {
        const r = await launch(pid, "echo ran");
        expect(r.stdout).toBe("");
        expect(r.code).toBe(125);
        expect(r.stderr).toContain(`pid ${pid} is not a slot keeper of this worker`);
      }
    } finally {
      sleeper.kill();
      foreign.kill(); // the keeper dies with its parent
      await foreign.exited;
    }
  });

  rootTest("a keeper that is gone is never joined, and leaves no mount or loop device behind", async () => {
    const k = await keeperWithVolume("gone");
    const pid = k.keeper.pid;
    await k.keeper.stop();
    const r = await launch(pid, "echo ran");
    expect(r.stdout).toBe("");
    expect(r.code).toBe(125);
    expect(k.keeper.alive()).toBe(false);
    await destroyScratch(cfg, k.volume); // waits for the loop device to clear; throws if it does not
    expect(hostMounts()).toBe(mountsAtStart);
  });

  rootTest(
    "a job's root is the keeper's skeleton: read-only, masked, with its own /proc, /dev/shm and /tmp, and neither the skeleton nor the volume shows elsewhere in it",
    async () => {
      const k = await keeperWithVolume("skeleton");
      try {
        const slots = join(dir, "slots");
        const r = await launch(
          k.keeper,
          [
            "touch /etc/x 2>/dev/null && echo ETC-WRITABLE",
            `cat ${dir}/masked/secret 2>/dev/null && echo MASK-LEAK`,
            `grep -c ' ${slots}' /proc/self/mountinfo`,
            "touch /dev/shm/mine && echo shm-ok",
            `echo $$; test -e /proc/${process.pid} && echo HOST-PROC`,
            "test -x /kiln/bin/kiln && echo kiln-bin",
          ].join("; "),
        );
        // No mount of the keeper's (its volume, its skeleton) shows again below the host's directories.
        expect(r.stdout).toBe("0\nshm-ok\n2\nkiln-bin\n");
        await k.keeper.wipe();
        // The next job has its own /dev/shm: nothing the first left there.
        const next = await launch(k.keeper, "ls -A /dev/shm | wc -l");
        expect(next.stdout).toBe("0\n");
        await k.keeper.wipe();
      } finally {
        await stop(k);
      }
    },
  );

  rootTest(
    "a host mount made after the keeper started makes it say it is stale; a new keeper shows the mount, read-only",
    async () => {
      const k = await keeperWithVolume("remount");
      const later = join(dir, "later");
      mkdirSync(later);
      try {
        expect((await launch(k.keeper, `ls ${later}`)).stdout).toBe("");
        Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=1m", "kiln-test-later", later]);
        writeFileSync(join(later, "file"), "new\n");
        expect(await k.keeper.wipe()).toBe("stale");
        await stop(k);
        const fresh = await keeperWithVolume("remount-2");
        try {
          const r = await launch(
            fresh.keeper,
            `cat ${later}/file; touch ${later}/x 2>/dev/null && echo WRITABLE`,
          );
          expect(r.stdout).toBe("new\n");
          expect(await fresh.keeper.wipe()).toBe("wiped");
        } finally {
          await stop(fresh);
        }
      } finally {
        Bun.spawnSync(["umount", later]);
        if (k.keeper.alive()) await stop(k);
      }
    },
  );

  rootTest(
    "without a volume a keeper holds the network namespace alone, and jobs take another scratch",
    async () => {
      const keeper = await startSlotKeeper(helper, join(dir, "slots", "none"), null, skeleton());
      try {
        expect(keeper.volume).toBeNull();
        expect(keeper.launchArgs({ skeleton: false, volume: true })).toEqual(["--slot", String(keeper.pid)]);
        const r = await launch(keeper, "df -P /tmp | tail -1 | cut -d' ' -f1", [
          "--scratch-tmpfs",
          "1048576",
        ]);
        expect(r.stdout).toBe("kiln-scratch\n");
        await keeper.wipe(); // nothing to empty; the skeleton is checked all the same
      } finally {
        await keeper.stop();
      }
    },
  );
});
