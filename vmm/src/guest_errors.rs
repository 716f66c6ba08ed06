//! Problems the guest causes (bad MMIO accesses, unusable descriptor
//! chains, malformed control messages, bad frames): counted for the
//! report and logged at a limited rate.
//!
//! The guest is untrusted, so it must not be able to flood the host's
//! log: the first [`LOG_BURST`] problems of a run are logged, then at
//! most one per [`LOG_INTERVAL`], each saying how many were suppressed
//! since the last. Every problem is counted, by kind, whether logged or
//! not.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Problems logged before the rate limit starts.
pub const LOG_BURST: u64 = 10;
/// After the burst, at most one line per this long.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What kind of guest misbehaviour a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestErrorKind {
    /// A virtio-mmio register or config access the transport refused.
    Mmio,
    /// A virtqueue the device could not serve (bad ring index, bad
    /// descriptor, indirect descriptor, chain too long).
    Virtqueue,
    /// Console port data the device could not deliver or fill.
    Console,
    /// A malformed or unexpected console control message.
    Control,
    /// A wire frame the session refused (bad payload, oversized request).
    Frame,
}

impl GuestErrorKind {
    pub const ALL: [GuestErrorKind; 5] = [
        GuestErrorKind::Mmio,
        GuestErrorKind::Virtqueue,
        GuestErrorKind::Console,
        GuestErrorKind::Control,
        GuestErrorKind::Frame,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GuestErrorKind::Mmio => "mmio",
            GuestErrorKind::Virtqueue => "virtqueue",
            GuestErrorKind::Console => "console",
            GuestErrorKind::Control => "control",
            GuestErrorKind::Frame => "frame",
        }
    }
}

#[derive(Debug)]
struct Inner {
    counts: [AtomicU64; GuestErrorKind::ALL.len()],
    logged: AtomicU64,
    suppressed: AtomicU64,
    /// When the last rate-limited line went out, and how many were
    /// suppressed since.
    window: Mutex<(Option<Instant>, u64)>,
}

/// One run's guest problems; cheap to clone, shared by the devices and
/// the session of that run.
#[derive(Debug, Clone)]
pub struct GuestErrors(Arc<Inner>);

impl Default for GuestErrors {
    fn default() -> Self {
        GuestErrors(Arc::new(Inner {
            counts: Default::default(),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            window: Mutex::new((None, 0)),
        }))
    }
}

impl GuestErrors {
    /// Counts one problem of `kind` and logs `what` unless the rate limit
    /// says otherwise. `what` is only formatted when it is logged.
    pub fn report(&self, kind: GuestErrorKind, what: fmt::Arguments<'_>) {
        self.0.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.may_log() {
            if suppressed > 0 {
                tracing::warn!(
                    "guest {}: {what} ({suppressed} similar guest problems not logged)",
                    kind.as_str()
                );
            } else {
                tracing::warn!("guest {}: {what}", kind.as_str());
            }
        }
    }

    /// `Some(n)` when a line may be logged now (`n` were suppressed since
    /// the last one), `None` when this one is suppressed.
    fn may_log(&self) -> Option<u64> {
        if self.0.logged.fetch_add(1, Ordering::Relaxed) < LOG_BURST {
            return Some(0);
        }
        let mut w = self.0.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if w.0
            .is_none_or(|last| now.duration_since(last) >= LOG_INTERVAL)
        {
            let suppressed = std::mem::take(&mut w.1);
            w.0 = Some(now);
            Some(suppressed)
        } else {
            w.1 += 1;
            self.0.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Problems of `kind` so far.
    pub fn count(&self, kind: GuestErrorKind) -> u64 {
        self.0.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// Every kind with a non-zero count, by name.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        GuestErrorKind::ALL
            .iter()
            .map(|&k| (k.as_str(), self.count(k)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Problems counted but not logged.
    pub fn suppressed(&self) -> u64 {
        self.0.suppressed.load(Ordering::Relaxed)
    }
}

/// `guest_error!(errors, Kind, "format", args...)`: counts and maybe logs.
#[macro_export]
macro_rules! guest_error {
    ($errors:expr, $kind:ident, $($arg:tt)+) => {
        $errors.report($crate::guest_errors::GuestErrorKind::$kind, format_args!($($arg)+))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_counted_but_only_a_burst_is_logged_at_once() {
        let e = GuestErrors::default();
        for i in 0..1000 {
            guest_error!(e, Mmio, "bad access {i}");
        }
        guest_error!(e, Control, "bad message");
        assert_eq!(e.count(GuestErrorKind::Mmio), 1000);
        assert_eq!(e.count(GuestErrorKind::Control), 1);
        // LOG_BURST lines, then one more as the first of the rate-limited
        // window; the rest (in well under LOG_INTERVAL) suppressed.
        assert_eq!(e.suppressed(), 1001 - LOG_BURST - 1);
        assert_eq!(
            e.counts().into_iter().collect::<Vec<_>>(),
            [("control", 1), ("mmio", 1000)]
        );
    }

    #[test]
    fn clones_share_one_count() {
        let e = GuestErrors::default();
        let c = e.clone();
        guest_error!(c, Frame, "x");
        assert_eq!(e.count(GuestErrorKind::Frame), 1);
    }
}
