//! The mode named by `schedrig.mode=<mode>` on the kernel command line.
//! The modes themselves are defined in `schedrig-scenarios`, shared with
//! the host; this module parses them.

use std::fmt;

/// The modes and their names are shared with the host.
pub use schedrig_scenarios::{GuestMode as Mode, MODE_PARAM};

/// `schedrig.mode=<value>` with a value that names no mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMode(pub String);

impl fmt::Display for UnknownMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Mode::ALL.iter().map(|(_, name)| *name).collect();
        write!(
            f,
            "unknown {MODE_PARAM}={:?} (known: {})",
            self.0,
            names.join(", ")
        )
    }
}

/// The mode named on a kernel command line; [`Mode::Normal`] when the
/// parameter is absent. As with kernel parameters, the last one wins.
/// Double quotes around the value are removed.
pub fn mode_from_cmdline(cmdline: &str) -> Result<Mode, UnknownMode> {
    let value = cmdline
        .split_whitespace()
        .filter_map(|word| {
            let word = word.strip_prefix('"').unwrap_or(word);
            word.strip_prefix(MODE_PARAM)
                .and_then(|rest| rest.strip_prefix('='))
                .or_else(|| (word == MODE_PARAM).then_some(""))
        })
        .next_back();
    let Some(value) = value else {
        return Ok(Mode::Normal);
    };
    let value = value.trim_matches('"');
    Mode::ALL
        .iter()
        .find(|(_, name)| *name == value)
        .map(|(mode, _)| *mode)
        .ok_or_else(|| UnknownMode(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_cmdline() {
        let cases = [
            ("", Mode::Normal),
            ("console=ttyS0 reboot=k panic=-1\n", Mode::Normal),
            ("console=ttyS0 schedrig.mode=hang quiet\n", Mode::Hang),
            ("schedrig.mode=garbage", Mode::Garbage),
            ("schedrig.mode=panic", Mode::Panic),
            ("schedrig.mode=normal", Mode::Normal),
            ("schedrig.mode=hang schedrig.mode=panic", Mode::Panic),
            ("schedrig.mode=\"hang\"", Mode::Hang),
            ("\"schedrig.mode=hang\"", Mode::Hang),
            ("xschedrig.mode=hang schedrig.modes=panic", Mode::Normal),
            ("init=/init -- schedrig.mode=garbage", Mode::Garbage),
        ];
        for (cmdline, mode) in cases {
            assert_eq!(mode_from_cmdline(cmdline), Ok(mode), "{cmdline:?}");
        }
        assert_eq!(
            mode_from_cmdline("schedrig.mode=HANG"),
            Err(UnknownMode("HANG".into()))
        );
        assert_eq!(
            mode_from_cmdline("schedrig.mode= x"),
            Err(UnknownMode(String::new()))
        );
        assert_eq!(
            mode_from_cmdline("schedrig.mode"),
            Err(UnknownMode(String::new()))
        );
        let text = UnknownMode("boom".into()).to_string();
        assert!(
            text.contains("\"boom\"") && text.contains("garbage"),
            "{text}"
        );
    }

    #[test]
    fn names_round_trip() {
        for (mode, name) in Mode::ALL {
            assert_eq!(mode.name(), name);
            assert_eq!(mode_from_cmdline(&format!("{MODE_PARAM}={name}")), Ok(mode));
        }
    }
}
