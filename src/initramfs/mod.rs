//! Initramfs images: cpio "newc" archives the kernel unpacks as its
//! root filesystem. Archives are deterministic (fixed mtimes, inode
//! numbers by order), so their content hash can key a cache.

pub mod cpio;
pub mod guest;

pub use cpio::CpioWriter;
