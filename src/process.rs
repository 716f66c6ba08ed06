//! Running a helper program (apt-get, tar, objcopy, dpkg-deb, ...) with a
//! deadline and bounded captured output.
//!
//! Every wait has a deadline: a child that outlives it is killed (its
//! whole process group, so apt's own children go too) and reported by
//! name. Output is read as bytes, the newest [`OUTPUT_CAP`] bytes of each
//! stream are kept, and both streams are drained to the end so a chatty
//! child never blocks on a full pipe.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes kept of each of a child's output streams (the newest).
pub const OUTPUT_CAP: usize = 256 << 10;
const POLL: Duration = Duration::from_millis(20);
/// After the child ended, how long its output readers may take (a
/// grandchild that kept the pipe open must not hold us).
const READER_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not finish within {limit:?}; killed")]
    TimedOut { what: String, limit: Duration },
    #[error("waiting for {what}: {source}")]
    Wait {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a finished child left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The newest [`OUTPUT_CAP`] bytes of stdout (if it was captured).
    pub stdout: Vec<u8>,
    /// The newest [`OUTPUT_CAP`] bytes of stderr (if it was captured).
    pub stderr: Vec<u8>,
}

impl Finished {
    /// stdout then stderr, lossily as text.
    pub fn text(&self) -> String {
        let mut t = String::from_utf8_lossy(&self.stdout).into_owned();
        t.push_str(&String::from_utf8_lossy(&self.stderr));
        t
    }
}

/// Runs `cmd` with stdin closed, capturing stdout and stderr unless the
/// caller already set them, and waits at most `limit`.
pub fn run(cmd: &mut Command, what: &str, limit: Duration) -> Result<Finished, ProcessError> {
    run_with(cmd, what, limit, true, true)
}

/// As [`run`], choosing which streams to capture; an uncaptured stream
/// keeps whatever the caller set (inherited by default).
pub fn run_with(
    cmd: &mut Command,
    what: &str,
    limit: Duration,
    capture_stdout: bool,
    capture_stderr: bool,
) -> Result<Finished, ProcessError> {
    cmd.stdin(Stdio::null());
    if capture_stdout {
        cmd.stdout(Stdio::piped());
    }
    if capture_stderr {
        cmd.stderr(Stdio::piped());
    }
    // Its own process group, so a timeout can end everything it started;
    // and it dies with us (it is no longer in the terminal's group, so a
    // Ctrl-C would not reach it).
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls
    // prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        what: what.to_string(),
        source,
    })?;
    let out = child.stdout.take().map(spawn_reader);
    let err = child.stderr.take().map(spawn_reader);
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                let _ = collect(out);
                let _ = collect(err);
                return Err(ProcessError::TimedOut {
                    what: what.to_string(),
                    limit,
                });
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(source) => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::Wait {
                    what: what.to_string(),
                    source,
                });
            }
        }
    };
    Ok(Finished {
        status,
        stdout: collect(out),
        stderr: collect(err),
    })
}

fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals that process group;
        // it touches no memory of ours.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

type Kept = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u8>>>;

/// Reads a stream to its end, keeping the newest [`OUTPUT_CAP`] bytes.
fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> (JoinHandle<()>, Kept) {
    let kept = Kept::default();
    let k = kept.clone();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut kept = k.lock().unwrap_or_else(|p| p.into_inner());
                    kept.extend(&buf[..n]);
                    let over = kept.len().saturating_sub(OUTPUT_CAP);
                    kept.drain(..over);
                }
            }
        }
    });
    (t, kept)
}

/// A reader's bytes. If it does not end soon after the child (a
/// grandchild holding the pipe open), what it read so far; the thread
/// then ends by itself at that grandchild's exit: it only reads and drops.
fn collect(reader: Option<(JoinHandle<()>, Kept)>) -> Vec<u8> {
    let Some((thread, kept)) = reader else {
        return Vec::new();
    };
    let _ = join_by(thread, Instant::now() + READER_GRACE);
    let kept = kept.lock().unwrap_or_else(|p| p.into_inner());
    kept.iter().copied().collect()
}

/// Joins `t` if it ends by `deadline`, polling; `None` if it is still
/// running then (the caller says why it may be left) or it panicked.
pub fn join_by<T>(t: JoinHandle<T>, deadline: Instant) -> Option<T> {
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if t.is_finished() {
        t.join().ok()
    } else {
        None
    }
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Lines of a byte stream as text, whatever the bytes: invalid UTF-8
/// becomes U+FFFD instead of ending the stream, and a line longer than
/// `max` bytes comes out in pieces of `max` bytes, so a reader never
/// holds more than `max` bytes of one line. Read errors end it.
pub struct LossyLines<R> {
    reader: std::io::BufReader<R>,
    max: usize,
    line: Vec<u8>,
}

impl<R: Read> LossyLines<R> {
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            reader: std::io::BufReader::new(reader),
            max: max.max(1),
            line: Vec::new(),
        }
    }

    fn emit(&mut self) -> Option<String> {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        Some(String::from_utf8_lossy(&self.line).into_owned())
    }
}

impl<R: Read> Iterator for LossyLines<R> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        use std::io::BufRead;
        self.line.clear();
        loop {
            let avail = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => &[],
            };
            if avail.is_empty() {
                return if self.line.is_empty() {
                    None
                } else {
                    self.emit()
                };
            }
            let room = self.max - self.line.len();
            // One byte past the room: a newline right at the cap ends
            // this line rather than making an empty one.
            let search = avail.len().min(room + 1);
            let take = avail.len().min(room);
            if let Some(i) = memchr::memchr(b'\n', &avail[..search]) {
                self.line.extend_from_slice(&avail[..i]);
                self.reader.consume(i + 1);
                return self.emit();
            }
            self.line.extend_from_slice(&avail[..take]);
            self.reader.consume(take);
            if self.line.len() >= self.max {
                return self.emit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }

    #[test]
    fn output_and_status_are_captured() {
        let f = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            "sh",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(f.stdout, b"out\n");
        assert_eq!(f.stderr, b"err\n");
    }

    #[test]
    fn a_child_past_its_deadline_is_killed_with_its_group() {
        let t = Instant::now();
        let e = run(
            Command::new("sh").args(["-c", "sleep 30 & sleep 30"]),
            "sleeper",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(e, ProcessError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("sleeper"));
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn only_the_newest_output_is_kept_and_non_utf8_survives() {
        let f = run(
            Command::new("sh").args(["-c", "head -c 600000 /dev/zero; printf '\\377end'"]),
            "sh",
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(f.stdout.len(), OUTPUT_CAP);
        assert!(f.stdout.ends_with(b"\xffend"));
        assert!(f.text().ends_with("\u{fffd}end"));
    }

    #[test]
    fn lossy_lines_survive_bad_bytes_and_split_long_lines() {
        let input: &[u8] = b"one\r\ntw\xffo\nabcdefghij\nlast";
        let lines: Vec<String> = LossyLines::new(input, 4).collect();
        assert_eq!(lines, ["one", "tw\u{fffd}o", "abcd", "efgh", "ij", "last"]);
        assert_eq!(LossyLines::new(&b""[..], 8).count(), 0);
    }

    /// A grandchild keeping the pipe open does not hold us, and what came
    /// before is kept.
    #[test]
    fn a_grandchild_holding_the_pipe_does_not_hold_us() {
        let t = Instant::now();
        let f = run(
            Command::new("sh").args(["-c", "echo early; (sleep 20 &) ; exit 0"]),
            "sh",
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(f.stdout, b"early\n");
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = run(
            &mut Command::new("/nonexistent/schedrig-tool"),
            "the tool",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("cannot run the tool"), "{e}");
    }
}
