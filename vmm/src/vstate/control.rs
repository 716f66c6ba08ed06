//! What the host may do to a running guest while it serves requests: a
//! freeze of every vCPU, and write watches on guest pages. A narrow
//! trait, so what serves requests depends on these two acts only, not
//! on the vCPU threads and the VM behind them.

use std::sync::Arc;

use kvm_ioctls::VmFd;

use super::freeze::{FreezeError, FreezeStats};
use super::regs::VcpuRegs;
use super::vcpu::VcpuShared;
use super::watch::{WatchError, WatchHit};

/// Why a watch could not be armed.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("freeze: {0}")]
    Freeze(#[from] FreezeError),
}

/// The acts on a running guest that requests may ask for.
pub trait GuestControl: Send {
    /// Parks every vCPU (guest time hidden) and runs `action` with their
    /// registers.
    fn freeze(
        &self,
        action: &mut dyn FnMut(&[Option<VcpuRegs>]),
    ) -> Result<FreezeStats, FreezeError>;
    /// Arms a watch on `symbol`'s guest-physical `pieces`, inside a freeze.
    fn arm_watch(&self, symbol: &str, pieces: &[(u64, u64)]) -> Result<(), ArmError>;
    /// Watch hits due a snapshot, since the last call.
    fn take_watch_hits(&self) -> Vec<WatchHit>;
}

/// The running machine's vCPUs and VM.
pub struct VcpuControl {
    pub shared: Arc<VcpuShared>,
    pub vm: Arc<VmFd>,
}

impl GuestControl for VcpuControl {
    fn freeze(
        &self,
        action: &mut dyn FnMut(&[Option<VcpuRegs>]),
    ) -> Result<FreezeStats, FreezeError> {
        let s = &self.shared;
        s.freezer
            .freeze(&self.vm, &s.stop, true, |regs| action(regs))
            .map(|(_, stats)| stats)
    }

    fn arm_watch(&self, symbol: &str, pieces: &[(u64, u64)]) -> Result<(), ArmError> {
        let (s, vm) = (&self.shared, &*self.vm);
        s.watches.can_arm(vm, symbol)?;
        let (armed, _) = s
            .freezer
            .freeze(vm, &s.stop, true, |_| s.watches.arm(vm, symbol, pieces))?;
        Ok(armed?)
    }

    fn take_watch_hits(&self) -> Vec<WatchHit> {
        self.shared.watches.take_hits()
    }
}
