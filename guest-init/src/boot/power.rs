//! Ending the machine: PID 1 must never return.

use nix::sys::reboot::{reboot as reboot_syscall, RebootMode};

/// Flushes filesystems and powers off. If power-off itself fails there
/// is nothing left to report to, so it spins rather than exit (PID 1
/// exiting panics the kernel, which the host would misread).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = reboot_syscall(RebootMode::RB_POWER_OFF);
    spin()
}

/// Flushes filesystems and restarts the machine (`reboot(RB_AUTOBOOT)`).
///
/// The schedrig test VM's kernel runs with `reboot=k`, so a restart
/// resets through the i8042 (port 0x64), which the VMM takes as the end
/// of the VM. A failure is printed to the console (stderr), then this
/// spins for the same reason as [`power_off`].
pub fn reboot() -> ! {
    nix::unistd::sync();
    let Err(errno) = reboot_syscall(RebootMode::RB_AUTOBOOT);
    let line = format!("reboot(RB_AUTOBOOT) failed: {errno}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    spin()
}

fn spin() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
