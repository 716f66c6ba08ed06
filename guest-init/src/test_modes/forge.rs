//! Test modes that try to bend a verdict: text on the console that only
//! the kernel should print, frames after EXIT, malformed and duplicate
//! once-only frames, TEST payloads that grow 24-fold when decoded. Each
//! prints what it did, for the host-side checks (tests/vm.rs) to match.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use schedrig_wire::{KernAddrs, LifecyclePhase, MsgTag, OpOutcome, ScenarioResult};

use crate::comms::{BulkPort, CommsError};

/// How long the forged power-off and the after-EXIT frames go on.
pub const CARRY_ON: Duration = Duration::from_secs(20);
/// TEST bomb: frames sent, each of op outcomes listing empty strings.
pub const BOMB_FRAMES: usize = 40;
/// Malformed frames the bad-frames mode sends, one of each kind.
pub const BAD_FRAMES: u64 = 6;

/// Writes `line` to the kernel log at KERN_EMERG, so the console shows
/// it as if the kernel had printed it.
pub fn print_as_kernel(line: &str) -> std::io::Result<()> {
    let mut kmsg = File::options().write(true).open("/dev/kmsg")?;
    kmsg.write_all(format!("<0>{line}\n").as_bytes())
}

/// Sleeps in steps until `CARRY_ON` passed; the guest is idle but alive.
pub fn carry_on() {
    let until = Instant::now() + CARRY_ON;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// LIFE frames every 100 ms for [`CARRY_ON`], after EXIT; returns how
/// many went out (the host stops the guest before the end).
pub fn after_exit(port: &mut BulkPort<File>) -> Result<u64, CommsError> {
    let until = Instant::now() + CARRY_ON;
    let mut n = 0;
    while Instant::now() < until {
        port.lifecycle(LifecyclePhase::PayloadStarting, "after EXIT")?;
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(n)
}

/// One malformed frame of each kind: EXIT of 3 bytes, SCEN of 3, SCST
/// with a payload, STIM of 1, SCXI and TEST of garbage.
pub fn bad_frames(port: &mut BulkPort<File>) -> Result<u64, CommsError> {
    port.send(MsgTag::Exit, &[0, 0, 0])?;
    port.send(MsgTag::ScenarioEnd, &[0, 0, 0])?;
    port.send(MsgTag::ScenarioStart, &[1])?;
    port.send(MsgTag::Stimulus, &[1])?;
    port.send(MsgTag::SchedulerExitInfo, &[0xff; 7])?;
    port.send(MsgTag::TestResult, &[0xff; 9])?;
    Ok(BAD_FRAMES)
}

/// A second KADR, well-formed.
pub fn duplicate_kadr(port: &mut BulkPort<File>) -> Result<(), CommsError> {
    port.kern_addrs(&KernAddrs {
        phys_base: Some(0x200_0000),
        page_offset_base_kva: None,
        text_kva: Some(0xffff_ffff_8200_0000),
    })
}

/// [`BOMB_FRAMES`] TEST frames, each as many empty strings as a result
/// may list (about 260 KiB on the wire, over 6 MiB decoded).
pub fn test_bomb(port: &mut BulkPort<File>) -> Result<(usize, usize), CommsError> {
    use schedrig_wire::payload::scenario::{OP_OUTCOMES_MAX, OP_VALUES_MAX};
    let op = OpOutcome {
        what: vec![String::new(); OP_VALUES_MAX],
        ..OpOutcome::default()
    };
    let r = ScenarioResult {
        name: "test-bomb".into(),
        ops: vec![op; OP_OUTCOMES_MAX],
        ..ScenarioResult::default()
    };
    let payload = r.encode().unwrap_or_default();
    for _ in 0..BOMB_FRAMES {
        port.send(MsgTag::TestResult, &payload)?;
    }
    Ok((BOMB_FRAMES, payload.len()))
}
