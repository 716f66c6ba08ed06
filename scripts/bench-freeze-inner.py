"""The part of scripts/bench-freeze that runs where the VMs boot."""
import json, subprocess, sys
bin, freezes = sys.argv[1], int(sys.argv[2])
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else None
hold = max(5, freezes // 8 + 4)
print(f"freeze benchmark: {freezes} freezes per guest, each released at once, guest busy (--hold {hold})")
print(f"{'vCPUs':>5} {'ok':>5} {'park p50':>9} {'park p99':>9} {'total p50':>10} {'total p99':>10}  time hidden")
for topo, n in [("1n1l1c1t", 1), ("1n1l2c1t", 2), ("1n2l2c1t", 4)]:
    out = subprocess.run([bin, "boot", "--json", "--topology", topo, "--hold", str(hold),
                          "--freeze-test", f"{freezes}:0"], capture_output=True, text=True)
    try:
        r = json.loads(out.stdout)
    except ValueError:
        print(f"{n:>5} boot failed: {out.stderr.strip()[-300:]}")
        continue
    fs = r.get("freezes", [])
    ok = [f for f in fs if f["error"] is None]
    park = [f["park_us"] for f in ok]
    total = [f["total_us"] for f in ok]
    hidden = sum(1 for f in ok if f["time_hidden"])
    errs = {f["error"] for f in fs if f["error"]}
    print(f"{n:>5} {len(ok):>5} {pct(park, 50):>9} {pct(park, 99):>9} {pct(total, 50):>10} {pct(total, 99):>10}  {hidden}/{len(ok)}"
          + (f"  errors: {sorted(errs)[:2]}" if errs else ""))
