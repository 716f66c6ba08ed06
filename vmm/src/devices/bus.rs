//! Address routing, as in Firecracker's `Bus`: each device claims a
//! range of the I/O-port or MMIO space, and a vCPU exit goes to the one
//! device whose range holds its address (a BTreeMap lookup, not a search
//! through every device). An address no device claims reads as all ones,
//! as on real hardware.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a device access asks of the machine beyond its own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusAction {
    None,
    /// The machine resets or powers off (the reason, for the report).
    Reset(&'static str),
    /// The guest kernel's panic path reported a panic (pvpanic).
    Panicked,
    /// The guest kernel's pvpanic driver probed the device.
    PanicDeviceProbed,
}

/// A device on a bus. `base` is the start of the range the access fell
/// in (a device may claim several), `offset` the address within it.
pub trait BusDevice: Send {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) -> BusAction;
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> BusAction;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("a device range of length 0 at {base:#x}")]
    Empty { base: u64 },
    #[error("the range {base:#x}+{len:#x} overlaps the device at {other:#x}+{other_len:#x}")]
    Overlap {
        base: u64,
        len: u64,
        other: u64,
        other_len: u64,
    },
}

struct Range {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// One address space's devices (the I/O ports, or MMIO).
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    /// Claims `base..base + len` for `device`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty { base });
        }
        let end = base.saturating_add(len);
        let before = self.ranges.range(..end).next_back();
        if let Some((&other, r)) = before.filter(|(&b, r)| b.saturating_add(r.len) > base) {
            return Err(BusError::Overlap {
                base,
                len,
                other,
                other_len: r.len,
            });
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Range)> {
        let (&base, r) = self.ranges.range(..=addr).next_back()?;
        (addr - base < r.len).then_some((base, r))
    }

    /// Reads `addr` from its device; None when no device claims it (the
    /// caller fills the data with ones) or its lock is poisoned.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<BusAction> {
        let (base, r) = self.find(addr)?;
        let mut d = r.device.lock().ok()?;
        Some(d.read(base, addr - base, data))
    }

    /// Writes `addr` to its device; None when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<BusAction> {
        let (base, r) = self.find(addr)?;
        let mut d = r.device.lock().ok()?;
        Some(d.write(base, addr - base, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access it saw.
    #[derive(Default)]
    struct Probe(Vec<(u64, u64)>);

    impl BusDevice for Probe {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) -> BusAction {
            self.0.push((base, offset));
            data.fill(7);
            BusAction::None
        }
        fn write(&mut self, base: u64, offset: u64, _: &[u8]) -> BusAction {
            self.0.push((base, offset));
            BusAction::Reset("probe")
        }
    }

    #[test]
    fn an_access_reaches_the_device_whose_range_holds_it() {
        let a = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::default();
        bus.insert(a.clone(), 0x60, 1).unwrap();
        bus.insert(a.clone(), 0x64, 1).unwrap();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x3f8, 8)
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(bus.read(0x64, &mut b), Some(BusAction::None));
        assert_eq!(b, [7]);
        assert_eq!(bus.write(0x60, &[1]), Some(BusAction::Reset("probe")));
        assert_eq!(a.lock().unwrap().0, vec![(0x64, 0), (0x60, 0)]);
        for free in [0x5f, 0x61, 0x63, 0x65, 0x3f7, 0x400] {
            assert_eq!(bus.read(free, &mut b), None, "{free:#x}");
        }
        assert!(bus.read(0x3ff, &mut b).is_some());
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let d = || Arc::new(Mutex::new(Probe::default())) as Arc<Mutex<dyn BusDevice>>;
        let mut bus = Bus::default();
        bus.insert(d(), 0x1000, 0x200).unwrap();
        assert!(matches!(
            bus.insert(d(), 0x11ff, 1),
            Err(BusError::Overlap { other: 0x1000, .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0xf00, 0x101),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(
            bus.insert(d(), 0x900, 0),
            Err(BusError::Empty { base: 0x900 })
        );
        bus.insert(d(), 0x1200, 1).unwrap();
        bus.insert(d(), 0xf00, 0x100).unwrap();
    }
}
