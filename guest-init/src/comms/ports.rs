//! Finding virtio-console ports by the name the host gave them
//! (PORT_NAME), as listed in /sys/class/virtio-ports/<dev>/name.

use std::path::PathBuf;
use std::time::{Duration, Instant};

const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// The /dev node of the port named `name`, if it exists now.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let rd = std::fs::read_dir(VIRTIO_PORTS).ok()?;
    for entry in rd.flatten() {
        let Ok(n) = std::fs::read_to_string(entry.path().join("name")) else {
            continue;
        };
        if n.trim_end_matches(['\n', '\0']) == name {
            let dev = PathBuf::from("/dev").join(entry.file_name());
            if dev.exists() {
                return Some(dev);
            }
        }
    }
    None
}

/// Waits up to `deadline` for the port to appear: ports are announced
/// after the control-queue handshake, which may finish after init starts.
pub fn wait_for_port(name: &str, deadline: Duration) -> Option<PathBuf> {
    let start = Instant::now();
    loop {
        if let Some(p) = find_port(name) {
            return Some(p);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
