//! Scenarios from TOML files: one scenario per file. A file that does not
//! parse, or names an unknown field, gives one error naming the file,
//! the line and column, and the field.

use std::path::Path;

use crate::model::Scenario;

/// The largest scenario file read.
pub const MAX_FILE_LEN: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TomlError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {len} bytes; a scenario file may have at most {MAX_FILE_LEN}")]
    TooLarge { path: String, len: u64 },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Reads and parses one scenario file (not yet validated against a
/// topology: see [`Scenario::validate`]).
pub fn load(path: &Path) -> Result<Scenario, TomlError> {
    let shown = path.display().to_string();
    let read = |source| TomlError::Read {
        path: shown.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_FILE_LEN {
        return Err(TomlError::TooLarge { path: shown, len });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse(&text, &shown)
}

/// Parses `text`; errors name `path`.
pub fn parse(text: &str, path: &str) -> Result<Scenario, TomlError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        TomlError::Parse {
            path: path.to_string(),
            line,
            column,
            message: e.message().trim().replace('\n', " "),
        }
    })
}

/// 1-based line and column of byte `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The scenario as TOML (what `schedrig scenarios --toml NAME` prints).
pub fn to_toml(s: &Scenario) -> Result<String, toml::ser::Error> {
    toml::to_string(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::CpusetSpec;

    const EXAMPLE: &str = r#"
name = "two_halves"
description = "spinners on one half, sleepers on the other, then swapped"
duration = 6.0

[[cgroups]]
name = "spinners"
workers = 4
work = "cpu_spin"
cpuset = { split = { index = 0, of = 2 } }
weight = 200

[[cgroups]]
name = "sleepers"
workers = 2
work = { bursty = { burst_ms = 5, sleep_ms = 10 } }
cpuset = { split = { index = 1, of = 2 } }

[[steps]]
hold = { fraction = 0.5 }

[[steps]]
ops = [{ swap_cpusets = { a = "spinners", b = "sleepers" } }]
hold = { secs = 3.0 }

[checks]
max_gap_ms = 1500
"#;

    #[test]
    fn the_readme_example_parses_and_validates() {
        let s = parse(EXAMPLE, "x.toml").unwrap();
        assert_eq!(s.cgroups.len(), 2);
        assert_eq!(
            s.cgroups[0].cpuset,
            Some(CpusetSpec::Split { index: 0, of: 2 })
        );
        assert_eq!(
            s.cgroups[1].work,
            WorkType::Bursty {
                burst_ms: 5,
                sleep_ms: 10
            }
        );
        assert_eq!(s.steps[1].hold, Hold::Secs(3.0));
        assert_eq!(s.checks.max_gap_ms, Some(1500));
        s.validate(&crate::CpuLayout::uniform(1, 2, 2)).unwrap();
        // And what we print parses back.
        let again = parse(&to_toml(&s).unwrap(), "y.toml").unwrap();
        assert_eq!(again, s);
    }

    /// The docs' example is the documentation: it must parse, validate
    /// and mean what docs/scenarios.md says.
    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../../docs/scenarios.md");
        let start = doc
            .find("```toml\n")
            .expect("a toml block in docs/scenarios.md")
            + "```toml\n".len();
        let block = &doc[start..start + doc[start..].find("```").unwrap()];
        let s = parse(block, "docs/scenarios.md").unwrap();
        s.validate(&crate::CpuLayout::uniform(1, 2, 1)).unwrap();
        assert_eq!(s.name, "two_halves");
        assert_eq!(s.cgroups[0].policy, Policy::Other);
        assert!(matches!(s.steps[1].ops[0], Op::SwapCpusets { .. }));
    }

    /// The host-request ops as a user writes them (the VM test's fixture),
    /// and the mistakes validation refuses in them, by name.
    #[test]
    fn host_request_ops_parse_and_bad_ones_are_refused() {
        let text = include_str!("../../tests/fixtures/scenarios/host_ops.toml");
        let s = parse(text, "host_ops.toml").unwrap();
        let two = crate::CpuLayout::uniform(1, 1, 2);
        s.validate(&two).unwrap();
        let kinds: Vec<&str> = s.steps[0].ops.iter().map(Op::name).collect();
        assert_eq!(
            kinds[..4],
            ["snapshot", "watch", "read_kernel", "read_kernel"]
        );
        assert!(s.steps[0].ops.iter().all(Op::is_host_request));
        let bad = |op: &str, want: &str| {
            let t = format!(
                "name = \"x\"\n[[cgroups]]\nname = \"a\"\nworkers = 1\n[[steps]]\nhold = {{ secs = 1.0 }}\nops = [{op}]\n"
            );
            let e = parse(&t, "x.toml")
                .map_err(|e| e.to_string())
                .and_then(|s| s.validate(&two).map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(e.contains(want), "{op}: {e}");
        };
        bad(
            "{ write_kernel = { mode = \"hot\", writes = [{ at = { symbol = \"x\" }, value = { or_u32 = 1 } }] } }",
            "mode must be cold",
        );
        bad(
            "{ read_kernel = { mode = \"hot\", at = [{ worker = { cgroup = \"a\", index = 1, field = \"prio\" } }], width = \"u32\" } }",
            "worker 1 of cgroup \"a\", which has 1 workers",
        );
        bad(
            "{ read_kernel = { mode = \"hot\", at = [{ per_cpu = { symbol = \"runqueues\", field = \"clock\", cpu = 5 } }], width = \"u64\" } }",
            "CPU 5 is not in the topology",
        );
        bad(
            "{ read_kernel = { mode = \"cold\", at = [], width = \"u32\" } }",
            "no places",
        );
        bad(
            "{ watch = { symbol = \"a b\" } }",
            "must be 1 to 63 letters",
        );
        bad("{ snapshot = { tag = \"\" } }", "snapshot tag");
        bad(
            "{ read_kernel = { mode = \"hot\", at = [{ symbol = \"x\" }], width = { bytes = 0 } } }",
            "0 bytes",
        );
        bad(
            "{ read_kernel = { mode = \"warm\", at = [], width = \"u32\" } }",
            "warm",
        );
    }

    #[test]
    fn catalogue_round_trips_through_toml() {
        for s in crate::catalogue::catalogue(&crate::CpuLayout::uniform(1, 2, 2)) {
            let t = to_toml(&s).unwrap();
            assert_eq!(parse(&t, "c.toml").unwrap(), s, "{t}");
        }
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad = "name = \"x\"\n[[cgroups]]\nname = \"a\"\nworkers = 1\nwokr = \"cpu_spin\"\n";
        let e = parse(bad, "bad.toml").unwrap_err().to_string();
        assert!(e.starts_with("bad.toml:5:1: unknown field `wokr`"), "{e}");
        let e = parse("name = 3\n", "n.toml").unwrap_err().to_string();
        assert!(e.starts_with("n.toml:1:8:"), "{e}");
        let e = parse(
            "name = \"x\"\n[[cgroups]]\nname = \"a\"\nworkers = 1\nwork = \"spin\"\n",
            "w.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("w.toml:5:") && e.contains("spin"), "{e}");
    }
}
