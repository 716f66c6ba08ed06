//! Test helpers: a scratch directory tree standing in for /proc or
//! /sys, and the host's reply frames as the guest receives them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory under the system temp dir, removed on drop.
pub struct TempTree {
    root: PathBuf,
}

impl TempTree {
    pub fn new(label: &str) -> TempTree {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!(
            "schedrig-guest-init-{label}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        TempTree { root }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Writes `text` at `rel`, creating parent directories.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap()
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// An SNRP frame for request `id`: ok, or an error.
pub fn snrp(id: u32, ok: bool) -> Vec<u8> {
    use schedrig_wire::{encode_frame, MsgTag, SnapshotReply};
    let r = if ok {
        SnapshotReply::ok(id)
    } else {
        SnapshotReply::error(id, "no coordinator")
    };
    encode_frame(MsgTag::SnapshotReply, &r.encode()).unwrap()
}

/// A KORP frame answering request `id` with an error.
pub fn korp(id: u32) -> Vec<u8> {
    use schedrig_wire::{encode_frame, KernelOpReply, MsgTag};
    let r = KernelOpReply::error(id, "no coordinator");
    encode_frame(MsgTag::KernelOpReply, &r.encode().unwrap()).unwrap()
}
