// A job's cgroups: create (or reuse) one per slot in every hierarchy Kiln uses, set limits, read usage,
// kill everything inside and remove. The native launcher joins the cgroups itself by writing its pid to
// each of `procsFiles` before it unshares, so everything a job ever runs starts inside them.
//
// Hosts come in three shapes (cgroups(7)): pure v2 (one cgroup2 hierarchy, usually at /sys/fs/cgroup),
// hybrid (v1 controller hierarchies plus a controller-less cgroup2 at /sys/fs/cgroup/unified) and pure v1.
// Rather than branching on the mode everywhere, each resource is resolved to a "site" (job.ts): the v1
// hierarchy that holds its controller or, failing that, the cgroup2 hierarchy when its root offers the
// controller. Every interface file is feature-tested before use, because which files exist depends on the
// kernel's version and configuration (swap accounting, BFQ, memory.peak, cgroup.kill).
//
// One file per concern: detect.ts (the host's layout), job.ts (where a job's cgroup lives), create.ts
// (making it), limits.ts (limiting it), usage.ts (reading what it used), cleanup.ts (killing, removing and
// sweeping), files.ts (the interface files themselves). This module is the API the rest of Kiln uses.

export { isEmpty, killAll, listPids, removeCgroup, sweepCgroups } from "./cleanup.ts";
export { openJobCgroup } from "./create.ts";
export { type CgroupLayout, type CgroupMode, detectCgroups, parseCgroupMounts } from "./detect.ts";
export { attachJobCgroup, type CgroupSite, type CgroupSites, type JobCgroup } from "./job.ts";
export { applyLimits, type Limits, setDeviceRules } from "./limits.ts";
export { readUsage, resetCounters, type Usage, type UsageBaseline } from "./usage.ts";
