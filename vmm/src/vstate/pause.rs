//! Host pauses: stretches of time in which this process did not run at
//! all (the host stopped it, or the machine under it was not run, as when
//! two emulated hosts share the CPUs). The guest cannot see them: its
//! clock jumps, and no steal time accrues, since its vCPU threads were
//! not waiting to run, they were not there. A watcher thread that sleeps
//! a short tick and measures how late it woke sees them; the session
//! discounts them from the scenario's gaps and stalls, as it does steal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the watcher wakes.
pub const PAUSE_TICK: Duration = Duration::from_millis(50);
/// A wake this much later than the tick is a pause (shorter ones are the
/// host's ordinary scheduling latency, and far below any gap limit).
pub const PAUSE_MIN: Duration = Duration::from_millis(200);
/// Pauses kept per run; later ones are only counted.
pub const PAUSES_MAX: usize = 4096;

#[derive(Debug, Default)]
struct Pauses {
    /// (start, length), in time order.
    kept: Vec<(Instant, Duration)>,
    dropped: u64,
}

/// The pauses seen so far; shared by the watcher and the session.
#[derive(Debug, Default)]
pub struct PauseLog {
    inner: Mutex<Pauses>,
}

impl PauseLog {
    pub fn record(&self, start: Instant, len: Duration) {
        let Ok(mut p) = self.inner.lock() else { return };
        if p.kept.len() < PAUSES_MAX {
            p.kept.push((start, len));
        } else {
            p.dropped += 1;
        }
    }

    /// How much of `[from, to)` fell in pauses.
    pub fn overlap(&self, from: Instant, to: Instant) -> Duration {
        let Ok(p) = self.inner.lock() else {
            return Duration::ZERO;
        };
        p.kept
            .iter()
            .map(|&(s, len)| {
                let e = s + len;
                let (a, b) = (s.max(from), e.min(to));
                b.saturating_duration_since(a)
            })
            .sum()
    }

    /// All pauses: their count and total length.
    pub fn total(&self) -> (usize, Duration) {
        let Ok(p) = self.inner.lock() else {
            return (0, Duration::ZERO);
        };
        (p.kept.len(), p.kept.iter().map(|&(_, l)| l).sum())
    }
}

/// The watcher thread; stopped and joined when dropped.
pub struct PauseWatch {
    log: Arc<PauseLog>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PauseWatch {
    pub fn start() -> std::io::Result<PauseWatch> {
        let log = Arc::new(PauseLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("pause-watch".into())
            .spawn(move || watch(&l, &s, std::thread::sleep))?;
        Ok(PauseWatch {
            log,
            stop,
            thread: Some(thread),
        })
    }

    pub fn log(&self) -> Arc<PauseLog> {
        self.log.clone()
    }
}

impl Drop for PauseWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `sleep` is `thread::sleep` but for tests.
fn watch(log: &PauseLog, stop: &AtomicBool, sleep: impl Fn(Duration)) {
    while !stop.load(Ordering::Relaxed) {
        let before = Instant::now();
        sleep(PAUSE_TICK);
        let late = before.elapsed().saturating_sub(PAUSE_TICK);
        if late >= PAUSE_MIN {
            log.record(before + PAUSE_TICK, late);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_counts_only_the_part_inside_the_window() {
        let log = PauseLog::default();
        let t = Instant::now();
        let s = Duration::from_secs;
        log.record(t + s(10), s(3));
        log.record(t + s(20), s(1));
        assert_eq!(log.overlap(t, t + s(30)), s(4));
        assert_eq!(log.overlap(t + s(11), t + s(12)), s(1));
        assert_eq!(log.overlap(t + s(12), t + s(21)), s(2));
        assert_eq!(log.overlap(t + s(14), t + s(20)), Duration::ZERO);
        assert_eq!(log.total(), (2, s(4)));
    }

    #[test]
    fn the_log_is_bounded() {
        let log = PauseLog::default();
        let t = Instant::now();
        for i in 0..PAUSES_MAX as u64 + 5 {
            log.record(t + Duration::from_secs(i), Duration::from_millis(1));
        }
        assert_eq!(log.total().0, PAUSES_MAX);
        assert_eq!(log.inner.lock().unwrap().dropped, 5);
    }

    #[test]
    fn a_late_wake_is_a_pause_and_an_ordinary_one_is_not() {
        let log = PauseLog::default();
        let stop = AtomicBool::new(false);
        let calls = std::cell::Cell::new(0);
        // Tick 1 is ordinary; in tick 2 the thread is not run for 400 ms
        // more, as a stopped process's threads are not; then it stops.
        watch(&log, &stop, |d| {
            calls.set(calls.get() + 1);
            match calls.get() {
                1 => std::thread::sleep(d),
                2 => std::thread::sleep(d + Duration::from_millis(400)),
                _ => stop.store(true, Ordering::Relaxed),
            }
        });
        let (n, total) = log.total();
        assert_eq!(n, 1, "one pause");
        assert!(
            total >= Duration::from_millis(400) && total < Duration::from_secs(2),
            "{total:?}"
        );
        // And the real watcher starts and stops (joined) cleanly.
        drop(PauseWatch::start().unwrap());
    }
}
