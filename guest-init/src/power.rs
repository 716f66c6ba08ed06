//! Ending the machine: PID 1 must never return.

use nix::sys::reboot::{reboot, RebootMode};

/// Flushes filesystems and powers off. If power-off itself fails there
/// is nothing left to report to, so it spins rather than exit (PID 1
/// exiting panics the kernel, which the host would misread).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
