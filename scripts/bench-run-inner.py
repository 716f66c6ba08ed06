"""Runs `schedrig run --json` over the catalogue RUNS times; prints the
figures of each run and their medians."""
import json, os, statistics, subprocess, sys, time

binary, runs, topology = sys.argv[1], int(sys.argv[2]), sys.argv[3]
where = "nested test host (TCG-emulated SVM)" if os.environ.get("SCHEDRIG_IN_NESTED") == "1" else "this machine's KVM"
print(f"schedrig run benchmark on {where}: {runs} runs of the catalogue under scx_simple on {topology}")
rows = []
# Per scenario, over the runs: (overhead, setup, forking, teardown) in ms.
parts = {}
for i in range(runs):
    t = time.monotonic()
    out = subprocess.run([binary, "run", "--json", "--topology", topology], capture_output=True, text=True)
    wall = time.monotonic() - t
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
    if not lines:
        sys.exit(f"run {i}: no results: {out.stderr[-2000:]}")
    holds = sum((l["holds_ms"] or 0) for l in lines) / 1000
    vms = {}
    for l in lines:
        vms[l["vm"]] = l
    # A boot: VMM start to the scheduler attached, plus its stop after
    # the last scenario (total minus the end of its last scenario is not
    # known to the host; the time between the last TEST and the VM's end
    # is counted with the boot by taking total - attached - its scenarios).
    boot = 0.0
    for vm, l in vms.items():
        mine = [x for x in lines if x["vm"] == vm]
        scen = sum((x["elapsed_ms"] or 0) for x in mine) / 1000
        attached = (l["vm_attached_ms"] or l["vm_ready_ms"] or 0) / 1000
        total = (l["vm_total_ms"] or 0) / 1000
        boot += attached + max(0.0, total - attached - scen)
    for l in lines:
        over_ms = (l["elapsed_ms"] or 0) - (l["holds_ms"] or 0)
        parts.setdefault(l["scenario"], []).append(
            (over_ms, l["setup_ms"] or 0, l["fork_ms"] or 0, l["teardown_ms"] or 0, len(l["workers"] or [])))
    n = len(lines)
    verdicts = {}
    for l in lines:
        verdicts[l["verdict"]] = verdicts.get(l["verdict"], 0) + 1
    over = (wall - holds - boot) / n
    in_guest = sum(((l["elapsed_ms"] or 0) - (l["holds_ms"] or 0)) for l in lines) / n / 1000
    rows.append((wall, holds, len(vms), boot, over, in_guest))
    print(f"  run {i + 1}: {n} scenarios {verdicts}, wall {wall:.1f} s, holds {holds:.1f} s, "
          f"{len(vms)} boot(s) {boot:.1f} s, overhead per scenario {over:.3f} s (in the guest {in_guest:.3f} s)")
    for l in lines:
        if l["verdict"] != "pass":
            print(f"    {l['scenario']}: {l['verdict']}: {l['reason'][:300]}")
med = lambda k: statistics.median(r[k] for r in rows)
print(f"median: wall {med(0):.1f} s, holds {med(1):.1f} s, boots {med(2):.0f} taking {med(3):.1f} s, "
      f"overhead per scenario beyond its hold {med(4):.3f} s (target < 0.5 s), of it in the guest {med(5):.3f} s")
print("where the guest's overhead goes, per scenario (medians, ms; 'between' is the steps' ops and releases):")
print(f"  {'scenario':24} {'workers':>7} {'overhead':>8} {'set-up':>7} {'forking':>7} {'teardown':>8} {'between':>7}")
for name, ps in parts.items():
    m = lambda k: statistics.median(p[k] for p in ps)
    between = statistics.median(p[0] - p[1] - p[3] for p in ps)
    print(f"  {name:24} {m(4):>7.0f} {m(0):>8.0f} {m(1):>7.0f} {m(2):>7.0f} {m(3):>8.0f} {between:>7.0f}")
