//! Watches on guest kernel memory (SNRQ WATCH): the guest pages that hold
//! a watched symbol are made read-only to the guest by splitting guest RAM
//! into several memory slots, the watched pages in `KVM_MEM_READONLY` ones
//! (Documentation/virt/kvm/api.rst, KVM_SET_USER_MEMORY_REGION). A guest
//! write to such a page then exits to the VMM as KVM_EXIT_MMIO with its
//! address, length and data; the vCPU thread applies it to guest memory
//! itself and, when it touched a watched symbol's bytes, reports a hit.
//! Reads do not exit.
//!
//! Why not debug registers: in the nested test host KVM_SET_GUEST_DEBUG
//! with DR0-DR3 never delivered a KVM_EXIT_DEBUG (measured: execute and
//! write breakpoints on a minimal guest ran to HLT), and they allow four
//! addresses; read-only slots work there (KVM_CAP_READONLY_MEM is 1) and
//! have no such limit.
//!
//! Costs and limits: every write to a watched *page* exits, not only to
//! the symbol, so a watched page that the kernel writes often slows the
//! guest; a locked read-modify-write on the page (`lock xadd`) is
//! emulated by KVM as a read and a separate write, so two CPUs doing one
//! at the same instant could lose an update. Slots change only inside a
//! freeze (every vCPU parked).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Symbols watched at once.
pub const WATCHES_MAX: usize = 16;
/// Bytes of one symbol watched (a larger one is refused).
pub const WATCH_BYTES_MAX: u64 = 4096;
/// A watch takes a snapshot at its first hit, then at most once per this.
pub const HIT_SNAPSHOT_GAP: Duration = Duration::from_secs(1);
/// Hits waiting for the session (more are counted, not kept).
const HITS_QUEUED_MAX: usize = 64;
const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "this KVM has no read-only memory slots (KVM_CAP_READONLY_MEM), so it cannot watch memory"
    )]
    NoReadonlyMem,
    #[error("{WATCHES_MAX} symbols are watched already, the most one run watches")]
    TooMany,
    #[error("{symbol} is {len} bytes; at most {WATCH_BYTES_MAX} bytes are watched")]
    TooBig { symbol: String, len: u64 },
    #[error("{symbol} is watched already")]
    Already { symbol: String },
    #[error("{symbol} is at guest-physical {gpa:#x}, outside guest RAM")]
    OutsideRam { symbol: String, gpa: u64 },
    #[error("KVM_SET_USER_MEMORY_REGION (slot {slot}): {source}")]
    Slot {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// One watched symbol.
#[derive(Debug, Clone)]
struct Watch {
    symbol: String,
    /// Its guest-physical pieces (address, length).
    pieces: Vec<(u64, u64)>,
    hits: u64,
    last_report: Option<Instant>,
}

/// A guest write to a watched symbol, as its vCPU saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchHit {
    pub symbol: String,
    pub cpu: u32,
    /// The writing instruction's address (the vCPU's RIP at the exit).
    pub rip: u64,
    pub gpa: u64,
    /// The bytes written (at most 8: one MMIO exit).
    pub data: Vec<u8>,
    /// This watch's hits so far, this one included.
    pub nth: u64,
}

struct State {
    watches: Vec<Watch>,
    /// Watched pages (guest-physical, page-aligned), sorted.
    pages: Vec<u64>,
    /// Memory slots in use, numbered from 0.
    slots: u32,
}

/// Guest RAM's layout in slots, and what is watched.
pub struct Watches {
    /// Any page read-only: the vCPU exit path looks further only then.
    armed: AtomicBool,
    state: Mutex<State>,
    queue: Mutex<VecDeque<WatchHit>>,
    /// Hits not queued (the queue was full, or a snapshot was not due).
    pub unreported: AtomicU64,
    mem: GuestMemoryMmap,
    /// Guest RAM: one range from guest-physical 0, at this host address.
    ram_host: u64,
    ram_len: u64,
}

impl Watches {
    /// `mem` is guest RAM, registered as one slot (0) from address 0.
    pub fn new(mem: GuestMemoryMmap, ram_host: u64, ram_len: u64) -> Self {
        Watches {
            armed: AtomicBool::new(false),
            state: Mutex::new(State {
                watches: Vec::new(),
                pages: Vec::new(),
                slots: 1,
            }),
            queue: Mutex::new(VecDeque::new()),
            unreported: AtomicU64::new(0),
            mem,
            ram_host,
            ram_len,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `symbol` could be watched now (checked before freezing the
    /// guest, so a refused request costs it nothing).
    pub fn can_arm(&self, vm: &VmFd, symbol: &str) -> Result<(), WatchError> {
        if !vm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
            return Err(WatchError::NoReadonlyMem);
        }
        let st = self.lock();
        if st.watches.iter().any(|w| w.symbol == symbol) {
            return Err(WatchError::Already {
                symbol: symbol.into(),
            });
        }
        if st.watches.len() >= WATCHES_MAX {
            return Err(WatchError::TooMany);
        }
        Ok(())
    }

    /// Watches `symbol` at the guest-physical `pieces`. Call with every
    /// vCPU parked (inside a freeze): guest RAM's slots are rebuilt.
    pub fn arm(&self, vm: &VmFd, symbol: &str, pieces: &[(u64, u64)]) -> Result<(), WatchError> {
        self.can_arm(vm, symbol)?;
        let mut st = self.lock();
        let len: u64 = pieces.iter().map(|p| p.1).sum();
        if len > WATCH_BYTES_MAX {
            return Err(WatchError::TooBig {
                symbol: symbol.into(),
                len,
            });
        }
        if let Some(&(gpa, _)) = pieces
            .iter()
            .find(|(g, l)| g.checked_add(*l).is_none_or(|end| end > self.ram_len))
        {
            return Err(WatchError::OutsideRam {
                symbol: symbol.into(),
                gpa,
            });
        }
        let mut pages = st.pages.clone();
        for &(gpa, l) in pieces {
            let mut p = gpa & !(PAGE - 1);
            while p < gpa + l.max(1) {
                pages.push(p);
                p += PAGE;
            }
        }
        pages.sort_unstable();
        pages.dedup();
        let slots = self.set_slots(vm, st.slots, &pages)?;
        st.slots = slots;
        st.pages = pages;
        st.watches.push(Watch {
            symbol: symbol.into(),
            pieces: pieces.to_vec(),
            hits: 0,
            last_report: None,
        });
        self.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// Replaces the `old` slots with guest RAM split around `pages` (each
    /// read-only); on failure, goes back to one writable slot. Returns the
    /// slots now used.
    fn set_slots(&self, vm: &VmFd, old: u32, pages: &[u64]) -> Result<u32, WatchError> {
        let region = |slot: u32, gpa: u64, len: u64, flags: u32| kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: self.ram_host + gpa,
            flags,
        };
        let set = |r: kvm_userspace_memory_region| {
            // SAFETY: every region lies inside guest RAM's one live
            // mapping (`ram_host`, `ram_len`), which the machine keeps
            // alive while any vCPU may run (see memory::guest_memory);
            // size 0 deletes a slot.
            unsafe { vm.set_user_memory_region(r) }.map_err(|source| WatchError::Slot {
                slot: r.slot,
                source,
            })
        };
        for slot in 0..old {
            set(region(slot, 0, 0, 0))?;
        }
        let mut wanted = Vec::new();
        let mut at = 0u64;
        for &p in pages {
            if p > at {
                wanted.push((at, p - at, 0));
            }
            wanted.push((p, PAGE, KVM_MEM_READONLY));
            at = p + PAGE;
        }
        if at < self.ram_len {
            wanted.push((at, self.ram_len - at, 0));
        }
        for (slot, &(gpa, len, flags)) in (0u32..).zip(&wanted) {
            if let Err(e) = set(region(slot, gpa, len, flags)) {
                // Back to guest RAM as it was at boot, writable.
                for s in 0..slot {
                    let _ = set(region(s, 0, 0, 0));
                }
                let _ = set(region(0, 0, self.ram_len, 0));
                return Err(e);
            }
        }
        Ok(wanted.len() as u32)
    }

    /// A guest write that exited as MMIO: if it is to a watched page,
    /// applies it and returns true (and, when it touched a watched
    /// symbol, queues a hit; `due` says whether a snapshot is due, so the
    /// caller can tell the session). `rip` is read only on a hit.
    pub fn on_write(
        &self,
        cpu: u32,
        gpa: u64,
        data: &[u8],
        rip: impl FnOnce() -> u64,
    ) -> Option<bool> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut st = self.lock();
        if st.pages.binary_search(&(gpa & !(PAGE - 1))).is_err() {
            return None;
        }
        if let Err(e) = self.mem.write_slice(data, GuestAddress(gpa)) {
            tracing::warn!("watched page: guest write at {gpa:#x} not applied: {e}");
        }
        let end = gpa + data.len() as u64;
        let Some(w) = st
            .watches
            .iter_mut()
            .find(|w| w.pieces.iter().any(|&(g, l)| gpa < g + l && g < end))
        else {
            return Some(false);
        };
        w.hits += 1;
        let due = w
            .last_report
            .is_none_or(|t| t.elapsed() >= HIT_SNAPSHOT_GAP);
        if !due {
            self.unreported.fetch_add(1, Ordering::Relaxed);
            return Some(false);
        }
        w.last_report = Some(Instant::now());
        let hit = WatchHit {
            symbol: w.symbol.clone(),
            cpu,
            rip: rip(),
            gpa,
            data: data.to_vec(),
            nth: w.hits,
        };
        drop(st);
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= HITS_QUEUED_MAX {
            self.unreported.fetch_add(1, Ordering::Relaxed);
            return Some(false);
        }
        q.push_back(hit);
        Some(true)
    }

    /// The hits queued since the last call.
    pub fn take_hits(&self) -> Vec<WatchHit> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    /// Per watched symbol, its hits so far.
    pub fn counts(&self) -> Vec<(String, u64)> {
        self.lock()
            .watches
            .iter()
            .map(|w| (w.symbol.clone(), w.hits))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watches() -> Watches {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        Watches::new(mem, 0, 1 << 20)
    }

    /// A watch set up without KVM (slots are KVM's business; the VM test
    /// covers them): the page and the symbol.
    fn arm_without_kvm(w: &Watches, symbol: &str, gpa: u64, len: u64) {
        let mut st = w.lock();
        st.pages.push(gpa & !(PAGE - 1));
        st.watches.push(Watch {
            symbol: symbol.into(),
            pieces: vec![(gpa, len)],
            hits: 0,
            last_report: None,
        });
        w.armed.store(true, Ordering::Release);
    }

    #[test]
    fn writes_to_a_watched_page_are_applied_and_hits_are_rate_limited() {
        let w = watches();
        assert_eq!(w.on_write(0, 0x2000, &[1], || 0), None, "nothing armed");
        arm_without_kvm(&w, "jiffies", 0x2010, 8);
        // Elsewhere on the page: applied, no hit.
        assert_eq!(w.on_write(1, 0x2000, &[0xaa; 4], || 1), Some(false));
        let mut b = [0u8; 4];
        w.mem.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(b, [0xaa; 4]);
        // Another page: not ours.
        assert_eq!(w.on_write(1, 0x3010, &[1], || 1), None);
        // The symbol: a hit with the writer's RIP, then none within a second.
        assert_eq!(
            w.on_write(2, 0x2014, &[5, 0, 0, 0], || 0xffff_8000),
            Some(true)
        );
        assert_eq!(w.on_write(2, 0x2010, &[6], || 0), Some(false));
        let hits = w.take_hits();
        assert_eq!(hits.len(), 1);
        assert_eq!(
            (
                hits[0].symbol.as_str(),
                hits[0].cpu,
                hits[0].rip,
                hits[0].gpa,
                hits[0].nth
            ),
            ("jiffies", 2, 0xffff_8000, 0x2014, 1)
        );
        assert_eq!(w.counts(), vec![("jiffies".to_string(), 2)]);
        assert_eq!(w.unreported.load(Ordering::Relaxed), 1);
        // A write straddling the symbol's first byte counts too.
        w.lock().watches[0].last_report = None;
        assert_eq!(w.on_write(0, 0x200c, &[0; 8], || 0), Some(true));
    }
}
