//! schedrig guest PID 1.
//!
//! Not implemented yet: the VMM issue fills this binary. Until then it
//! refuses to run rather than pretend to be an init.

fn main() {
    eprintln!("schedrig-guest-init: not implemented yet (see the VMM issue)");
    std::process::exit(2);
}
