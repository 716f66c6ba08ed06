"""Runs `schedrig boot --scheduler scx_simple --json` and `schedrig
selftest --json` repeatedly and prints the figures."""
import json, os, statistics, subprocess, sys, time

binary, runs, selftest_runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
where = "nested test host (TCG-emulated SVM)" if os.environ.get("SCHEDRIG_IN_NESTED") == "1" else "this machine's KVM"
print(f"scheduler benchmark on {where}: {runs} boots of scx_simple (1 vCPU, hold 1 s), {selftest_runs} selftest suites (1n1l2c1t)")

def stats(name, vals, unit):
    print(f"  {name:<42} median {statistics.median(vals):10.1f} {unit}  min {min(vals):10.1f}  max {max(vals):10.1f}")

rows = []
for i in range(runs):
    for attempt in (1, 2):
        out = subprocess.run([binary, "boot", "--json", "--scheduler", "scx_simple", "--hold", "1",
                              "--boot-timeout", "150", "--timeout", "400"], capture_output=True, text=True)
        try:
            r = json.loads(out.stdout)
        except json.JSONDecodeError:
            sys.exit(f"boot {i} failed: {out.stderr[-2000:]}")
        if attempt == 1 and r["emulation_artefact"]:
            continue
        break
    if r["verdict"] != "ok" or not r["scheduler"]["attached"]:
        sys.exit(f"boot {i}: verdict {r['verdict']}: {r['reason']}")
    rows.append(r)
stats("VMM start -> SRDY", [r["ready_ms"] for r in rows], "ms")
stats("SRDY -> scheduler enabled", [r["scheduler"]["attach_ms"] - r["ready_ms"] for r in rows], "ms")
stats("per-test initramfs preparation", [r["per_test_archive"]["prep_us"] / 1000 for r in rows], "ms")
print(f"  job archive built per boot: {rows[0]['per_test_archive']['bytes']} bytes (the scheduler's own archive is cached and mapped)")

walls = []
for i in range(selftest_runs):
    t = time.monotonic()
    out = subprocess.run([binary, "selftest", "--json"], capture_output=True, text=True)
    wall = time.monotonic() - t
    try:
        r = json.loads(out.stdout)
    except json.JSONDecodeError:
        sys.exit(f"selftest {i} failed: {out.stderr[-2000:]}")
    print(f"  selftest run {i + 1}: {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped, {wall:.0f} s")
    walls.append(wall)
if walls:
    stats("selftest suite wall time", walls, "s ")
