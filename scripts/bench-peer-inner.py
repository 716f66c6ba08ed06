"""Boots one kernel to one tiny /init under schedrig and its peers,
alternating, and prints VMM start to exit and the guest clock at init.

Arguments: SCHEDRIG VMLINUX BZIMAGE INIT RUNS. FIRECRACKER (a path)
adds Firecracker; QEMU (default qemu-system-x86_64, "" for none) adds
QEMU's microvm machine. Also boots schedrig with its real guest-init to
SRDY, to compare with the tiny /init. APPEND adds kernel arguments for
every VMM (e.g. "initcall_debug bench_peer_dmesg=1"); LOGDIR keeps each
run's console there.
"""
import json, os, select, shutil, statistics, subprocess, sys, tempfile, time

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
KVMCLOCK = "bench-peer-init: kvm-clock at sched_clock stable "
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
    """Kernel (and its config), bzImage and the initramfs in tmpfs (not
    9p), as the peers' inputs; returns their paths."""
    k = os.path.join(work, "vmlinux")
    shutil.copyfile(vmlinux, k)
    # The kernel's config beside it, as in the kernel cache (schedrig
    # reads two options from it; without it, the image's IKCONFIG).
    config = os.path.join(os.path.dirname(vmlinux), "config")
    if os.path.exists(config):
        shutil.copyfile(config, os.path.join(work, "config"))
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


def guest_clock(text, mark=MARK):
    for line in text.splitlines():
        if mark in line:
            return float(line.split(mark, 1)[1].split()[0])
    return None


def timed(cmd, console_fifo=None):
    """Runs `cmd`; returns (wall ms, error, console text, ms from start to
    the init's line). The console is the process's stdout, or the FIFO
    `console_fifo` (schedrig's --console-log), read as it comes, so the
    init's line is timed on arrival (schedrig flushes its console log at
    least every 20 ms)."""
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fds = [p.stdout.fileno(), p.stderr.fileno()]
    if console_fifo:
        # O_RDWR: never blocks on a missing writer, never sees EOF.
        fds.append(os.open(console_fifo, os.O_RDWR | os.O_NONBLOCK))
    chunks = {fd: bytearray() for fd in fds}
    seen = None
    watched = fds[-1] if console_fifo else fds[0]
    deadline = t + DEADLINE_S
    open_fds = set(fds)
    while True:
        now = time.monotonic()
        if now > deadline:
            p.kill()
            p.wait()
            return None, f"timed out after {DEADLINE_S} s", chunks[watched].decode(errors="replace"), None
        exited = p.poll() is not None
        ready, _, _ = select.select(list(open_fds), [], [], 0.01 if exited else 0.05)
        for fd in ready:
            try:
                b = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not b:
                open_fds.discard(fd)
                continue
            chunks[fd] += b
            if fd == watched and seen is None and MARK.encode() in chunks[fd]:
                seen = time.monotonic()
        if exited and not ready:
            break
    wall = (time.monotonic() - t) * 1000
    if console_fifo:
        os.close(fds[-1])
    text = chunks[watched].decode(errors="replace")
    at_init = (seen - t) * 1000 if seen else None
    if p.returncode != 0:
        err = (chunks[fds[1]] or chunks[fds[0]]).decode(errors="replace")
        return None, f"exit {p.returncode}: {err[-800:]}", text, None
    timed.stdout = chunks[fds[0]].decode(errors="replace")
    return wall, None, text, at_init


def vmm_setup_ms(name, text):
    """The VMM's own start-up, where it says: schedrig's setup_ms (process
    start to the first KVM_RUN), Firecracker's log from "Running
    Firecracker" to "Successfully started microvm" (its main to the
    vCPUs' start, without the exec)."""
    if name == "schedrig":
        try:
            return json.loads(timed.stdout)["setup_ms"]
        except (ValueError, KeyError):
            return None
    if name == "firecracker":
        stamps = {}
        for line in text.splitlines():
            for key, mark in (("start", "Running Firecracker"), ("vm", "Successfully started microvm")):
                if mark in line and key not in stamps:
                    try:
                        hms = line.split()[0].split("T")[1]
                        h, m, sec = hms.split(":")
                        stamps[key] = (int(h) * 60 + int(m)) * 60 + float(sec)
                    except (IndexError, ValueError):
                        pass
        if len(stamps) == 2:
            return (stamps["vm"] - stamps["start"]) * 1000
    return None


def run_schedrig(k, cpio, i):
    fifo = os.path.join(work, f"console-{i}")
    os.mkfifo(fifo)
    try:
        return timed([schedrig, "boot", "--json", "--kernel", k, "--initrd", cpio,
                      "--memory", f"{MEM_MIB}M", "--console-log", fifo, "--append", APPEND], fifo)
    finally:
        os.unlink(fifo)


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
    steps = next((line.split("schedrig-guest-init: ", 1)[1] for line in r["console_tail"].splitlines()
                  if "schedrig-guest-init: SRDY at guest clock" in line), "(no SRDY line)")
    return r["ready_ms"], None, (wall, steps)


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
    # One untimed boot first: it fills the introspection cache for this
    # copy of the kernel, as any earlier run on the kernel would have.
    _, err, _ = run_schedrig_ready(k, -1)
    if err:
        sys.exit(f"schedrig (guest-init) warm-up run: {err}")
    walls = {n: [] for n, _ in vmms}
    inits = {n: [] for n, _ in vmms}
    clocks = {n: [] for n, _ in vmms}
    kvmclocks = {n: [] for n, _ in vmms}
    ready, ready_wall = [], []
    for i in range(runs):
        for name, run in vmms:
            wall, err, text, at_init = run(i)
            if LOGDIR:
                with open(os.path.join(LOGDIR, f"{name}-{i}.log"), "w") as f:
                    f.write(text)
            if err:
                sys.exit(f"{name} run {i}: {err}\n--- output ---\n{text[-1500:]}")
            clock = guest_clock(text)
            kvmclock = guest_clock(text, KVMCLOCK)
            if clock is None or at_init is None:
                sys.exit(f"{name} run {i}: the init's line never came\n--- output ---\n{text[-1500:]}")
            walls[name].append(wall)
            inits[name].append(at_init)
            clocks[name].append(clock * 1000)
            if kvmclock is not None:
                kvmclocks[name].append(kvmclock * 1000)
            setup = vmm_setup_ms(name, text)
            print(f"  run {i} {name:<13} start to exit {wall:8.0f} ms  start to init's line {at_init:8.0f} ms  "
                  f"guest clock at init {clock * 1000:7.0f} ms  kvm-clock at late init "
                  f"{kvmclock * 1000 if kvmclock is not None else float('nan'):7.0f} ms"
                  + (f"  (VMM start-up {setup:.0f} ms)" if setup is not None else ""), flush=True)
        r, err, extra = run_schedrig_ready(k, i)
        if err:
            sys.exit(f"schedrig (guest-init) run {i}: {err}")
        ready.append(r)
        ready_wall.append(extra[0])
        print(f"  run {i} schedrig guest-init: time to SRDY {r:8.0f} ms  (start to exit {extra[0]:.0f} ms)\n"
              f"        {extra[1]}", flush=True)

    def fmt(v):
        if not v:
            return f"{'-':>8} {'-':>8} {'-':>8}"
        return f"{statistics.median(v):8.0f} {min(v):8.0f} {max(v):8.0f}"

    print("\nmedian / min / max, ms")
    print(f"{'VMM':<30} {'start to exit':>26}   {'start to init line':>26}   {'guest clock at init':>26}"
          f"   {'kvm-clock at late init':>26}")
    for name, _ in vmms:
        print(f"{name:<30} {fmt(walls[name])}   {fmt(inits[name])}   {fmt(clocks[name])}   {fmt(kvmclocks[name])}")
    print(f"{'schedrig, guest-init to SRDY':<30} {fmt(ready)}")
    base = statistics.median
    for name, _ in vmms[1:]:
        print(f"ratio schedrig / {name}: start to exit {base(walls['schedrig']) / base(walls[name]):.2f}, "
              f"start to init line {base(inits['schedrig']) / base(inits[name]):.2f}, "
              f"guest clock at init {base(clocks['schedrig']) / base(clocks[name]):.2f}"
              + (f", kvm-clock at late init {base(kvmclocks['schedrig']) / base(kvmclocks[name]):.2f}"
                 if kvmclocks['schedrig'] and kvmclocks[name] else ""))
    print(f"ratio schedrig time to SRDY (guest-init) / start to exit (tiny init): "
          f"{base(ready) / base(walls['schedrig']):.2f}")


try:
    main()
finally:
    shutil.rmtree(work, ignore_errors=True)
