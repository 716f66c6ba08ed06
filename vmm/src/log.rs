//! A bounded text log: what a serial port or console wrote, keeping the
//! newest bytes (a guest cannot make the host hold more than the cap),
//! optionally teeing the first bytes, up to a cap of their own, to a file.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Longest line the marker check looks at; longer lines are cut.
const MARKER_LINE_MAX: usize = 512;
/// Bytes buffered before a write(2) to the tee file (a UART delivers
/// one byte per VM exit).
const FILE_BUFFER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The tee file: the first `cap` bytes, buffered.
#[derive(Debug)]
struct Tee {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
    cap: u64,
    truncated: bool,
    /// The first write error; the tee stops there.
    error: Option<std::io::Error>,
}

impl Tee {
    fn write(&mut self, bytes: &[u8]) {
        if self.error.is_some() || self.truncated {
            return;
        }
        let room = self.cap.saturating_sub(self.written);
        let n = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if let Err(e) = self.out.write_all(&bytes[..n]) {
            self.error = Some(e);
            return;
        }
        self.written += n as u64;
        if n < bytes.len() {
            self.truncated = true;
            let note = format!("\n[schedrig: console log cut at {} bytes]\n", self.cap);
            if let Err(e) = self.out.write_all(note.as_bytes()) {
                self.error = Some(e);
            }
        }
    }
}

/// What went to the tee file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TeeStats {
    /// Log bytes written (the cut note not counted).
    #[serde(rename = "bytes")]
    pub written: u64,
    /// True when the log outgrew the cap and the file was cut.
    pub truncated: bool,
}

#[derive(Debug)]
struct Inner {
    ring: VecDeque<u8>,
    cap: usize,
    total: u64,
    file: Option<Tee>,
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

    /// Also writes the log to a new file at `path`, up to `cap` bytes
    /// (then a line saying it was cut), buffered: call
    /// [`BoundedLog::flush_file`] now and then and at the end.
    pub fn tee_to_file(&self, path: &Path, cap: u64) -> Result<(), LogError> {
        let file = File::create(path).map_err(|source| LogError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        if let Ok(mut g) = self.0.lock() {
            g.file = Some(Tee {
                path: path.to_path_buf(),
                out: BufWriter::with_capacity(FILE_BUFFER, file),
                written: 0,
                cap,
                truncated: false,
                error: None,
            });
        }
        Ok(())
    }

    /// Writes out what the tee file buffered. Returns how much went to it
    /// so far, or the first write error (after which nothing more is
    /// written); `Ok(None)` when there is no tee file.
    pub fn flush_file(&self) -> Result<Option<TeeStats>, LogError> {
        let Ok(mut g) = self.0.lock() else {
            return Ok(None);
        };
        let Some(tee) = g.file.as_mut() else {
            return Ok(None);
        };
        if tee.error.is_none() {
            if let Err(e) = tee.out.flush() {
                tee.error = Some(e);
            }
        }
        if let Some(e) = &tee.error {
            return Err(LogError::Write {
                path: tee.path.clone(),
                source: std::io::Error::new(e.kind(), e.to_string()),
            });
        }
        Ok(Some(TeeStats {
            written: tee.written,
            truncated: tee.truncated,
        }))
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
        if let Some(tee) = g.file.as_mut() {
            tee.write(bytes);
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

/// The guest's output the report quotes.
#[derive(Debug, Clone)]
pub struct Logs {
    /// COM1: the kernel console.
    pub console: BoundedLog,
    /// COM2: guest-init's crash text.
    pub crash: BoundedLog,
    /// Virtio console port 0 (hvc0).
    pub hvc0: BoundedLog,
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
    fn the_tee_file_is_buffered_and_capped() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("console.log");
        let log = BoundedLog::new(4);
        log.tee_to_file(&path, 10).unwrap();
        for b in b"0123456" {
            log.append(&[*b]);
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"",
            "buffered, not yet written"
        );
        assert_eq!(
            log.flush_file().unwrap(),
            Some(TeeStats {
                written: 7,
                truncated: false
            })
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456");
        log.append(b"789abcdef");
        log.append(b"more");
        let stats = log.flush_file().unwrap().unwrap();
        assert_eq!((stats.written, stats.truncated), (10, true));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "0123456789\n[schedrig: console log cut at 10 bytes]\n"
        );
        assert!(BoundedLog::new(4).flush_file().unwrap().is_none());
        let err = log
            .tee_to_file(&d.path().join("no/such/dir/x"), 1)
            .unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }

    #[test]
    fn tail_lines() {
        let log = BoundedLog::new(100);
        log.append(b"a\nb\nc\n");
        assert_eq!(log.tail(2), "b\nc");
    }
}
