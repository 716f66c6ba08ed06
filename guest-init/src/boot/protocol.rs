//! The steps of the boot protocol, each with its console line, so that
//! the real path (main.rs) and the test modes (which take the same steps,
//! bent) say and send the same: LIFE(init started), KADR, TOPO, SRDY
//! (with where init's time to it went), EXIT, and how the guest ends.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use schedrig_wire::LifecyclePhase;

use super::console::say;
use super::{kaddr, topology};
use crate::comms::{BulkPort, CommsError};

/// How the guest ends once EXIT is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// ACPI S5, which ends the VM.
    PowerOff,
    /// A restart (`reboot=k`: an i8042 reset), for `schedrig.mode=reboot`.
    Restart,
}

impl End {
    /// The last console line: the EXIT code and what comes next.
    pub fn line(self, exit_code: i32) -> String {
        let end = match self {
            End::Restart => "restarting",
            End::PowerOff => "powering off",
        };
        format!("exit {exit_code}; {end}")
    }
}

/// The guest clock (CLOCK_BOOTTIME) at init's start and at each step
/// before SRDY: the console line says where init's time to SRDY went.
pub struct Steps {
    start: Duration,
    last: Duration,
    text: String,
}

impl Steps {
    pub fn start() -> Self {
        let now = boot_clock();
        Self {
            start: now,
            last: now,
            text: String::new(),
        }
    }

    pub fn mark(&mut self, what: &str) {
        let now = boot_clock();
        self.text += &format!(", {what} {} ms", now.saturating_sub(self.last).as_millis());
        self.last = now;
    }

    fn line(&self, what: &str) -> String {
        let now = boot_clock();
        format!(
            "{what} at guest clock {:.3} s: init started at {:.3} s{}",
            now.as_secs_f64(),
            self.start.as_secs_f64(),
            self.text
        )
    }
}

/// CLOCK_BOOTTIME; zero if it cannot be read (the line then says so by
/// its zeros, nothing depends on it).
fn boot_clock() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// LIFE(init started), its reason the set-up's warnings.
pub fn init_started<W: Write>(
    port: &mut BulkPort<W>,
    warnings: &[String],
) -> Result<(), CommsError> {
    port.lifecycle(LifecyclePhase::InitStarted, &warnings.join("; "))
}

/// KADR: the kernel's addresses as /proc shows them; what could not be
/// read is said on the console.
pub fn kern_addrs<W: Write>(port: &mut BulkPort<W>) -> Result<(), CommsError> {
    let (addrs, problems) = kaddr::read_kern_addrs(Path::new("/proc"));
    for problem in &problems {
        say(&format!("KADR: {problem}"));
    }
    say(&format!("KADR: {addrs:x?}"));
    port.kern_addrs(&addrs)
}

/// TOPO: the CPUs as sysfs shows them. A topology that cannot be read or
/// encoded is said and not sent (the host then goes without).
pub fn topology<W: Write>(port: &mut BulkPort<W>) -> Result<(), CommsError> {
    match topology::read_topology(Path::new("/sys/devices/system")) {
        Ok(topo) => {
            say(&format!(
                "TOPO: {} cpus, {} nodes, {} llcs, {} cores, {} threads per core",
                topo.cpus(),
                topo.nodes(),
                topo.llcs(),
                topo.cores(),
                topo.threads_per_core()
            ));
            match port.topology(&topo) {
                Err(CommsError::Topology(e)) => say(&format!("TOPO not sent: {e}")),
                other => other?,
            }
        }
        Err(e) => say(&format!("TOPO not sent: {e}")),
    }
    Ok(())
}

/// SRDY, then the console line of where the time to it went.
pub fn system_ready<W: Write>(port: &mut BulkPort<W>, steps: &Steps) -> Result<(), CommsError> {
    port.system_ready()?;
    say(&steps.line("SRDY"));
    Ok(())
}
