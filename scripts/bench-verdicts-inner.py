"""Runs the stability matrix and prints majority counts per cell."""
import collections, json, os, subprocess, sys, time

binary, runs, per_vm, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
scenarios = ["steady", "uneven_weights", "cpuset_split"]
schedulers = [("scx_simple", []), ("EEVDF", ["--scheduler", "eevdf"]),
              ("scx_qmap -t 5", ["--scheduler", "scx_qmap", "--sched-args", "-t 5"])]
where = "nested test host (TCG-emulated SVM)" if os.environ.get("SCHEDRIG_IN_NESTED") == "1" else "this machine's KVM"
print(f"verdict stability on {where}: {runs} runs of {', '.join(scenarios)} per scheduler, "
      f"{'one VM per run' if per_vm else 'all runs in one schedrig run'}, {duration} s each, topology 1n2l1c1t")

def run(args, reps):
    argv = [binary, "run", "--json", "--duration", duration] + args
    for _ in range(reps):
        for s in scenarios:
            argv += ["--scenario", s]
    out = subprocess.run(argv, capture_output=True, text=True)
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
    if not lines:
        sys.exit(f"{argv}: no results: {out.stderr[-2000:]}")
    return lines

t0 = time.monotonic()
for name, args in schedulers:
    cells = collections.defaultdict(list)
    reasons = collections.defaultdict(list)
    batches = [run(args, 1) for _ in range(runs)] if per_vm else [run(args, runs)]
    for lines in batches:
        for l in lines:
            cells[l["scenario"]].append(l["verdict"])
            if l["verdict"] != "pass":
                reasons[(l["scenario"], l["verdict"])].append(l["reason"])
    for s in scenarios:
        c = collections.Counter(cells[s])
        verdict, n = c.most_common(1)[0]
        flag = "" if n >= 0.9 * len(cells[s]) else "   <-- below 9 of 10"
        print(f"  {name:<14} {s:<15} {verdict:<12} {n}/{len(cells[s])}  {dict(c)}{flag}")
        for v in c:
            if reasons.get((s, v)):
                kind = "majority" if v == verdict else "minority"
                print(f"      {kind} {v}, e.g.: {reasons[(s, v)][0][:300]}")
print(f"wall {time.monotonic() - t0:.0f} s")
