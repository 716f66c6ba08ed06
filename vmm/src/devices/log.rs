//! A bounded text log: what a serial port or console wrote, keeping the
//! newest bytes (a guest cannot make the host hold more than the cap),
//! optionally teeing everything to a file.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Longest line the marker check looks at; longer lines are cut.
const MARKER_LINE_MAX: usize = 512;

#[derive(Debug)]
struct Inner {
    ring: VecDeque<u8>,
    cap: usize,
    total: u64,
    file: Option<File>,
    /// The current, unfinished line (for markers).
    line: Vec<u8>,
    /// Substrings to watch for in complete lines, and their flags.
    markers: Vec<(&'static [&'static str], Arc<AtomicBool>)>,
}

/// Cloneable handle; all clones share the same log.
#[derive(Debug, Clone)]
pub struct BoundedLog(Arc<Mutex<Inner>>);

impl BoundedLog {
    pub fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            ring: VecDeque::with_capacity(cap.min(64 * 1024)),
            cap,
            total: 0,
            file: None,
            line: Vec::new(),
            markers: Vec::new(),
        })))
    }

    /// A flag that turns true once a line containing any of `markers` is
    /// logged (so a watcher need not rescan the log).
    pub fn watch_for(&self, marker: &'static [&'static str]) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut g) = self.0.lock() {
            g.markers.push((marker, flag.clone()));
        }
        flag
    }

    /// Also writes every byte to `file` (the full log on request).
    pub fn tee_to(&self, file: File) {
        if let Ok(mut g) = self.0.lock() {
            g.file = Some(file);
        }
    }

    pub fn append(&self, bytes: &[u8]) {
        let Ok(mut g) = self.0.lock() else { return };
        g.total += bytes.len() as u64;
        if !g.markers.is_empty() {
            for &b in bytes {
                if b == b'\n' {
                    let line = String::from_utf8_lossy(&g.line).into_owned();
                    for (m, flag) in &g.markers {
                        if m.iter().any(|m| line.contains(m)) {
                            flag.store(true, Ordering::Release);
                        }
                    }
                    g.line.clear();
                } else if g.line.len() < MARKER_LINE_MAX {
                    g.line.push(b);
                }
            }
        }
        if let Some(f) = g.file.as_mut() {
            let _ = f.write_all(bytes);
        }
        let cap = g.cap;
        let keep = &bytes[bytes.len().saturating_sub(cap)..];
        let overflow = (g.ring.len() + keep.len()).saturating_sub(cap);
        g.ring.drain(..overflow);
        g.ring.extend(keep);
    }

    /// Everything kept, lossily as UTF-8.
    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|g| {
                String::from_utf8_lossy(&g.ring.iter().copied().collect::<Vec<u8>>()).into_owned()
            })
            .unwrap_or_default()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let t = self.text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Bytes ever appended (kept or not).
    pub fn total(&self) -> u64 {
        self.0.lock().map(|g| g.total).unwrap_or(0)
    }
}

/// `Write` adapter, so devices can write into the log.
impl Write for BoundedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_bytes() {
        let log = BoundedLog::new(8);
        log.append(b"hello ");
        log.append(b"world!");
        assert_eq!(log.text(), "o world!");
        assert_eq!(log.total(), 12);
        log.append(b"0123456789abc");
        assert_eq!(log.text(), "56789abc");
    }

    #[test]
    fn markers_fire_on_complete_lines() {
        let log = BoundedLog::new(4);
        let flag = log.watch_for(&["Power down", "System halted"]);
        log.append(b"[ 1.0] reboot: Power ");
        assert!(!flag.load(Ordering::Acquire));
        log.append(b"down\n");
        assert!(
            flag.load(Ordering::Acquire),
            "found across writes, beyond the ring's cap"
        );
    }

    #[test]
    fn tail_lines() {
        let log = BoundedLog::new(100);
        log.append(b"a\nb\nc\n");
        assert_eq!(log.tail(2), "b\nc");
    }
}
