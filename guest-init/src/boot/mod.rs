//! What init does around the job: the pseudo filesystems ([`mount`]),
//! stdio and the guest's own console lines ([`console`]), crash reports
//! on COM2 ([`crash`]), what the host is told before SRDY ([`kaddr`]:
//! KADR, [`topology`]: TOPO), the protocol's steps in order
//! ([`protocol`]), and the end ([`power`]).

pub mod console;
pub mod crash;
pub mod kaddr;
pub mod mount;
pub mod power;
pub mod protocol;
pub mod topology;
