//! Bad input from a user gets one clear error line and a non-zero exit,
//! before any VM starts. No VM needed.

use std::process::Command;

fn schedrig(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_schedrig"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_error(args: &[&str], needle: &str) {
    let (code, stdout, stderr) = schedrig(args);
    // Refused before any VM: status 2 (src/exit_status.rs).
    assert_eq!(code, 2, "{args:?}: exit status {code}, not 2: {stderr}");
    assert!(stdout.is_empty(), "{args:?} printed to stdout: {stdout}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {needle:?} not in {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
}

#[test]
fn invalid_topology_strings() {
    assert_one_error(&["boot", "--topology", "2x2"], "expected the form 1n2l2c1t");
    assert_one_error(&["boot", "--topology", "1n0l1c1t"], "at least 1");
    assert_one_error(&["boot", "--topology", "1n16l16c2t"], "at most 254");
}

#[test]
fn numa_nodes_need_enough_memory() {
    assert_one_error(
        &["boot", "--topology", "4n1l1c1t", "--memory", "100M"],
        "4 NUMA nodes need at least 32 MiB of guest RAM each",
    );
}

#[test]
fn missing_or_wrong_kernel_files() {
    assert_one_error(
        &["boot", "--kernel", "/nonexistent/bzImage"],
        "kernel not found: /nonexistent/bzImage",
    );
    assert_one_error(&["boot", "--kernel", "/etc/hostname"], "not a kernel image");
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("vmlinux");
    std::fs::write(&k, b"\x7fELF not really").unwrap();
    std::fs::write(d.path().join("config"), b"CONFIG_BPF_SYSCALL=y\n").unwrap();
    assert_one_error(
        &["boot", "--kernel", k.to_str().unwrap()],
        "CONFIG_SCHED_CLASS_EXT",
    );
}

#[test]
fn bad_memory_sizes() {
    assert_one_error(&["boot", "--memory", "lots"], "invalid memory size");
    assert_one_error(
        &["nested", "--memory", "0", "--", "true"],
        "invalid memory size",
    );
}

#[test]
fn nested_needs_a_command() {
    let (code, _, stderr) = schedrig(&["nested"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("COMMAND"), "{stderr}");
}

/// Exactly one line on stderr, naming the problem, and no VM started
/// (the command returns at once; nothing is left running).
fn assert_one_line(args: &[&str], needle: &str) {
    let t = std::time::Instant::now();
    assert_one_error(args, needle);
    let (_, _, stderr) = schedrig(args);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{args:?} took {:?}",
        t.elapsed()
    );
}

#[test]
fn bad_scheduler_choices_are_refused_before_any_vm() {
    assert_one_line(
        &["boot", "--scheduler", "scx_nope"],
        "unknown scheduler \"scx_nope\"; built ones: scx_simple, scx_qmap, scx_central, scx_flatcg",
    );
    assert_one_line(
        &["boot", "--scheduler", "/nonexistent/scx_x"],
        "scheduler /nonexistent/scx_x: no such file",
    );
    assert_one_line(&["boot", "--scheduler", "/etc/hostname"], "not an ELF file");
    let d = tempfile::tempdir().unwrap();
    let arm = d.path().join("scx_arm");
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2;
    h[5] = 1;
    h[16] = 2;
    h[18] = 183; // EM_AARCH64
    std::fs::write(&arm, &h).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&arm, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_one_line(
        &["boot", "--scheduler", arm.to_str().unwrap()],
        "built for ELF machine 183, not x86_64",
    );
}

#[test]
fn bad_scheduler_options_are_refused_before_any_vm() {
    assert_one_line(
        &[
            "boot",
            "--scheduler",
            "/bin/true",
            "--sched-args",
            "-x 'open",
        ],
        "--sched-args \"-x 'open\": missing closing quote",
    );
    assert_one_line(
        &["boot", "--scheduler", "/bin/true", "--hold", "0"],
        "--hold must be at least 1 second",
    );
    assert_one_line(
        &["boot", "--scheduler", "/bin/true", "--hold", "500"],
        "--hold 500s does not fit in the run deadline --timeout 300s",
    );
    assert_one_line(
        &["boot", "--scheduler", "/bin/true", "--attach-timeout", "0"],
        "--attach-timeout must be at least 1 second",
    );
}

#[test]
fn a_topology_above_the_kernels_cpu_limit_is_refused() {
    // Needs the cached project kernel (CONFIG_NR_CPUS=64); `scripts/test`
    // builds it first.
    if schedrig(&["kernel", "resolve"]).0 != 0 {
        eprintln!("no cached kernel: skipping");
        return;
    }
    assert_one_line(
        &["boot", "--topology", "2n4l8c2t", "--scheduler", "/bin/true"],
        "--topology 2n4l8c2t has 128 CPUs; this kernel supports at most 64 (CONFIG_NR_CPUS)",
    );
}

/// `schedrig run`'s bad input: exactly one stderr line naming the problem
/// (and the file, line and field for TOML), a non-zero exit, no VM.
fn assert_one_run_error(args: &[&str], needles: &[&str]) {
    let started = std::time::Instant::now();
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = schedrig(&all);
    assert_eq!(code, 2, "{all:?}: exit status {code}, not 2: {stderr}");
    assert!(stdout.is_empty(), "{all:?} printed to stdout: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "{all:?}: not one line: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{all:?}: {n:?} not in {stderr:?}");
    }
    // No VM (nor nested host) was started for it.
    assert!(!stderr.contains("nested"), "{all:?}: {stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{all:?} took {:?}",
        started.elapsed()
    );
}

#[test]
fn run_refuses_bad_scenarios_before_any_vm() {
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/scenarios");
    assert_one_run_error(
        &["--scenario", "no_such"],
        &["unknown scenario \"no_such\"", "steady"],
    );
    let f = format!("{fx}/unknown_field.toml");
    assert_one_run_error(
        &["--scenario", &f],
        &["unknown_field.toml:6:1:", "unknown field `wrok`"],
    );
    let f = format!("{fx}/zero_workers.toml");
    assert_one_run_error(&["--scenario", &f], &["zero_workers.toml", "has 0 workers"]);
    let f = format!("{fx}/bad_cpuset.toml");
    assert_one_run_error(
        &["--scenario", &f],
        &["bad_cpuset.toml", "names LLC 7, but there are 2 LLCs"],
    );
    assert_one_run_error(
        &["--scenario", "steady", "--duration", "0"],
        &["--duration 0"],
    );
    assert_one_run_error(
        &["--scenario", "/nonexistent/x.toml"],
        &["/nonexistent/x.toml"],
    );
    // Splits need two CPUs.
    assert_one_run_error(
        &["--scenario", "cpuset_split", "--topology", "1n1l1c1t"],
        &["needs at least 2 CPUs"],
    );
    assert_one_run_error(
        &["--scheduler", "scx_nope"],
        &["unknown scheduler \"scx_nope\""],
    );
    assert_one_run_error(
        &["--scheduler", "eevdf", "--sched-args", "-x"],
        &["EEVDF takes none"],
    );
    // A --console-log that is a file, or under one.
    let file = env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml";
    assert_one_run_error(
        &["--scenario", "steady", "--console-log", &file],
        &["--console-log", "Cargo.toml", "cannot create it"],
    );
    assert_one_run_error(
        &[
            "--scenario",
            "steady",
            "--console-log",
            "/nonexistent-dir,x/logs",
        ],
        &["--console-log", "has a comma"],
    );
    assert!(!std::path::Path::new("/nonexistent-dir,x").exists());
    let under = format!("{file}/logs");
    assert_one_run_error(
        &["--scenario", "steady", "--console-log", &under],
        &["--console-log", "Cargo.toml/logs", "cannot create it"],
    );
    // --timeline: the same checks, named as its own flag.
    assert_one_run_error(
        &["--scenario", "steady", "--timeline", &file],
        &["--timeline", "Cargo.toml", "cannot create it"],
    );
    assert_one_run_error(
        &[
            "--scenario",
            "steady",
            "--timeline",
            "/nonexistent-dir,y/pages",
        ],
        &["--timeline", "has a comma"],
    );
    assert!(!std::path::Path::new("/nonexistent-dir,y").exists());
    // A scenario op the host cannot answer as written: refused up front.
    let dir = std::env::temp_dir().join(format!("schedrig-cli-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad_op.toml");
    std::fs::write(
        &bad,
        "name = \"bad_op\"\n[[cgroups]]\nname = \"a\"\nworkers = 1\n[[steps]]\nhold = { secs = 1.0 }\n\
         ops = [{ write_kernel = { mode = \"hot\", writes = [{ at = { symbol = \"jiffies\" }, value = { or_u32 = 1 } }] } }]\n",
    )
    .unwrap();
    assert_one_run_error(
        &["--scenario", bad.to_str().unwrap()],
        &["bad_op", "or_u32", "mode must be cold"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn scenarios_lists_the_catalogue_and_prints_toml_that_runs() {
    let (code, stdout, _) = schedrig(&["scenarios"]);
    assert_eq!(code, 0);
    assert!(stdout.lines().count() >= 14, "{stdout}");
    assert!(stdout.contains("oversubscribed"));
    let (code, toml, stderr) = schedrig(&["scenarios", "--toml", "cpuset_swap"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(toml.contains("swap_cpusets"), "{toml}");
    assert_one_error(&["scenarios", "--toml", "nope"], "unknown scenario");
}

/// scx_central on more than one CPU is refused before any VM, with the
/// kernel's reason (see `sched::check_topology`).
#[test]
fn scx_central_on_several_cpus_is_refused_with_the_reason() {
    // Needs the tree's schedulers, which `scripts/test` builds first.
    if schedrig(&["kernel", "resolve"]).0 != 0 {
        eprintln!("no cached kernel: skipping");
        return;
    }
    assert_one_line(
        &[
            "boot",
            "--scheduler",
            "scx_central",
            "--topology",
            "1n1l2c1t",
        ],
        "scx_central cannot attach reliably on 2 CPUs",
    );
    assert_one_run_error(
        &[
            "--scheduler",
            "scx_central",
            "--topology",
            "1n1l2c1t",
            "--scenario",
            "steady",
        ],
        &["ops.init on the unbound scx_ops_enable_helper kthread"],
    );
}

#[test]
fn run_refuses_a_junit_file_it_cannot_write_before_any_vm() {
    assert_one_run_error(
        &[
            "--scheduler",
            "eevdf",
            "--junit",
            "/nonexistent-dir/junit.xml",
        ],
        &["--junit /nonexistent-dir/junit.xml: its folder /nonexistent-dir does not exist"],
    );
    let dir = std::env::temp_dir();
    let d = dir.to_str().unwrap();
    assert_one_run_error(
        &["--scheduler", "eevdf", "--junit", d],
        &["is a folder; give a file name"],
    );
}

#[test]
fn run_refuses_an_unknown_baseline_before_any_vm() {
    assert_one_run_error(
        &["--scheduler", "eevdf", "--baseline", "scx_nope"],
        &["scx_nope"],
    );
}

/// `--shard K/N` deals the catalogue over N machines: the union of the
/// shards is the catalogue, with no scenario twice.
#[test]
fn shards_split_the_catalogue_whole_and_without_repeats() {
    let names = |args: &[&str]| -> Vec<String> {
        let (code, stdout, stderr) = schedrig(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    };
    let mut all = names(&["scenarios"]);
    assert!(all.len() >= 10, "{all:?}");
    let mut union = Vec::new();
    for k in 1..=4 {
        union.extend(names(&["scenarios", "--shard", &format!("{k}/4")]));
    }
    all.sort();
    union.sort();
    assert_eq!(union, all);
    // A shard with nothing to run says so and succeeds, before any VM.
    let (code, _, stderr) = schedrig(&[
        "run",
        "--scheduler",
        "eevdf",
        "--scenario",
        "steady",
        "--shard",
        "2/2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("shard 2/2 has no scenarios"), "{stderr}");
    assert_one_error(&["run", "--shard", "3/2"], "expected K/N with 1 <= K <= N");
}

/// `schedrig compare` on two synthetic `--json` outputs: a weight share
/// 30 points off in every repeat of B against about 1 in A is a
/// regression (exit 1); a run against itself is not (exit 0); a file
/// that is not a result is bad input (exit 2).
#[test]
fn compare_flags_a_shift_beyond_the_noise_and_not_a_run_against_itself() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, shares: &[f64]| {
        let lines: Vec<String> = shares
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    r#"{{"scenario":"uneven_weights","scheduler":"x","repeat":{},"checks":[{{"name":"weight_share","value":{v},"limit":10.0,"pass":true}}],"workers":[],"fingerprint":{{"kernel":"k","topology":"1n2l1c1t"}}}}"#,
                    i + 1
                )
            })
            .collect();
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n")).unwrap();
        p.to_str().unwrap().to_string()
    };
    let a = write("a.jsonl", &[0.7, 1.2, 0.4]);
    let b = write("b.jsonl", &[30.2, 29.8, 30.6]);
    let (code, out, err) = schedrig(&["compare", &a, &b]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("check:weight_share") && out.contains("REGRESSION"),
        "{out}"
    );
    let (code, out, err) = schedrig(&["compare", &a, &a]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 regressions"), "{out}");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "not json\n").unwrap();
    assert_one_error(
        &["compare", &a, bad.to_str().unwrap()],
        "not a `schedrig run --json` result",
    );
}

/// `--kernel DIR` and its companions: a folder that is not a kernel
/// tree, a tree with an in-tree build, `--kernel-config` without a tree,
/// a second `--kernel` where one boots, and `compare` of one file that
/// holds one kernel's results are refused before anything is built.
#[test]
fn kernel_tree_mistakes_are_refused_before_building() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    assert_one_error(&["boot", "--kernel", dir], "is not a kernel source tree");
    assert_one_error(
        &["run", "--kernel", dir, "--scenario", "steady"],
        "lacks Makefile",
    );
    for f in [
        "Makefile",
        "Kconfig",
        "kernel/sched/ext.c",
        "arch/x86/Kconfig",
        ".config",
    ] {
        let p = d.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "x").unwrap();
    }
    assert_one_error(&["shell", "--kernel", dir, "--exec", "true"], "make -C");
    assert_one_error(
        &["kernel", "build", "--source", dir],
        "in-tree build (.config)",
    );
    let cfg = d.path().join("my.config");
    std::fs::write(&cfg, "CONFIG_X=y\n").unwrap();
    assert_one_error(
        &["boot", "--kernel-config", cfg.to_str().unwrap()],
        "needs --kernel DIR",
    );
    assert_one_error(
        &[
            "boot",
            "--kernel",
            "/nonexistent/a",
            "--kernel",
            "/nonexistent/b",
        ],
        "only `schedrig run` takes several",
    );
    assert_one_error(
        &[
            "run",
            "--kernel",
            "/nonexistent/a",
            "--kernel",
            "/nonexistent/a",
        ],
        "given twice",
    );
    let one = d.path().join("one.json");
    std::fs::write(&one, "{\"scenario\":\"steady\",\"verdict\":\"pass\"}\n").unwrap();
    assert_one_error(&["compare", one.to_str().unwrap()], "exactly two kernels");
}
