//! guest-init's test modes: host and guest must agree on their names,
//! so they are defined once, here. The host puts
//! `schedrig.mode=<name>` on the kernel command line; guest-init reads it
//! from /proc/cmdline and misbehaves on purpose, so each of the host's
//! checks can be shown to fire.

/// The kernel command-line parameter that selects a mode. It has a dot,
/// so the kernel keeps it (as an unknown module parameter) instead of
/// passing it to init.
pub const MODE_PARAM: &str = "schedrig.mode";

/// What guest-init does after it has mounted its filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestMode {
    /// LIFE 1, KADR, TOPO, SRDY, EXIT 0, power-off.
    #[default]
    Normal,
    /// LIFE 1, KADR, TOPO, then sleep forever: never SRDY, so the host
    /// watchdog must end the VM.
    Hang,
    /// LIFE 1, then garbage on the bulk port (bad CRC, a huge length),
    /// then as normal: the host must report a protocol error.
    Garbage,
    /// As normal up to SRDY, then `panic!`: the panic text goes to COM2.
    Panic,
    /// As normal up to SRDY, then crashes the kernel (sysrq `c`): the host
    /// must report a kernel panic.
    KernelPanic,
    /// As normal up to SRDY, then never ends: the host's run deadline must
    /// end it.
    Stall,
    /// As normal, but ends with a restart (an i8042 reset with the test
    /// kernel's `reboot=k`) instead of the power-off.
    Reboot,
    /// After SRDY, sends coordinator requests (SNRQ, KORQ) and waits for
    /// the host's replies on the bulk port: EXIT 0 only if each came back
    /// well-formed and echoing its id (host-to-guest frames end to end).
    Requests,
    /// After SRDY, LIFE frames with megabyte reasons of invalid UTF-8,
    /// then more LIFE frames than the host keeps; then EXIT 0.
    LifeFlood,
    /// After SRDY, one empty frame for each of 100,000 made-up tags.
    TagFlood,
    /// After SRDY, empty valid frames as fast as the guest can write, for
    /// five seconds; then EXIT 0. The host's backpressure paces it.
    FrameFlood,
    /// After SRDY, an oversized, a lying and a crowded KORQ; EXIT 0 only
    /// if each got an error reply echoing its id.
    KorqAbuse,
    /// After SRDY, bad accesses to the virtio-mmio registers through
    /// /dev/mem for five seconds; then EXIT 0.
    MmioStorm,
    /// After SRDY, prints the kernel's panic line from user space
    /// (/dev/kmsg), then EXIT 0 and power-off: not a panic.
    ForgePanic,
    /// After SRDY, prints the kernel's power-off line from user space,
    /// then carries on for 20 s before EXIT 0: not a power-off.
    ForgePowerDown,
    /// EXIT 0, then LIFE frames for 20 s: what came after EXIT is
    /// refused and the report says the guest ran on.
    AfterExit,
    /// After SRDY, one malformed frame of each kind the host refuses
    /// (EXIT, SCEN, SCST, STIM, SCXI, TEST), then EXIT 0: each counted,
    /// none changes the run.
    BadFrames,
    /// After SRDY, a second (valid) KADR: a protocol error.
    DuplicateKadr,
    /// After SRDY, TEST frames that decode to 24 times their wire size
    /// (empty strings), then EXIT 0: the host keeps them by decoded size.
    TestBomb,
}

impl GuestMode {
    /// Every mode, with its command-line name.
    pub const ALL: [(GuestMode, &'static str); 19] = [
        (GuestMode::Normal, "normal"),
        (GuestMode::Hang, "hang"),
        (GuestMode::Garbage, "garbage"),
        (GuestMode::Panic, "panic"),
        (GuestMode::KernelPanic, "kernel-panic"),
        (GuestMode::Stall, "stall"),
        (GuestMode::Reboot, "reboot"),
        (GuestMode::Requests, "requests"),
        (GuestMode::LifeFlood, "life-flood"),
        (GuestMode::TagFlood, "tag-flood"),
        (GuestMode::FrameFlood, "frame-flood"),
        (GuestMode::KorqAbuse, "korq-abuse"),
        (GuestMode::MmioStorm, "mmio-storm"),
        (GuestMode::ForgePanic, "forge-panic"),
        (GuestMode::ForgePowerDown, "forge-power-down"),
        (GuestMode::AfterExit, "after-exit"),
        (GuestMode::BadFrames, "bad-frames"),
        (GuestMode::DuplicateKadr, "duplicate-kadr"),
        (GuestMode::TestBomb, "test-bomb"),
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        GuestMode::ALL
            .iter()
            .find(|(mode, _)| *mode == self)
            .map_or("?", |(_, name)| name)
    }

    /// The mode called `name`, if any.
    pub fn from_name(name: &str) -> Option<GuestMode> {
        GuestMode::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(mode, _)| *mode)
    }

    /// The kernel command-line argument that selects this mode.
    pub fn cmdline_arg(self) -> String {
        format!("{MODE_PARAM}={}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for (mode, name) in GuestMode::ALL {
            assert_eq!(mode.name(), name);
            assert_eq!(GuestMode::from_name(name), Some(mode));
        }
        assert_eq!(GuestMode::from_name("bogus"), None);
        assert_eq!(GuestMode::Stall.cmdline_arg(), "schedrig.mode=stall");
    }
}
