//! VM tests: everything that claims "the VM does X" boots one here.
//!
//! Custom harness (libtest-mimic). Auto mode: where this machine's KVM
//! cannot run a stock kernel (PVM, or no /dev/kvm) the whole binary
//! re-runs itself inside the nested test host (`schedrig nested`), with
//! the same arguments; `SCHEDRIG_NESTED=1|0` forces either way.

use std::process::ExitCode;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use schedrig::nested::{self, KvmMode, NestedOptions, NestedStatus};

/// Generous: the nested host emulates every instruction.
const NESTED_TIMEOUT: Duration = Duration::from_secs(40 * 60);

fn main() -> ExitCode {
    let args = Arguments::from_args();
    if let KvmMode::Nested(reason) = nested::kvm_mode() {
        if !args.list {
            return run_nested(&reason);
        }
    }
    let tests = vec![Trial::test("kvm_smoke_io_out_and_hlt", kvm_smoke)];
    libtest_mimic::run(&args, tests).exit_code()
}

fn run_nested(reason: &str) -> ExitCode {
    eprintln!("vm tests: {reason}; running them inside the nested test host");
    let mut argv: Vec<String> = std::env::args().collect();
    match std::env::current_exe() {
        Ok(exe) => argv[0] = exe.display().to_string(),
        Err(e) => {
            eprintln!("vm tests: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    }
    let opts = NestedOptions {
        timeout: NESTED_TIMEOUT,
        ..Default::default()
    };
    match nested::run(&opts, &argv) {
        Ok(out) => {
            if !matches!(out.status, NestedStatus::Exited(_)) {
                eprintln!("vm tests: nested host: {:?}", out.status);
                eprintln!("--- nested console tail ---\n{}", out.console_tail);
                eprintln!("--- qemu stderr ---\n{}", out.qemu_stderr);
            }
            ExitCode::from(out.exit_code().clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("vm tests: cannot start the nested host: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Proves /dev/kvm is a real KVM: a real-mode guest writes two bytes to
/// COM1's port and halts; the exits must be exactly those three.
fn kvm_smoke() -> Result<(), Failed> {
    use kvm_ioctls::{Kvm, VcpuExit};

    const GUEST_ADDR: u64 = 0x1000;
    const MEM_SIZE: usize = 0x4000;
    // mov dx, 0x3f8; mov al, 'K'; out dx, al; mov al, 'V'; out dx, al; hlt
    const CODE: &[u8] = &[0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xb0, b'V', 0xee, 0xf4];

    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // SAFETY: an anonymous private mapping; checked for MAP_FAILED below
    // and unmapped at the end of this function, after the VM is dropped.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err("mmap guest memory failed".into());
    }
    // SAFETY: `mem` is a fresh writable mapping of MEM_SIZE bytes.
    unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem as *mut u8, CODE.len()) };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    let result = (|| -> Result<Vec<String>, Failed> {
        // SAFETY: the region maps memory we own for longer than the VM lives.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs)
            .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        regs.rip = GUEST_ADDR;
        regs.rflags = 2;
        vcpu.set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        let mut exits = Vec::new();
        for _ in 0..16 {
            match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
                VcpuExit::IoOut(port, data) => exits.push(format!("out {port:#x} {data:?}")),
                VcpuExit::Hlt => {
                    exits.push("hlt".into());
                    break;
                }
                other => {
                    exits.push(format!("{other:?}"));
                    break;
                }
            }
        }
        Ok(exits)
    })();
    drop(vm);
    // SAFETY: the VM that referenced the mapping is gone.
    unsafe { libc::munmap(mem, MEM_SIZE) };
    let exits = result?;
    let want = vec![
        format!("out 0x3f8 {:?}", [b'K']),
        format!("out 0x3f8 {:?}", [b'V']),
        "hlt".to_string(),
    ];
    if exits != want {
        return Err(format!("exits {exits:?}, want {want:?}").into());
    }
    Ok(())
}
