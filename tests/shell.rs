//! `schedrig shell`, used as a person would: an interactive session
//! driven in tmux (keys sent, the screen read back), and `--exec`. Each
//! boots a real VM; where this machine's KVM cannot boot the kernel the
//! command goes through the nested test host by itself, as it would for
//! a user, so this also shows that path.

use std::process::Command;
use std::time::{Duration, Instant};

const SCHEDRIG: &str = env!("CARGO_BIN_EXE_schedrig");
/// Boot (in the nested host: its own boot too) and the scheduler attach.
const PROMPT_WAIT: Duration = Duration::from_secs(240);
/// A command's output.
const OUTPUT_WAIT: Duration = Duration::from_secs(60);
/// Leaving: the scheduler stops, the VM (and nested host) powers off.
const EXIT_WAIT: Duration = Duration::from_secs(120);

/// A tmux session, killed when dropped (a failed test leaves nothing).
struct Tmux {
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock");
        let ok = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["new-session", "-d", "-x", "150", "-y", "40", command])
            .status()
            .expect("tmux is installed (`schedrig setup --tests`)")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux { socket, _dir: dir }
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    fn keys(&self, keys: &[&str]) {
        let ok = self
            .tmux()
            .args(["send-keys", "-t", "0"])
            .args(keys)
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux send-keys {keys:?}");
    }

    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-S", "-200", "-t", "0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen has `text`.
    fn wait_for(&self, text: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "waited {limit:?} for {text:?}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

/// The prompt shows the attached scheduler's ops and sched_ext's state;
/// `nproc` matches the topology; Ctrl-C interrupts the guest's foreground
/// program (not schedrig); `exit 7` powers off, the process ends with
/// the shell's status, and the terminal is as it was.
#[test]
fn interactive_shell_in_tmux() {
    let t = Tmux::start(&format!(
        "{SCHEDRIG} shell --scheduler scx_simple --topology 1n2l1c1t; echo SHELL-EXIT=$?; stty -a; sleep 600"
    ));
    t.wait_for("[schedrig simple: enabled] /tmp #", PROMPT_WAIT);
    // Short lines: the guest's tty does not know the window's width.
    t.keys(&["cat /sys/kernel/sched_ext/state", "Enter"]);
    t.keys(&["echo cpus=$(nproc)", "Enter"]);
    // The output line, not the typed command's echo.
    let s = t.wait_for("\ncpus=", OUTPUT_WAIT);
    assert!(
        s.contains("\nenabled\n") && s.contains("cpus=2\n"),
        "sched_ext enabled and 2 CPUs expected:\n{s}"
    );
    t.keys(&["sleep 300", "Enter"]);
    std::thread::sleep(Duration::from_secs(2));
    t.keys(&["C-c"]);
    t.keys(&["echo status=$?", "Enter"]);
    t.wait_for("status=130", OUTPUT_WAIT);
    t.keys(&["exit 7", "Enter"]);
    let s = t.wait_for("SHELL-EXIT=", EXIT_WAIT);
    assert!(s.contains("SHELL-EXIT=7"), "exit status 7 expected:\n{s}");
    let s = t.wait_for("susp = ^Z", OUTPUT_WAIT);
    let stty = &s[s.find("SHELL-EXIT=").unwrap_or(0)..];
    assert!(
        stty.contains(" icanon") && stty.contains(" echo ") && !stty.contains("-icanon"),
        "the terminal is back in its cooked mode:\n{stty}"
    );
}

/// `--exec`: the command's output, byte for byte, and its status; a
/// host program given with `--include` (util-linux's chrt, dynamically
/// linked, not in busybox) runs there with its libraries.
#[test]
fn exec_prints_output_and_returns_status() {
    let out = Command::new(SCHEDRIG)
        .args([
            "shell",
            "--scheduler",
            "scx_simple",
            "--topology",
            "1n1l2c1t",
            "--include",
            "/usr/bin/chrt",
            "--exec",
            "cat /sys/kernel/sched_ext/root/ops; nproc; command -v chrt; chrt -p 1 | head -1; exit 3",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let why = format!(
        "status {:?}, stdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "{why}");
    assert!(
        stdout.starts_with(
            "simple\n2\n/schedrig/bin/chrt\npid 1's current scheduling policy: SCHED_"
        ),
        "{why}"
    );
    assert!(!stdout.contains('\r'), "no newline translation: {why}");
}

/// A scheduler that dies while the shell runs (killed from the shell
/// here) is reported when the shell ends; the status is still the
/// command's.
#[test]
fn a_scheduler_lost_during_the_shell_is_reported_on_leaving() {
    let out = Command::new(SCHEDRIG)
        .args([
            "shell",
            "--scheduler",
            "scx_simple",
            "--exec",
            "kill -9 $(pidof scx_simple); sleep 2; cat /sys/kernel/sched_ext/state",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = format!(
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(0), "{why}");
    assert_eq!(stdout, "disabled\n", "{why}");
    assert!(
        stderr.contains("schedrig shell: scx_simple: the run ended sched_"),
        "the scheduler's end said on leaving: {why}"
    );
}

/// Our stdin is the command's, and its end reaches it as the end of input.
#[test]
fn exec_reads_stdin_to_its_end() {
    use std::io::Write;
    let mut child = Command::new(SCHEDRIG)
        .args(["shell", "--exec", "wc -l"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\nthree\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        (out.status.code(), stdout.trim()),
        (Some(0), "3"),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bad input is refused before any VM, with one line naming it.
#[test]
fn include_of_a_missing_file_is_refused() {
    let out = Command::new(SCHEDRIG)
        .args(["shell", "--include", "/nonexistent/tool", "--exec", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/tool"), "{stderr}");
}
