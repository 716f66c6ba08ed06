//! The scheduler's output and the kernel log, collected by reader
//! threads and handed to the one thread that writes the bulk port.
//!
//! Bounded everywhere: each reader hands over chunks through a channel of
//! [`QUEUE_CHUNKS`] slots and never waits for it, so a scheduler that
//! floods its log never blocks on its pipe (what does not fit is counted
//! in `dropped`, not sent); the tails kept for judging its end are at
//! most [`OUTPUT_TAIL`] bytes and [`KMSG_LINES`] lines.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use schedrig_wire::MsgTag;

use crate::boot::console::say;
use crate::comms::{BulkPort, CommsError};
use crate::job::kmsg;

/// Chunks waiting for the bulk port: 64 x 4 KiB.
pub const QUEUE_CHUNKS: usize = 64;
/// One read's worth.
const CHUNK: usize = 4096;
/// Bytes of scheduler output kept for its end (verifier log, EXIT line).
pub const OUTPUT_TAIL: usize = 64 << 10;
/// Kernel log lines kept for its end.
pub const KMSG_LINES: usize = 512;

/// What a reader hands over.
pub enum Chunk {
    /// Scheduler stdout/stderr bytes: SCLG.
    Output(Vec<u8>),
    /// One kernel log line: DMSG.
    Kmsg(Vec<u8>),
}

#[derive(Default)]
struct Tails {
    output: VecDeque<u8>,
    kmsg: VecDeque<String>,
}

/// What the readers share with the writer.
#[derive(Default)]
pub struct Shared {
    tails: Mutex<Tails>,
    /// Output bytes not sent (queue full).
    pub dropped: AtomicU64,
    /// Kernel log lines not sent (queue full).
    pub kmsg_dropped: AtomicU64,
}

impl Shared {
    fn push_output(&self, b: &[u8]) {
        let mut t = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        t.output.extend(b);
        let over = t.output.len().saturating_sub(OUTPUT_TAIL);
        t.output.drain(..over);
    }

    fn push_kmsg(&self, line: String) {
        let mut t = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        t.kmsg.push_back(line);
        while t.kmsg.len() > KMSG_LINES {
            t.kmsg.pop_front();
        }
    }

    /// The scheduler's output kept so far, as text.
    pub fn output_text(&self) -> String {
        let t = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = t.output.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).replace('\r', "")
    }

    /// The kernel log lines kept so far.
    pub fn kmsg_lines(&self) -> Vec<String> {
        let t = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        t.kmsg.iter().cloned().collect()
    }
}

/// The readers' side: where chunks go.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Chunk>,
    shared: Arc<Shared>,
}

impl Sink {
    fn offer(&self, c: Chunk) {
        if let Err(TrySendError::Full(c)) = self.tx.try_send(c) {
            match c {
                Chunk::Output(b) => {
                    self.shared
                        .dropped
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                Chunk::Kmsg(_) => {
                    self.shared.kmsg_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Reads `src` to its end (or an error) on a thread, keeping a tail
    /// and offering each read as output.
    pub fn read_output<R: Read + Send + 'static>(
        &self,
        mut src: R,
        what: &'static str,
    ) -> JoinHandle<()> {
        let sink = self.clone();
        // Named, so a stall report names the reader ("out-stdout[41]").
        spawn_named(format!("out-{what}"), move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        sink.shared.push_output(&buf[..n]);
                        sink.offer(Chunk::Output(buf[..n].to_vec()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // A pty master reads EIO once the last slave closed.
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                    Err(e) => {
                        say(&format!("read scheduler {what}: {e}"));
                        break;
                    }
                }
            }
        })
    }

    /// Follows /dev/kmsg from its current end on a thread that lives as
    /// long as init. A kernel log that cannot be opened is reported and
    /// the run goes on without it (the verdict then lacks the kind).
    pub fn follow_kmsg(&self) {
        let f = match File::open("/dev/kmsg") {
            Ok(f) => f,
            Err(e) => {
                say(&format!(
                    "open /dev/kmsg: {e}; the kernel's exit reason will be missing"
                ));
                return;
            }
        };
        // SAFETY: lseek on a descriptor we own; /dev/kmsg's SEEK_END
        // moves this reader past the records already logged.
        if unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
            say(&format!(
                "seek /dev/kmsg: {}; reading it from the start",
                std::io::Error::last_os_error()
            ));
        }
        let sink = self.clone();
        spawn_named("kmsg".into(), move || {
            let mut f = f;
            // One read is one record; records are at most 8 KiB.
            let mut buf = vec![0u8; 8192];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Some(line) = kmsg::record_text(&buf[..n]) {
                            let mut bytes = line.clone().into_bytes();
                            bytes.push(b'\n');
                            sink.shared.push_kmsg(line);
                            sink.offer(Chunk::Kmsg(bytes));
                        }
                    }
                    // EPIPE: records were overwritten before we read them.
                    Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        say(&format!("read /dev/kmsg: {e}"));
                        break;
                    }
                }
            }
        });
    }
}

/// A thread with a name (its comm in the guest). A thread that cannot be
/// started is reported; its stream is then not read (the scheduler's
/// stop deadlines still end it).
fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .unwrap_or_else(|e| {
            say(&format!("cannot start reader thread {name}: {e}"));
            std::thread::spawn(|| {})
        })
}

/// The writer's side: owns nothing but the queue's receiving end.
pub struct Pump {
    rx: Receiver<Chunk>,
    pub shared: Arc<Shared>,
}

/// A new queue: its writer side and its readers' side.
pub fn channel() -> (Pump, Sink) {
    let (tx, rx) = mpsc::sync_channel(QUEUE_CHUNKS);
    let shared = Arc::new(Shared::default());
    (
        Pump {
            rx,
            shared: shared.clone(),
        },
        Sink { tx, shared },
    )
}

impl Pump {
    /// Sends queued chunks for `for_`, then returns. A port write blocks
    /// while the host is behind; the readers meanwhile drop, not wait.
    pub fn run<W: std::io::Write>(
        &self,
        port: &mut BulkPort<W>,
        for_: Duration,
    ) -> Result<(), CommsError> {
        let end = Instant::now() + for_;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Chunk::Output(b)) => port.send(MsgTag::SchedulerLog, &b)?,
                Ok(Chunk::Kmsg(b)) => port.send(MsgTag::Dmesg, &b)?,
                Err(RecvTimeoutError::Timeout) => return Ok(()),
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left);
                    return Ok(());
                }
            }
            if left.is_zero() {
                return Ok(());
            }
        }
    }
}
