//! An interactive guest console (`schedrig shell`): what the user types
//! on stdin goes to the guest's hvc0 (port 0's receive queue), and what
//! the guest writes to hvc0 comes out on stdout. Putting the terminal in
//! raw mode, so that Ctrl-C is a byte for the guest's tty and not a
//! signal for us, is the caller's business.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::devices::virtio::console::{BulkError, BulkWriter};

/// How long a poll of stdin waits before looking at the stop flag: the
/// pump ends within this of the VM's end.
const POLL_MS: libc::c_int = 100;
/// Bytes read from stdin at a time.
const READ_CHUNK: usize = 4096;
/// How often a pump not yet open looks again.
const GATE_POLL: Duration = Duration::from_millis(20);
/// How long to wait for the guest to take input before offering it again.
const FULL_RETRY: Duration = Duration::from_millis(20);

/// Where pumped input goes: takes what it can of the bytes and says how
/// many (0: nothing now, offer them again later).
pub type InputSink = Box<dyn FnMut(&[u8]) -> io::Result<usize> + Send>;

/// Copies stdin to a sink until stopped (dropped) or stdin ends. The
/// thread is joined on drop.
pub struct StdinPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StdinPump {
    /// Into the guest's console (port 0's receive queue), from when
    /// `open` is set (SRDY, see [`OpenOnReady`]).
    pub fn start(writer: BulkWriter, open: Arc<AtomicBool>) -> io::Result<StdinPump> {
        Self::start_gated(
            Box::new(move |bytes: &[u8]| match writer.send(bytes) {
                // Whole or not at all: a guest not reading holds the rest here.
                Ok(()) => Ok(bytes.len()),
                Err(BulkError::Full { .. }) => Ok(0),
                Err(e) => Err(io::Error::other(e)),
            }),
            open,
        )
    }

    /// Into any sink (the nested test host's stdin port), at once.
    pub fn start_into(sink: InputSink) -> io::Result<StdinPump> {
        Self::start_gated(sink, Arc::new(AtomicBool::new(true)))
    }

    fn start_gated(sink: InputSink, open: Arc<AtomicBool>) -> io::Result<StdinPump> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("stdin-pump".into())
            .spawn(move || {
                while !open.load(Ordering::Acquire) {
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(GATE_POLL);
                }
                pump(sink, &flag)
            })?;
        Ok(StdinPump {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StdinPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The byte a terminal in canonical mode reads as the end of input
/// (`VEOF`, Ctrl-D): what the guest's tty gets when our stdin ends.
const EOF_BYTE: u8 = 0x04;

fn pump(mut sink: InputSink, stop: &AtomicBool) {
    let fd = io::stdin().as_raw_fd();
    let mut buf = [0u8; READ_CHUNK];
    let mut last = b'\n';
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if n <= 0 {
            continue;
        }
        // POLLIN or POLLHUP: a read says which (0 is the end of input).
        // The fd itself, not std's buffered Stdin: bytes left in that
        // buffer would wait, unseen by poll, for the next keystroke.
        // SAFETY: reads into `buf`, which outlives the call.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let got = match n {
            n if n > 0 => n as usize,
            0 => {
                // The end of our input is the end of the guest program's:
                // Ctrl-D ends a line, a second one the input.
                let eof: &[u8] = if last == b'\n' {
                    &[EOF_BYTE]
                } else {
                    &[EOF_BYTE, EOF_BYTE]
                };
                let _ = sink(eof);
                return;
            }
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return,
        };
        last = buf[got - 1];
        let mut rest = &buf[..got];
        while !rest.is_empty() && !stop.load(Ordering::Acquire) {
            match sink(rest) {
                Ok(0) => std::thread::sleep(FULL_RETRY),
                Ok(n) => rest = &rest[n.min(rest.len())..],
                Err(e) => {
                    tracing::warn!("console input: {e}");
                    return;
                }
            }
        }
    }
}

/// Passes everything on to `inner`, and sets `gate` at SRDY.
pub struct OpenOnReady<'a> {
    pub inner: &'a mut dyn crate::observer::MachineObserver,
    pub gate: Arc<AtomicBool>,
}

impl crate::observer::MachineObserver for OpenOnReady<'_> {
    fn ready(&mut self, at: Duration) {
        self.gate.store(true, Ordering::Release);
        self.inner.ready(at);
    }
    fn scheduler_attached(&mut self, ops: &str, at: Duration) {
        self.inner.scheduler_attached(ops, at);
    }
    fn scheduler_output(&mut self, bytes: &[u8]) {
        self.inner.scheduler_output(bytes);
    }
    fn scenario_result(
        &mut self,
        result: &schedrig_wire::ScenarioResult,
        snapshots: &[crate::introspect::snapshot::Snapshot],
    ) {
        self.inner.scenario_result(result, snapshots);
    }
}

/// The console sink of an interactive run: every chain to `log` (the tail
/// kept for the report) and to stdout, flushed, so that a prompt without
/// a newline shows at once.
pub struct TeeToStdout<W: Write + Send> {
    pub log: W,
}

impl<W: Write + Send> Write for TeeToStdout<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.log.write_all(buf);
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.log.flush()
    }
}
