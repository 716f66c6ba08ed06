//! The kick: a real-time signal that takes a vCPU thread out of KVM_RUN
//! (the freeze coordinator parks vCPUs with it, the run's stop ends
//! them). Its handler sets the thread's `kvm_run.immediate_exit`, so a
//! kick that lands just before KVM_RUN still makes it return at once
//! (Documentation/virt/kvm/api.rst, "immediate_exit").

/// Why the kick could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    #[error("installing the vCPU kick signal handler: {0}")]
    Handler(#[source] std::io::Error),
}

/// Real-time signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

thread_local! {
    /// This vCPU thread's `kvm_run` mapping (null outside vCPU threads):
    /// the kick handler sets its `immediate_exit`.
    static KVM_RUN: std::cell::Cell<*mut kvm_bindings::kvm_run> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Makes kicks of this thread end its KVM_RUN through `run`, the live
/// `kvm_run` mapping of the VcpuFd this thread runs. Call
/// [`disarm_thread`] before that VcpuFd is dropped.
pub fn arm_thread(run: *mut kvm_bindings::kvm_run) {
    KVM_RUN.with(|r| r.set(run));
}

/// This thread's `kvm_run` mapping is going away: kicks only interrupt.
pub fn disarm_thread() {
    KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
}

/// Installs the kick signal's handler, so the signal interrupts KVM_RUN
/// (EINTR) instead of killing the process, and sets the thread's
/// `kvm_run.immediate_exit`. Idempotent.
pub fn install_kick_handler() -> Result<(), KickError> {
    extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // A const-initialised thread-local without a destructor: reading
        // it does not allocate or lock, so it is safe in a handler.
        let run = KVM_RUN.with(|r| r.get());
        if !run.is_null() {
            // SAFETY: `run` is this thread's live kvm_run mapping: it is
            // set by the vCPU thread from its own VcpuFd (`arm_thread`)
            // and cleared before that VcpuFd is dropped (`disarm_thread`).
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    }
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick)
        .map_err(|e| KickError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}
