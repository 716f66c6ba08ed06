//! Worker processes and what they measure.
//!
//! Each worker is a forked process with one [`Slot`] of shared memory
//! (mapped before the fork), where it keeps its counters live: the parent
//! reads them at any time and a SIGKILL loses nothing. A child of a
//! multi-threaded parent may only make async-signal-safe calls: the loops
//! below make raw syscalls and touch the slots, and never allocate.
//!
//! Long (about 660 lines before its tests): every work type's loop and
//! the timing, futex and affinity helpers they share must live in the
//! fork child's allocation-free world; split up, the rule that nothing
//! here allocates would have to be kept across files.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use schedrig_scenarios::{Policy, WorkType};

/// Wake-latency histogram buckets (log-linear: exact below 16 µs, then 8
/// per power of two).
pub const HIST_BUCKETS: usize = 256;
/// Per-epoch "ran on after settling" masks (see [`Slot::strict`]).
pub const EPOCHS: usize = 4;
/// Fan-out rounds remembered (see [`Slot::wake_ring`]).
pub const WAKE_RING: usize = 8;
/// A work unit of pure computation, µs.
pub const UNIT_US: u64 = 100;

/// One worker's live counters. CPUs are bits of a u64: the test kernel
/// has CONFIG_NR_CPUS=64 and larger topologies are refused on the host.
#[repr(C)]
pub struct Slot {
    /// 0 until the parent releases the worker (a futex word).
    pub go: AtomicU32,
    /// Set by the worker once it is named and about to wait for `go`:
    /// released only then, all start from the same line.
    pub ready: AtomicU32,
    /// Bumped by whoever wakes this worker (a futex word).
    pub seq: AtomicU32,
    /// When the waker woke it (CLOCK_MONOTONIC ns).
    pub wake_ts_ns: AtomicU64,
    pub units: AtomicU64,
    /// Every CPU it ran on.
    pub ran: AtomicU64,
    /// Its cpuset epoch: bumped by the parent at each cpuset change.
    pub epoch: AtomicU32,
    /// CPUs it ran on after `settle_until_ns`, per epoch (mod [`EPOCHS`]).
    pub strict: [AtomicU64; EPOCHS],
    /// Samples before this are not held to the cpuset (a change is under
    /// way); u64::MAX while the parent writes the cpuset.
    pub settle_until_ns: AtomicU64,
    /// AffinityChurn picks from these CPUs.
    pub churn_mask: AtomicU64,
    pub migrations: AtomicU64,
    pub max_gap_ns: AtomicU64,
    pub gap_end_ns: AtomicU64,
    pub gap_cpu_before: AtomicU32,
    pub gap_cpu_after: AtomicU32,
    pub wakeups: AtomicU64,
    /// Since when the worker is owed the CPU without having reached a
    /// checkpoint: its last checkpoint, the end of a sleep it took, or
    /// the moment a peer woke it; u64::MAX while it waits on purpose.
    /// At the stop, `now - due_ns` is a gap too (a worker stuck to the
    /// end would otherwise never report one).
    pub due_ns: AtomicU64,
    /// The CPU of its last checkpoint.
    pub last_cpu: AtomicU32,
    /// Fan-out waker: when round `seq` was sent, at `[seq % WAKE_RING]`,
    /// so a wakee that missed rounds measures from the first it missed.
    pub wake_ring: [AtomicU64; WAKE_RING],
    pub hist: [AtomicU32; HIST_BUCKETS],
}

/// What a child needs to know, copied before the fork.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub work: WorkType,
    pub slot: usize,
    /// Ping-pong partner's slot, or the fan-out waker's slot (wakees).
    pub peer: Option<usize>,
    /// Leads its pair or group (pings first, or is the fan-out waker).
    pub leader: bool,
    /// Pipe ping-pong: read and write ends (-1 when unused).
    pub rd: i32,
    pub wr: i32,
    pub loops_per_us: u64,
    pub policy: Policy,
    /// NUL-terminated process name.
    pub name: [u8; 16],
}

/// Shared memory for `n` slots, mapped MAP_SHARED so children write into
/// the parent's view.
pub struct Slots {
    base: *mut Slot,
    n: usize,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Slots {}

impl Slots {
    pub fn map(n: usize) -> std::io::Result<Slots> {
        let len = n * std::mem::size_of::<Slot>();
        // SAFETY: an anonymous shared mapping; no existing memory is
        // touched. The result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Slots { base: p.cast(), n })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Slot `i` (panics past the end: callers allocate within `len`).
    pub fn get(&self, i: usize) -> &Slot {
        assert!(i < self.n, "slot {i} of {}", self.n);
        // SAFETY: i is in bounds of the mapping, which lives as long as
        // self; Slot is all atomics, valid when zeroed.
        unsafe { &*self.base.add(i) }
    }

    /// Zeroes every slot (no worker may be alive).
    pub fn reset(&mut self) {
        // SAFETY: the mapping is n slots long; all-zero is a valid Slot;
        // &mut self means no reference into it is alive in this process.
        unsafe { std::ptr::write_bytes(self.base, 0, self.n) };
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what map() mapped; no reference outlives
        // self.
        unsafe {
            libc::munmap(self.base.cast(), self.n * std::mem::size_of::<Slot>());
        }
    }
}

/// CLOCK_MONOTONIC in ns.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cpu() -> u32 {
    // SAFETY: no arguments; -1 on error.
    let c = unsafe { libc::sched_getcpu() };
    c.max(0) as u32
}

/// Histogram bucket of a latency in µs.
pub fn bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize; // >= 4
    let sub = ((us >> (e - 3)) & 7) as usize;
    (16 + (e - 4) * 8 + sub).min(HIST_BUCKETS - 1)
}

/// The smallest latency (µs) of bucket `b`'s upper neighbour: what a
/// percentile falling in `b` is reported as (an upper bound).
pub fn bucket_upper(b: usize) -> u64 {
    if b < 16 {
        return b as u64 + 1;
    }
    let e = (b - 16) / 8 + 4;
    let sub = ((b - 16) % 8) as u64;
    ((8 + sub + 1) << (e - 3)).min(u64::MAX >> 1)
}

/// Percentile `p` (0..100) of a histogram, None when empty.
pub fn percentile(hist: &[u32], p: f64) -> Option<u64> {
    let total: u64 = hist.iter().map(|&c| c as u64).sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64 * p / 100.0).ceil() as u64).max(1);
    let mut seen = 0;
    for (b, &c) in hist.iter().enumerate() {
        seen += c as u64;
        if seen >= want {
            return Some(bucket_upper(b));
        }
    }
    None
}

/// Progress checkpoints: gaps, CPUs, migrations, cpuset samples.
struct Meter<'a> {
    s: &'a Slot,
    last_ns: u64,
    last_cpu: u32,
    max_gap: u64,
}

impl<'a> Meter<'a> {
    /// Starts measuring from the worker's release (the parent stored it
    /// in `due_ns`), not from its first run: the wait for the CPU after
    /// the release is the scheduler's doing like any later one.
    fn new(s: &'a Slot) -> Meter<'a> {
        let now = now_ns();
        // u64::MAX: no release time (calibration): from the first run.
        let released = s.due_ns.load(Relaxed);
        let mut m = Meter {
            s,
            last_ns: released.min(now),
            last_cpu: cpu(),
            max_gap: 0,
        };
        m.sample(now, m.last_cpu);
        s.due_ns.store(m.last_ns, Relaxed);
        s.last_cpu.store(m.last_cpu, Relaxed);
        m
    }

    fn sample(&mut self, now: u64, c: u32) {
        let bit = 1u64.checked_shl(c).unwrap_or(0);
        self.s.ran.fetch_or(bit, Relaxed);
        let e = self.s.epoch.load(Acquire) as usize;
        if now >= self.s.settle_until_ns.load(Acquire) {
            self.s.strict[e % EPOCHS].fetch_or(bit, Relaxed);
        }
    }

    /// The end of a work unit. The clock is read before the CPU: a sample
    /// taken across a cpuset change then counts as before it (see
    /// `sample`), never a CPU from before it as after.
    fn checkpoint(&mut self) {
        let now = now_ns();
        let c = cpu();
        let gap = now.saturating_sub(self.last_ns);
        if gap > self.max_gap {
            self.max_gap = gap;
            self.s.gap_end_ns.store(now, Relaxed);
            self.s.gap_cpu_before.store(self.last_cpu, Relaxed);
            self.s.gap_cpu_after.store(c, Relaxed);
            self.s.max_gap_ns.store(gap, Relaxed);
        }
        if c != self.last_cpu {
            self.s.migrations.fetch_add(1, Relaxed);
        }
        self.sample(now, c);
        self.s.units.fetch_add(1, Relaxed);
        self.s.due_ns.store(now, Relaxed);
        self.s.last_cpu.store(c, Relaxed);
        self.last_ns = now;
        self.last_cpu = c;
    }

    /// About to wait for a peer: not owed the CPU until woken.
    fn wait(&self) {
        self.s.due_ns.store(u64::MAX, Relaxed);
    }

    /// About to sleep for `ns`: owed the CPU from its end.
    fn sleep(&self, ns: u64) {
        self.s.due_ns.store(now_ns().saturating_add(ns), Relaxed);
    }

    /// After a sleep the work type does on purpose: not a gap.
    fn resume(&mut self) {
        self.last_ns = now_ns();
        self.s.due_ns.store(self.last_ns, Relaxed);
        let c = cpu();
        if c != self.last_cpu {
            self.s.migrations.fetch_add(1, Relaxed);
        }
        self.last_cpu = c;
        self.sample(self.last_ns, c);
    }

    fn woke(&mut self, sent_ns: u64) {
        let lat_us = now_ns().saturating_sub(sent_ns) / 1000;
        self.s.hist[bucket(lat_us)].fetch_add(1, Relaxed);
        self.s.wakeups.fetch_add(1, Relaxed);
    }
}

fn spin(loops: u64, x: &mut u64) {
    for _ in 0..loops {
        *x = std::hint::black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
}

/// Iterations of [`spin`]'s step per µs on this CPU, measured over ~20 ms.
pub fn calibrate_loops_per_us() -> u64 {
    let mut x = 1;
    let mut n = 10_000u64;
    loop {
        let t = now_ns();
        spin(n, &mut x);
        let dt = now_ns().saturating_sub(t);
        if dt >= 20_000_000 || n >= 1 << 34 {
            return (n * 1000 / dt.max(1)).max(1);
        }
        n *= 2;
    }
}

fn futex_wait(word: &AtomicU32, val: u32, timeout_ms: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ms / 1000) as i64,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as i64,
    };
    // SAFETY: FUTEX_WAIT (shared: the word is in a MAP_SHARED mapping)
    // reads the aligned u32 and the timespec, both valid for the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            val,
            &ts as *const libc::timespec,
        );
    }
}

pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on an aligned u32 in shared memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

/// Waits until `word` differs from `seen` (rechecking every 100 ms);
/// returns the new value.
fn wait_change(word: &AtomicU32, seen: u32) -> u32 {
    loop {
        let v = word.load(Acquire);
        if v != seen {
            return v;
        }
        futex_wait(word, seen, 100);
    }
}

fn sleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) * 1_000_000) as i64,
    };
    // SAFETY: reads the timespec; the remainder pointer may be null.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// sched_setaffinity of `pid` (0: the caller) to `cpus`. No allocation:
/// the zygote and forked children call it.
pub fn set_cpus_of(pid: i32, cpus: impl IntoIterator<Item = usize>) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data on the stack; the call reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus.into_iter().filter(|&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lets the calling process run on every CPU its cpuset allows: a worker
/// forked by a pinned process (the zygote, or guest-init during set-up)
/// inherits its pin as the kernel's "user-requested" mask, and every
/// later cpuset change would be narrowed to it. Bits past the last CPU
/// are ignored by the kernel; a failure leaves the worker as it was.
pub fn unpin_self() {
    let _ = set_cpus_of(0, 0..libc::CPU_SETSIZE as usize);
}

/// linux/sched.h: children of the caller start as SCHED_OTHER.
const SCHED_RESET_ON_FORK: i32 = 0x4000_0000;

/// Makes the calling thread SCHED_FIFO (lowest priority), or back to
/// SCHED_OTHER with `false`; the processes it forks start as SCHED_OTHER.
/// Why: the harness's own work (forking, releasing, polling, killing)
/// must not queue behind the workers it measures, and a scheduler that
/// starves its tasks must not starve the harness. The real-time class
/// sits above sched_ext and the fair class, and the harness sleeps
/// between its short steps, so the workers lose only those steps.
pub fn set_harness_realtime(on: bool) -> std::io::Result<()> {
    let (policy, prio) = if on {
        (libc::SCHED_FIFO | SCHED_RESET_ON_FORK, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    set_scheduler(policy, prio)
}

/// sched_setscheduler of the calling thread.
fn set_scheduler(policy: i32, prio: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: reads param for the call.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_policy(p: Policy) {
    let policy = match p {
        Policy::Other => libc::SCHED_OTHER,
        Policy::Batch => libc::SCHED_BATCH,
        Policy::Idle => libc::SCHED_IDLE,
    };
    // A refusal leaves the worker in its policy; its figures still count.
    let _ = set_scheduler(policy, 0);
}

fn pin_to_random(mask: u64, rng: &mut u64) {
    if mask == 0 {
        return;
    }
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let n = mask.count_ones() as u64;
    let mut k = *rng % n;
    let mut cpu = 0;
    for b in 0..64 {
        if mask & (1 << b) != 0 {
            if k == 0 {
                cpu = b;
                break;
            }
            k -= 1;
        }
    }
    let _ = set_cpus_of(0, [cpu]);
}

fn write_ts(fd: i32, ts: u64) -> bool {
    let b = ts.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer.
    unsafe { libc::write(fd, b.as_ptr().cast(), 8) == 8 }
}

fn read_ts(fd: i32) -> Option<u64> {
    let mut b = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
    (n == 8).then(|| u64::from_ne_bytes(b))
}

/// Longest sleep at the start line between looks at the release flag.
const START_LINE_WAIT_MS: u64 = 60_000;

/// The child: waits to be released, then works until killed.
///
/// Long: one arm per work type, each a short loop over the same locals
/// (the meter, the spin state, the random state) set up above them.
pub fn child_main(slots: &Slots, spec: &Spec) -> ! {
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, spec.name.as_ptr()) };
    let s = slots.get(spec.slot);
    s.ready.store(1, Release);
    // Asleep until the release's wake: a worker that woke up now and then
    // at its start line would become runnable before its release, and a
    // scheduler that holds a task back from its enqueue (the scx_unfair
    // fixture) would start its clock early. The timeout only covers a lost
    // wake; the harness kills workers that are never released.
    while s.go.load(Acquire) == 0 {
        futex_wait(&s.go, 0, START_LINE_WAIT_MS);
    }
    set_policy(spec.policy);
    let lpu = spec.loops_per_us.max(1);
    let mut x = spec.slot as u64 + 1;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (spec.slot as u64 + 1);
    let mut m = Meter::new(s);
    match spec.work {
        WorkType::CpuSpin | WorkType::NiceSweep => loop {
            spin(UNIT_US * lpu, &mut x);
            m.checkpoint();
        },
        WorkType::YieldHeavy => loop {
            spin(20 * lpu, &mut x);
            // SAFETY: no arguments.
            unsafe { libc::sched_yield() };
            m.checkpoint();
        },
        WorkType::Mixed { spin_us } => loop {
            spin(spin_us.max(1) as u64 * lpu, &mut x);
            // SAFETY: no arguments.
            unsafe { libc::sched_yield() };
            m.checkpoint();
        },
        WorkType::Bursty {
            burst_ms,
            sleep_ms: nap,
        } => loop {
            let end = now_ns() + burst_ms as u64 * 1_000_000;
            while now_ns() < end {
                spin(UNIT_US * lpu, &mut x);
                m.checkpoint();
            }
            m.sleep(nap as u64 * 1_000_000);
            sleep_ms(nap as u64);
            m.resume();
        },
        WorkType::AffinityChurn => {
            let mut i = 0u64;
            loop {
                spin(UNIT_US * lpu, &mut x);
                m.checkpoint();
                i += 1;
                if i.is_multiple_of(10) {
                    pin_to_random(s.churn_mask.load(Relaxed), &mut rng);
                }
            }
        }
        WorkType::PolicyChurn => {
            let policies = [Policy::Other, Policy::Batch, Policy::Idle];
            let mut i = 0usize;
            loop {
                spin(UNIT_US * lpu, &mut x);
                m.checkpoint();
                i += 1;
                if i.is_multiple_of(50) {
                    set_policy(policies[(i / 50) % 3]);
                }
            }
        }
        WorkType::ForkExit => loop {
            spin(20 * lpu, &mut x);
            m.checkpoint();
            // A raw fork: glibc's fork() would take its internal locks,
            // which a worker (itself made by a raw clone3) cannot trust.
            // SAFETY: clone with only SIGCHLD is fork; the grandchild
            // makes one raw exit_group call.
            let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) } as i32;
            if pid == 0 {
                // SAFETY: ends the grandchild at once.
                unsafe { libc::syscall(libc::SYS_exit_group, 0) };
            }
            if pid > 0 {
                m.wait();
                // SAFETY: reaps our own child; status may be null.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            m.resume();
        },
        WorkType::PipePingPong => {
            let peer = slots.get(spec.peer.unwrap_or(spec.slot));
            // The writer marks its peer owed the CPU from the write on.
            let ping = |peer: &Slot| {
                let t = now_ns();
                peer.due_ns.store(t, Relaxed);
                write_ts(spec.wr, t)
            };
            if spec.leader && !ping(peer) {
                idle_forever();
            }
            loop {
                m.checkpoint();
                m.wait();
                let Some(ts) = read_ts(spec.rd) else {
                    idle_forever()
                };
                m.woke(ts);
                m.resume();
                spin(10 * lpu, &mut x);
                if !ping(peer) {
                    idle_forever();
                }
            }
        }
        WorkType::FutexPingPong => {
            let peer = slots.get(spec.peer.unwrap_or(spec.slot));
            let mut seen = 0;
            let ping = |peer: &Slot| {
                let t = now_ns();
                peer.wake_ts_ns.store(t, Relaxed);
                peer.due_ns.store(t, Relaxed);
                peer.seq.fetch_add(1, Release);
                futex_wake(&peer.seq, 1);
            };
            if spec.leader {
                ping(peer);
            }
            loop {
                m.checkpoint();
                m.wait();
                seen = wait_change(&s.seq, seen);
                m.woke(s.wake_ts_ns.load(Relaxed));
                m.resume();
                spin(10 * lpu, &mut x);
                ping(peer);
            }
        }
        WorkType::FanOut { wakees } => {
            if spec.leader {
                loop {
                    let t = now_ns();
                    let round = s.seq.load(Relaxed).wrapping_add(1);
                    s.wake_ring[round as usize % WAKE_RING].store(t, Relaxed);
                    for i in 1..=wakees as usize {
                        if spec.slot + i < slots.len() {
                            slots.get(spec.slot + i).due_ns.store(t, Relaxed);
                        }
                    }
                    s.seq.fetch_add(1, Release);
                    futex_wake(&s.seq, i32::MAX);
                    m.checkpoint();
                    m.sleep(2_000_000);
                    sleep_ms(2);
                    m.resume();
                }
            }
            let waker = slots.get(spec.peer.unwrap_or(spec.slot));
            let mut seen = 0;
            loop {
                m.wait();
                let now_seen = wait_change(&waker.seq, seen);
                // The first round it missed (or the oldest remembered).
                let missed = now_seen.wrapping_sub(seen) as usize;
                let first = if missed <= WAKE_RING {
                    seen.wrapping_add(1)
                } else {
                    now_seen.wrapping_sub(WAKE_RING as u32 - 1)
                };
                seen = now_seen;
                m.woke(waker.wake_ring[first as usize % WAKE_RING].load(Relaxed));
                m.resume();
                spin(10 * lpu, &mut x);
                m.checkpoint();
            }
        }
    }
}

/// A partner is gone: wait to be killed.
fn idle_forever() -> ! {
    loop {
        sleep_ms(1000);
    }
}

/// Copies a histogram out of a slot.
pub fn hist_of(s: &Slot) -> Vec<u32> {
    s.hist.iter().map(|h| h.load(Relaxed)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            15,
            16,
            17,
            31,
            32,
            100,
            1000,
            65_535,
            1 << 30,
            u64::MAX,
        ] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            if b < HIST_BUCKETS - 1 {
                assert!(bucket_upper(b) > us, "{us} -> {b} -> {}", bucket_upper(b));
            }
        }
        // Within 1/8 above the value.
        assert!(bucket_upper(bucket(1000)) <= 1000 + 1000 / 8 + 1);
    }

    #[test]
    fn percentiles_of_a_histogram() {
        let mut h = vec![0u32; HIST_BUCKETS];
        h[bucket(10)] = 98;
        h[bucket(5000)] = 2;
        assert_eq!(percentile(&h, 50.0), Some(11));
        let p99 = percentile(&h, 99.0).unwrap();
        assert!((5000..=5700).contains(&p99), "{p99}");
        assert_eq!(percentile(&[0; 4], 50.0), None);
    }
}
