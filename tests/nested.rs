//! `schedrig nested` end to end: each test boots the nested test host
//! (QEMU TCG + Debian's kernel) for real. Serialized: each boot wants
//! both cores.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the serialization lock and makes sure the nested host is
/// prepared (cached after the first call): a first download of its
/// kernel must not count against any test's time bound. The README's
/// commands run `schedrig setup` first, so this is normally instant.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = schedrig::nested::prepare() {
        panic!("cannot prepare the nested test host: {e}");
    }
    g
}

fn schedrig() -> Command {
    Command::new(env!("CARGO_BIN_EXE_schedrig"))
}

/// Runs `schedrig nested ARGS`, once more if the nested host's own kernel
/// died before it could report the command's status (exit 125 with a
/// panic on its console: TCG's emulation, as `rerun_self` retries it),
/// so such a death does not pass for the behaviour under test.
fn nested_output(args: &dyn Fn(&mut Command)) -> std::process::Output {
    for attempt in 1..=2 {
        let mut cmd = schedrig();
        args(&mut cmd);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let died = out.status.code() == Some(125) && stderr.contains("Kernel panic");
        if !died || attempt == 2 {
            return out;
        }
        eprintln!("nested tests: the nested host's kernel panicked; once more:\n{stderr}");
    }
    unreachable!()
}

/// A results directory unique to this test; its path also appears on
/// QEMU's command line, which is how leftover processes are found.
fn unique_results(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("schedrig-nested-test-{name}-"))
        .tempdir()
        .unwrap()
}

/// Processes whose command line mentions `needle` (other than us).
fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle)
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

fn wait_gone(needle: &Path, within: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() || start.elapsed() > within {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn command_sees_host_files_streams_output_and_returns_its_status() {
    let _g = serial();
    let results = unique_results("status");
    let cwd = std::env::current_dir().unwrap();
    let script = "pwd; test -r Cargo.toml && echo cargo-toml-visible; \
                  echo err-line >&2; test -c /dev/kvm && echo kvm-present; \
                  echo written > \"$SCHEDRIG_NESTED_RESULTS/out.txt\"; exit 7";
    let out = nested_output(&|c| {
        c.args(["nested", "--memory", "1G", "--timeout", "300", "--results"])
            .arg(results.path())
            .args(["--", "/bin/sh", "-c", script]);
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [cwd.to_str().unwrap(), "cargo-toml-visible", "kvm-present"],
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("err-line"), "{stderr}");
    let written = std::fs::read_to_string(results.path().join("out.txt")).unwrap();
    assert_eq!(written, "written\n");
    assert!(wait_gone(results.path(), Duration::from_secs(5)).is_empty());
}

#[test]
fn success_is_zero_and_a_missing_command_is_127() {
    let _g = serial();
    let results = unique_results("missing");
    let st = schedrig()
        .args(["nested", "--memory", "1G", "--timeout", "300", "--results"])
        .arg(results.path())
        .args(["--", "/nonexistent/command"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(127));
    let st = schedrig()
        .args(["nested", "--memory", "1G", "--timeout", "300", "--results"])
        .arg(results.path())
        .args(["--", "true"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
}

#[test]
fn a_hanging_command_is_killed_at_its_timeout_with_nothing_left() {
    let _g = serial();
    let results = unique_results("timeout");
    let timeout = 25;
    let start = std::cell::Cell::new(Instant::now());
    let out = nested_output(&|c| {
        // Timed from the last attempt's start.
        start.set(Instant::now());
        c.args([
            "nested",
            "--memory",
            "1G",
            "--timeout",
            &timeout.to_string(),
            "--results",
        ])
        .arg(results.path())
        .args(["--", "sleep", "100000"]);
    });
    let took = start.get().elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(took >= Duration::from_secs(timeout), "{took:?}");
    assert!(took < Duration::from_secs(timeout + 15), "{took:?}");
    let left = processes_mentioning(results.path());
    assert!(left.is_empty(), "left running: {left:?}");
}

/// SIGINT (Ctrl-C) and SIGKILL of `schedrig nested` both take QEMU down.
#[test]
fn interrupting_or_killing_the_caller_ends_the_nested_host() {
    let _g = serial();
    for (sig, want) in [(libc::SIGINT, Some(130)), (libc::SIGKILL, None)] {
        let results = unique_results("signal");
        let mut child = schedrig()
            .args(["nested", "--memory", "1G", "--timeout", "300", "--results"])
            .arg(results.path())
            .args(["--", "sh", "-c", "echo started; sleep 100000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the command runs inside, so QEMU is fully up.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 8];
        std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
        assert_eq!(&first, b"started\n");
        assert!(!processes_mentioning(results.path()).is_empty());
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), want, "signal {sig}");
        let left = wait_gone(results.path(), Duration::from_secs(5));
        assert!(left.is_empty(), "signal {sig}: left running: {left:?}");
        leftover_temp_dirs_are_bounded();
    }
}

/// Run dirs left behind by dead callers. A live `schedrig nested` (another
/// session on this machine) owns its dir and is not counted.
fn leftover_temp_dirs_are_bounded() {
    let tmp: PathBuf = std::env::temp_dir();
    let owner_alive = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    let n = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("schedrig-run-nested-")
                && !owner_alive(&e.path())
        })
        .count();
    // A SIGKILLed caller cannot clean up; the next run removes its leftovers.
    assert!(n <= 1, "{n} nested temp dirs left in the temp dir");
}

/// `schedrig boot` where this machine's KVM cannot boot the kernel (PVM)
/// nests itself as `schedrig run` does, and paths the user gives mean
/// the same inside: a scheduler copied under /tmp (the nested host's own
/// /tmp is a fresh tmpfs) attaches, and the console log lands on the
/// user's side.
#[test]
fn boot_nests_itself_and_user_paths_mean_the_same_inside() {
    if !matches!(
        schedrig::nested::kvm_mode(),
        schedrig::nested::KvmMode::Nested(_)
    ) {
        eprintln!("nested tests: this machine boots the kernel directly; nothing to nest");
        return;
    }
    let _g = serial();
    let built = schedrig::sched::choose("scx_simple")
        .expect("the tree's schedulers are built by `schedrig setup`");
    let dir = tempfile::Builder::new()
        .prefix("schedrig-user-path-")
        .tempdir_in("/tmp")
        .unwrap();
    let sched = dir.path().join("my_scx_simple");
    std::fs::copy(&built.host_path, &sched).unwrap();
    let console = dir.path().join("console.txt");
    let out = schedrig()
        .env_remove("SCHEDRIG_NESTED")
        .env_remove(schedrig::nested::IN_NESTED_ENV)
        .args(["boot", "--json", "--hold", "2", "--scheduler"])
        .arg(&sched)
        .arg("--console-log")
        .arg(&console)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stderr:\n{stderr}"));
    assert!(
        stderr.contains("running inside the nested test host"),
        "{stderr}"
    );
    assert_eq!(json["verdict"], "ok", "{json:#}\n{stderr}");
    assert_eq!(json["scheduler"]["attached"], true, "{json:#}");
    let text = std::fs::read_to_string(&console).expect("the console log on the user's side");
    assert!(text.contains("Linux version"), "{text}");
}
