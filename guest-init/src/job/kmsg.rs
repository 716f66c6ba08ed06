//! The kernel log, read from /dev/kmsg: sched_ext's own lines say how a
//! scheduler ended (`sched_ext: BPF scheduler "NAME" disabled (REASON)`
//! and the message line after it), which its exit code never does.

use schedrig_wire::SchedExitKind;

/// The text of one /dev/kmsg record (`pri,seq,ts,flags;text\n` plus
/// continuation lines that start with a space), without the prefix.
/// None for a record without the `;` separator.
pub fn record_text(record: &[u8]) -> Option<String> {
    let semi = record.iter().position(|&b| b == b';')?;
    let body = &record[semi + 1..];
    let end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
    Some(String::from_utf8_lossy(&body[..end]).into_owned())
}

/// What the kernel logged about one scheduler's end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disabled {
    /// The ops name in quotes.
    pub ops: String,
    /// The text in parentheses.
    pub reason: String,
    /// The kind that reason names, if it is one of sched_ext's.
    pub kind: Option<SchedExitKind>,
    /// The line after it for an error kind: `sched_ext: NAME: MSG`.
    pub message: String,
}

const DISABLED_PREFIX: &str = "sched_ext: BPF scheduler \"";
const DISABLED_MID: &str = "\" disabled (";

/// Parses `sched_ext: BPF scheduler "NAME" disabled (REASON)`.
pub fn parse_disabled(line: &str) -> Option<Disabled> {
    let rest = line.strip_prefix(DISABLED_PREFIX)?;
    let (ops, rest) = rest.split_once(DISABLED_MID)?;
    let reason = rest.strip_suffix(')')?;
    Some(Disabled {
        ops: ops.to_string(),
        reason: reason.to_string(),
        kind: SchedExitKind::from_reason(reason),
        message: String::new(),
    })
}

/// True for `sched_ext: BPF scheduler "NAME" enabled`.
pub fn is_enabled_line(line: &str) -> bool {
    line.starts_with(DISABLED_PREFIX) && line.ends_with("\" enabled")
}

/// The last "disabled" line of `lines` with its message line (the next
/// line that is `sched_ext: OPS: MSG`, for error kinds).
pub fn last_disabled(lines: &[String]) -> Option<Disabled> {
    let i = lines.iter().rposition(|l| parse_disabled(l).is_some())?;
    let mut d = parse_disabled(&lines[i])?;
    let msg_prefix = format!("sched_ext: {}: ", d.ops);
    if let Some(m) = lines[i + 1..]
        .iter()
        .take(4)
        .find_map(|l| l.strip_prefix(&msg_prefix))
    {
        d.message = m.to_string();
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_lose_their_prefix_and_continuations() {
        assert_eq!(
            record_text(
                b"6,339,5140900,-;sched_ext: BPF scheduler \"simple\" enabled\n SUBSYSTEM=x\n"
            )
            .as_deref(),
            Some("sched_ext: BPF scheduler \"simple\" enabled")
        );
        assert_eq!(record_text(b"no separator"), None);
        assert_eq!(record_text(b"3,1,2,-;\xff\n").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn disabled_lines_name_kind_and_message() {
        let lines: Vec<String> = [
            "sched_ext: BPF scheduler \"qmap\" enabled",
            "sched_ext: BPF scheduler \"qmap\" disabled (runnable task stall)",
            "sched_ext: qmap: spin[88] failed to run for 5.120s",
            "   scx_watchdog_workfn+0x154/0x1e0",
        ]
        .map(String::from)
        .to_vec();
        assert!(is_enabled_line(&lines[0]));
        assert!(!is_enabled_line(&lines[1]));
        let d = last_disabled(&lines).unwrap();
        assert_eq!(d.ops, "qmap");
        assert_eq!(d.kind, Some(SchedExitKind::ErrorStall));
        assert_eq!(d.message, "spin[88] failed to run for 5.120s");

        let unreg = parse_disabled(
            "sched_ext: BPF scheduler \"simple\" disabled (unregistered from user space)",
        )
        .unwrap();
        assert_eq!(unreg.kind, Some(SchedExitKind::Unreg));
        assert_eq!(
            parse_disabled("sched_ext: BPF scheduler \"x\" enabled"),
            None
        );
        assert_eq!(last_disabled(&lines[..1]), None);
        let odd = parse_disabled("sched_ext: BPF scheduler \"a\" disabled (new reason)").unwrap();
        assert_eq!(odd.kind, None);
        assert_eq!(odd.reason, "new reason");
    }
}
