//! The final judgement of how the machine ended: from what the vCPUs
//! reported (a reset, a triple fault, pvpanic), the guest's EXIT and the
//! vCPUs' state when the run stopped them. Console text is a hint only:
//! any guest process can print a panic or power-off line, so such a line
//! counts only when a signal the guest cannot fake backs it.

use std::time::Duration;

use crate::guest_error;
use crate::guest_errors::GuestErrors;
use crate::report::{RunVerdict, StoppedVcpu};

/// The text Linux prints when it panics: a hint only (any guest process
/// can print it); the verdict rests on pvpanic (see `devices::legacy::pvpanic`).
const KERNEL_PANIC_MARKER: &str = "Kernel panic - not syncing";
/// The reset reason while a console power-off line waits for the vCPUs'
/// own state to confirm it (see [`Ending::judge`]).
pub const POWER_DOWN_LINE: &str = "power-off line on the console";
/// Once EXIT arrived the guest reboots; this long is allowed for it.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);
/// The reset reason when EXIT_GRACE passed after EXIT.
pub const AFTER_EXIT_GRACE: &str = "no power-off or reset after EXIT";

/// What the run learnt of how the machine ended.
#[derive(Debug, Default)]
pub struct Ending {
    /// Why the machine reset or stopped, as the vCPUs or a deadline said.
    pub reset: Option<&'static str>,
    /// Registers of the vCPU that triple-faulted, for the report.
    pub fault_state: Option<String>,
    /// The guest kernel's pvpanic driver is armed: only its report makes
    /// a panic verdict.
    pub panic_device: bool,
    /// The vCPU whose kernel panic path wrote to pvpanic.
    pub panicked: Option<u32>,
    /// The guest's EXIT code.
    pub exit_code: Option<i32>,
    /// Frames that came after EXIT (refused: EXIT is the last word).
    pub after_exit: u64,
    /// Where each vCPU was when the machine was stopped.
    pub stopped: Vec<StoppedVcpu>,
}

impl Ending {
    /// The verdict of a run that no event decided. `own_init`: the guest
    /// ran an init of the user's own, which sends no EXIT.
    pub fn judge(
        &mut self,
        own_init: bool,
        console: &str,
        crash: &str,
        errors: &GuestErrors,
    ) -> (RunVerdict, String) {
        self.confirm_end();
        let panic_line = console
            .lines()
            .find(|l| l.contains(KERNEL_PANIC_MARKER))
            .map(printable);
        if let Some(panic) = self.panic_verdict(panic_line.as_deref(), errors) {
            return (RunVerdict::Panic, panic);
        }
        if self.reset == Some(POWER_DOWN_LINE) {
            // The console said power-off, the vCPUs said otherwise.
            return (RunVerdict::NoExit, self.unconfirmed_power_down());
        }
        if let Some(first) = crash.lines().map(printable).find(|l| !l.is_empty()) {
            return (RunVerdict::InitPanic, first);
        }
        if let (Some(code), Some(AFTER_EXIT_GRACE)) = (self.exit_code, self.reset) {
            let ran_on = self.not_halted();
            return match self.after_exit {
                0 => (
                    RunVerdict::NoExit,
                    format!("the guest sent EXIT {code} but did not power off, reset or halt within {EXIT_GRACE:?} ({ran_on}); the host stopped it"),
                ),
                n => (
                    RunVerdict::ProtocolError,
                    format!("the guest sent EXIT {code}, then {n} more frames (refused), and ran on until the host stopped it {EXIT_GRACE:?} later ({ran_on})"),
                ),
            };
        }
        if let Some(code) = self.exit_code {
            let how = self.reset.map_or(String::new(), |r| format!(" ({r})"));
            let after = match self.after_exit {
                0 => String::new(),
                n => format!("; {n} frames after EXIT refused"),
            };
            return (
                RunVerdict::Ok,
                format!("guest exited with {code}{how}{after}"),
            );
        }
        if let (true, Some(how), None) = (own_init, self.reset, &self.fault_state) {
            // A foreign init sends no EXIT: ending the machine on its
            // own (a reset or a power-off, not a triple fault) is all
            // it can say.
            return (
                RunVerdict::Ok,
                format!("the guest ended: {how} (own init, no EXIT expected)"),
            );
        }
        let mut why = self.reset.map_or("the machine ended".to_string(), |r| {
            format!("{r} without an EXIT frame")
        });
        if let Some(state) = &self.fault_state {
            why += &format!(" ({state})");
        }
        (RunVerdict::NoExit, why)
    }

    /// True when every vCPU was stopped halted with interrupts off: a
    /// kernel that halted for good (machine_halt's stop_this_cpu loop).
    fn all_halted_for_good(&self) -> bool {
        !self.stopped.is_empty()
            && self
                .stopped
                .iter()
                .all(|v| v.state == "halted" && v.interrupts_on == Some(false))
    }

    /// A console power-off line, or the grace after EXIT, ended the run:
    /// the vCPUs' own state decides whether the kernel halted.
    fn confirm_end(&mut self) {
        if matches!(self.reset, Some(POWER_DOWN_LINE | AFTER_EXIT_GRACE))
            && self.all_halted_for_good()
        {
            self.reset = Some("kernel halted: every vCPU halted with interrupts off");
        }
    }

    /// The panic verdict's reason, from the signals the guest cannot
    /// fake: pvpanic; or, on a kernel without its driver, the console's
    /// panic line backed by the reset that `panic=-1` makes (never by an
    /// ACPI power-off or an EXIT).
    fn panic_verdict(&self, line: Option<&str>, errors: &GuestErrors) -> Option<String> {
        if let Some(cpu) = self.panicked {
            let line = line.unwrap_or("the kernel panicked (no panic line on the console)");
            return Some(format!("{line} (pvpanic from vCPU {cpu})"));
        }
        let line = line?;
        let reset_end = matches!(
            self.reset,
            Some("i8042 reset" | "triple fault" | "system reset")
        );
        if !self.panic_device && reset_end && self.exit_code.is_none() {
            return Some(format!(
                "{line} (console text, backed by the reset that followed: this kernel has no pvpanic driver)"
            ));
        }
        guest_error!(
            errors,
            Console,
            "a panic line on the console that the kernel's panic path did not confirm: {line}"
        );
        None
    }

    /// Why a console power-off line was not one.
    fn unconfirmed_power_down(&self) -> String {
        format!(
            "the console said the kernel powered off or halted, but the machine ran on ({}): console text is not a power-off",
            self.not_halted()
        )
    }

    /// The vCPUs that were not halted for good when stopped.
    fn not_halted(&self) -> String {
        let running: Vec<String> = self
            .stopped
            .iter()
            .filter(|v| !(v.state == "halted" && v.interrupts_on == Some(false)))
            .map(|v| v.to_string())
            .collect();
        match running.is_empty() {
            true => "the host could not see the vCPUs' state".to_string(),
            false => running.join("; "),
        }
    }
}

/// A line without control characters and decoding debris (the 8250
/// driver's probing leaves a stray byte on every UART).
fn printable(line: &str) -> String {
    line.chars()
        .filter(|c| !c.is_control() && *c != char::REPLACEMENT_CHARACTER)
        .collect::<String>()
        .trim()
        .to_string()
}
