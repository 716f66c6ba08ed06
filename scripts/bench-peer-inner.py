"""Boots one kernel to one tiny /init under schedrig and its peers,
alternating, and prints VMM start to exit and the guest clock at init.

Arguments: SCHEDRIG VMLINUX BZIMAGE INIT RUNS. FIRECRACKER (a path)
adds Firecracker; QEMU (default qemu-system-x86_64, "" for none) adds
QEMU's microvm machine. Also boots schedrig with its real guest-init to
SRDY, to compare with the tiny /init. APPEND adds kernel arguments for
every VMM (e.g. "initcall_debug bench_peer_dmesg=1"); LOGDIR keeps each
run's console there.
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time

schedrig, vmlinux, bzimage, init, runs = sys.argv[1:6]
runs = int(runs)
MEM_MIB, VCPUS = 256, 1
# schedrig's base command line (vmm/src/builder.rs BASE_CMDLINE); schedrig
# adds nothing to it for an own initrd, so every VMM gets this line.
CMDLINE = ("console=ttyS0 loglevel=6 reboot=k panic=-1 oops=panic pci=off "
           "8250.nr_uarts=2 initcall_blacklist=i8042_init,cmos_init no_timer_check tsc=reliable")
APPEND = os.environ.get("APPEND", "").strip()
LOGDIR = os.environ.get("LOGDIR", "")
MARK = "bench-peer-init: guest clock "
DEADLINE_S = 300

work = tempfile.mkdtemp(prefix="bench-peer-")


def newc(entries):
    """An uncompressed newc cpio of (name, mode, data, rdev major, minor)."""
    out = bytearray()
    for ino, (name, mode, data, major, minor) in enumerate(entries + [("TRAILER!!!", 0, b"", 0, 0)], 1):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(nb), 0))
        out += hdr.encode() + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def stage():
    """Kernel, bzImage and the initramfs in tmpfs (not 9p), as the peers'
    inputs; returns their paths."""
    k = os.path.join(work, "vmlinux")
    shutil.copyfile(vmlinux, k)
    bz = os.path.join(work, "bzImage")
    shutil.copyfile(bzimage, bz)
    cpio = os.path.join(work, "init.cpio")
    with open(init, "rb") as f:
        body = f.read()
    with open(cpio, "wb") as f:
        f.write(newc([("dev", 0o040755, b"", 0, 0),
                      ("dev/console", 0o020600, b"", 5, 1),
                      ("init", 0o100755, body, 0, 0)]))
    return k, bz, cpio


def guest_clock(text):
    for line in text.splitlines():
        if MARK in line:
            return float(line.split(MARK, 1)[1].split()[0])
    return None


def timed(cmd, log_path=None, env=None):
    t = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                           timeout=DEADLINE_S, env=env)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {DEADLINE_S} s", ""
    wall = (time.monotonic() - t) * 1000
    text = p.stdout
    if log_path and os.path.exists(log_path):
        with open(log_path, errors="replace") as f:
            text = f.read()
    if p.returncode != 0:
        return None, f"exit {p.returncode}: {(p.stderr or p.stdout)[-800:]}", text
    return wall, None, text


def run_schedrig(k, cpio, i):
    log = os.path.join(work, f"schedrig-{i}.log")
    wall, err, text = timed([schedrig, "boot", "--json", "--kernel", k, "--initrd", cpio,
                             "--memory", f"{MEM_MIB}M", "--console-log", log, "--append", APPEND],
                            log)
    return wall, err, text


def run_firecracker(fc, k, cpio, i):
    cfg = os.path.join(work, f"fc-{i}.json")
    with open(cfg, "w") as f:
        json.dump({"boot-source": {"kernel_image_path": k, "initrd_path": cpio, "boot_args": f"{CMDLINE} {APPEND}".strip()},
                   "drives": [],
                   "machine-config": {"vcpu_count": VCPUS, "mem_size_mib": MEM_MIB}}, f)
    return timed([fc, "--no-api", "--config-file", cfg, "--id", f"bench{i}"])


def run_qemu(qemu, bz, cpio, i):
    # microvm with its defaults (ACPI describes its devices), the kernel
    # by the Linux boot protocol: our kernel has no PVH note, so QEMU gets
    # the bzImage of the same build.
    return timed([qemu, "-M", "microvm,rtc=off", "-enable-kvm", "-cpu", "host",
                  "-m", f"{MEM_MIB}M", "-smp", str(VCPUS), "-nodefaults", "-no-user-config",
                  "-nographic", "-serial", "stdio", "-no-reboot",
                  "-kernel", bz, "-initrd", cpio, "-append", f"{CMDLINE} {APPEND}".strip()])


def run_schedrig_ready(k, i):
    """schedrig with its real guest-init, to SRDY (ready_ms from process start)."""
    t = time.monotonic()
    p = subprocess.run([schedrig, "boot", "--json", "--kernel", k, "--memory", f"{MEM_MIB}M"],
                       capture_output=True, text=True, timeout=DEADLINE_S)
    wall = (time.monotonic() - t) * 1000
    try:
        r = json.loads(p.stdout)
    except json.JSONDecodeError:
        return None, f"no JSON: {p.stderr[-800:]}", None
    if r["verdict"] != "ok":
        return None, f"verdict {r['verdict']}: {r['reason']}", None
    return r["ready_ms"], None, (wall, r)


def main():
    k, bz, cpio = stage()
    vmms = [("schedrig", lambda i: run_schedrig(k, cpio, i))]
    fc = os.environ.get("FIRECRACKER", "")
    if fc:
        vmms.append(("firecracker", lambda i: run_firecracker(fc, k, cpio, i)))
    qemu = os.environ.get("QEMU", "qemu-system-x86_64")
    if qemu:
        vmms.append(("qemu-microvm", lambda i: run_qemu(qemu, bz, cpio, i)))
    where = ("nested test host (TCG-emulated SVM)" if os.environ.get("SCHEDRIG_IN_NESTED") == "1"
             else "this machine's KVM")
    print(f"bench-peer: {runs} runs each, alternating, on {where}; {VCPUS} vCPU, {MEM_MIB} MiB; "
          f"kernel {vmlinux}" + (f"; appended: {APPEND}" if APPEND else ""), flush=True)
    walls = {n: [] for n, _ in vmms}
    clocks = {n: [] for n, _ in vmms}
    ready, ready_wall = [], []
    for i in range(runs):
        for name, run in vmms:
            wall, err, text = run(i)
            if LOGDIR:
                with open(os.path.join(LOGDIR, f"{name}-{i}.log"), "w") as f:
                    f.write(text)
            if err:
                sys.exit(f"{name} run {i}: {err}\n--- output ---\n{text[-1500:]}")
            clock = guest_clock(text)
            if clock is None:
                sys.exit(f"{name} run {i}: the init's line never came\n--- output ---\n{text[-1500:]}")
            walls[name].append(wall)
            clocks[name].append(clock * 1000)
            print(f"  run {i} {name:<13} start to exit {wall:8.0f} ms  guest clock at init {clock * 1000:7.0f} ms",
                  flush=True)
        r, err, extra = run_schedrig_ready(k, i)
        if err:
            sys.exit(f"schedrig (guest-init) run {i}: {err}")
        ready.append(r)
        ready_wall.append(extra[0])
        print(f"  run {i} schedrig guest-init: time to SRDY {r:8.0f} ms  (start to exit {extra[0]:.0f} ms)",
              flush=True)

    def fmt(v):
        return f"{statistics.median(v):8.0f} {min(v):8.0f} {max(v):8.0f}"

    print("\nmedian / min / max, ms")
    print(f"{'VMM':<30} {'start to exit':>26}   {'guest clock at init':>26}")
    for name, _ in vmms:
        print(f"{name:<30} {fmt(walls[name])}   {fmt(clocks[name])}")
    print(f"{'schedrig, guest-init to SRDY':<30} {fmt(ready)}")
    base = statistics.median
    for name, _ in vmms[1:]:
        print(f"ratio schedrig / {name}: start to exit {base(walls['schedrig']) / base(walls[name]):.2f}, "
              f"guest clock at init {base(clocks['schedrig']) / base(clocks[name]):.2f}")
    print(f"ratio schedrig time to SRDY (guest-init) / start to exit (tiny init): "
          f"{base(ready) / base(walls['schedrig']):.2f}")


try:
    main()
finally:
    shutil.rmtree(work, ignore_errors=True)
