//! Test freezes (`MachineConfig::freeze_test`): `count` freezes of
//! `hold` each, 100 ms apart, from 1 s after the guest's workload began,
//! for the freeze coordinator's VM test and benchmark. Apart from the
//! real path: a run without a freeze test never reaches this.

use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;

use crate::config::FreezeTest;
use crate::report::FreezeRecord;
use crate::vstate::vcpu::VcpuShared;

/// Gap between test freezes, and the wait before the first.
const FREEZE_TEST_GAP: Duration = Duration::from_millis(100);
const FREEZE_TEST_START: Duration = Duration::from_secs(1);

/// The test freezes of one run, taken as the run loop ticks.
pub struct FreezeTester {
    test: FreezeTest,
    next: Option<Instant>,
    pub done: Vec<FreezeRecord>,
}

impl FreezeTester {
    pub fn new(test: FreezeTest) -> Self {
        Self {
            test,
            next: None,
            done: Vec::new(),
        }
    }

    /// Takes the next freeze if it is due. `busy_since`: when the guest's
    /// workload began (None: not yet); `poll`: the run loop's tick.
    pub fn tick(
        &mut self,
        busy_since: Option<Instant>,
        poll: Duration,
        shared: &VcpuShared,
        vm: &VmFd,
    ) {
        if self.done.len() >= self.test.count as usize {
            return;
        }
        let due = *self.next.get_or_insert_with(|| {
            busy_since.map_or(Instant::now() + poll, |t| t + FREEZE_TEST_START)
        });
        if busy_since.is_some() && Instant::now() >= due {
            self.done.push(freeze_once(shared, vm, &self.test));
            self.next = Some(Instant::now() + FREEZE_TEST_GAP);
        }
    }
}

/// One test freeze: park all, note the registers, hold, release.
fn freeze_once(shared: &VcpuShared, vm: &VmFd, ft: &FreezeTest) -> FreezeRecord {
    let r = shared
        .freezer
        .freeze(vm, &shared.stop, ft.hide_time, |regs| {
            std::thread::sleep(ft.hold);
            (
                regs.iter().filter(|r| r.is_some()).count() as u32,
                regs.iter().flatten().filter(|r| r.cs & 3 == 0).count() as u32,
            )
        });
    match r {
        Ok(((with_regs, in_kernel), stats)) => FreezeRecord {
            stats: Some(stats),
            error: None,
            vcpus_with_regs: with_regs,
            in_kernel,
        },
        Err(e) => FreezeRecord {
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}
