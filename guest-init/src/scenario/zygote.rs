//! The zygote: a single-threaded child of guest-init that forks the
//! workers for it.
//!
//! Why: guest-init has threads (the scheduler's output readers) that run
//! on other CPUs, so each fork from it, and each copy-on-write fault in
//! it after one, flushes the TLBs of those CPUs by IPI. Under the nested
//! test host's emulation an IPI to a vCPU that the host is not running
//! costs milliseconds: forking from guest-init took about 32 ms per
//! worker on 4 vCPUs. The zygote's memory is used by one thread only.
//!
//! Its children are guest-init's (`CLONE_PARENT`): guest-init signals,
//! reaps and measures them (`wait4`) as it does the ones it forks itself.
//! Requests travel over a socket pair: the worker's `Spec` and, as
//! `SCM_RIGHTS`, the cgroup directory (for `CLONE_INTO_CGROUP`) and the
//! pipe ends of a pipe ping-pong. Any failure makes the caller fall back
//! to forking the worker itself.

use std::mem::{size_of, MaybeUninit};

use super::spawn::{CloneArgs, CLONE_INTO_CGROUP};
use super::worker::{self, Slots, Spec};

/// linux/sched.h: the child's parent is the caller's parent.
const CLONE_PARENT: u64 = 0x0000_8000;
/// The cgroup directory and the two pipe ends.
const MAX_FDS: usize = 3;
/// A request the zygote does not answer within this is given up (s).
const REPLY_TIMEOUT_S: i64 = 5;

/// The zygote could not be started, or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("socketpair: {0}")]
    SocketPair(#[source] std::io::Error),
    #[error("fork the zygote: {0}")]
    Fork(#[source] std::io::Error),
    #[error("send to the zygote: {0}")]
    Send(#[source] std::io::Error),
    #[error("no answer from the zygote: {0}")]
    NoAnswer(#[source] std::io::Error),
    #[error("no answer from the zygote: it is gone")]
    Gone,
    #[error("clone3 in the zygote: {0}")]
    Clone3(#[source] std::io::Error),
}

pub struct Zygote {
    sock: i32,
    pid: i32,
    /// Set by `abandon`: never asked again.
    abandoned: std::cell::Cell<bool>,
}

impl Zygote {
    /// Forks the zygote, on CPU `cpu` when given (guest-init sets
    /// scenarios up there, so their requests wake no other vCPU).
    /// `slots` must stay mapped for the zygote's life (the workers write
    /// into it).
    pub fn start(slots: &Slots, cpu: Option<u32>) -> Result<Zygote, ZygoteError> {
        let mut sv = [-1i32; 2];
        // SAFETY: socketpair writes two fds into the array.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(ZygoteError::SocketPair(std::io::Error::last_os_error()));
        }
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT_S,
            tv_usec: 0,
        };
        // SAFETY: sets a receive timeout from a live timeval.
        unsafe {
            libc::setsockopt(
                sv[0],
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // SAFETY: the child runs only `serve`, which makes raw syscalls on
        // stack buffers and memory mapped before the fork and never
        // allocates, so locks held by our other threads cannot hurt it.
        match unsafe { libc::fork() } {
            -1 => {
                let e = std::io::Error::last_os_error();
                close(sv[0]);
                close(sv[1]);
                Err(ZygoteError::Fork(e))
            }
            0 => {
                close(sv[0]);
                if let Some(c) = cpu {
                    // A failure only costs speed.
                    let _ = worker::set_cpus_of(0, [c as usize]);
                }
                // Real-time as guest-init is (reset by the fork); a
                // failure only costs speed.
                let _ = worker::set_harness_realtime(true);
                serve(sv[1], slots)
            }
            pid => {
                close(sv[1]);
                Ok(Zygote {
                    sock: sv[0],
                    pid,
                    abandoned: std::cell::Cell::new(false),
                })
            }
        }
    }

    /// Has the zygote fork a worker born in the cgroup open at
    /// `cgroup_fd`; its pid, a child of ours.
    pub fn spawn(&self, spec: &Spec, cgroup_fd: i32) -> Result<i32, ZygoteError> {
        let mut fds = [cgroup_fd, -1, -1];
        let mut n = 1;
        for fd in [spec.rd, spec.wr] {
            if fd >= 0 {
                fds[n] = fd;
                n += 1;
            }
        }
        // SAFETY: sends the bytes of a live Spec and `n` open fds.
        if unsafe {
            send_with_fds(
                self.sock,
                (spec as *const Spec).cast(),
                size_of::<Spec>(),
                &fds[..n],
            )
        } < 0
        {
            return Err(ZygoteError::Send(std::io::Error::last_os_error()));
        }
        let mut reply = 0i32;
        // SAFETY: reads at most 4 bytes into a live i32.
        let got = unsafe { libc::recv(self.sock, (&mut reply as *mut i32).cast(), 4, 0) };
        if got != 4 {
            return Err(if got < 0 {
                ZygoteError::NoAnswer(std::io::Error::last_os_error())
            } else {
                ZygoteError::Gone
            });
        }
        if reply <= 0 {
            return Err(ZygoteError::Clone3(std::io::Error::from_raw_os_error(
                -reply,
            )));
        }
        Ok(reply)
    }
}

impl Zygote {
    /// Ends a zygote that failed a request, so a late answer (or a late
    /// fork) cannot be mistaken for the next one's; Drop reaps it.
    pub fn abandon(&self) {
        self.abandoned.set(true);
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    pub fn usable(&self) -> bool {
        !self.abandoned.get()
    }
}

impl Drop for Zygote {
    /// Closing the socket ends the zygote; it is reaped here.
    fn drop(&mut self) {
        close(self.sock);
        let mut status = 0;
        for _ in 0..100 {
            // SAFETY: reaps our own child, without blocking.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r != 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // SAFETY: our own child; then reaped.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

fn close(fd: i32) {
    if fd >= 0 {
        // SAFETY: closes an fd this process owns.
        unsafe { libc::close(fd) };
    }
}

/// Control-message space for MAX_FDS fds, aligned for cmsghdr.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// sendmsg of `len` bytes at `data` with `fds` as SCM_RIGHTS.
///
/// # Safety
/// `data` must be valid for `len` bytes.
unsafe fn send_with_fds(sock: i32, data: *const u8, len: usize, fds: &[i32]) -> isize {
    let mut iov = libc::iovec {
        iov_base: data as *mut libc::c_void,
        iov_len: len,
    };
    let mut buf = CmsgBuf([0; 64]);
    let fd_bytes = std::mem::size_of_val(fds);
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.0.as_mut_ptr().cast();
    msg.msg_controllen = libc::CMSG_SPACE(fd_bytes as u32) as usize;
    let c = libc::CMSG_FIRSTHDR(&msg);
    (*c).cmsg_level = libc::SOL_SOCKET;
    (*c).cmsg_type = libc::SCM_RIGHTS;
    (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
    std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<i32>(), fds.len());
    libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
}

/// The zygote's loop: one request, one fork, one reply; ends when
/// guest-init closes its end. No allocation (see `Zygote::start`).
fn serve(sock: i32, slots: &Slots) -> ! {
    loop {
        let mut spec = MaybeUninit::<Spec>::uninit();
        let mut fds = [-1i32; MAX_FDS];
        let (n, nfds) = recv_with_fds(sock, spec.as_mut_ptr().cast(), size_of::<Spec>(), &mut fds);
        if n <= 0 {
            // SAFETY: ends this process at once, running nothing of the
            // parent's (no atexit, no destructors).
            unsafe { libc::_exit(0) };
        }
        let reply = if n as usize != size_of::<Spec>() || nfds == 0 {
            -libc::EBADMSG
        } else {
            // SAFETY: all of a Spec's bytes arrived, sent by guest-init from
            // a live Spec of this same executable (we are its fork), and a
            // Spec holds only plain values (no pointers), so they form a
            // valid Spec here too.
            let mut spec = unsafe { spec.assume_init() };
            fork_one(sock, slots, &mut spec, &fds[..nfds])
        };
        for &fd in &fds[..nfds] {
            close(fd);
        }
        // SAFETY: sends 4 bytes from a live i32.
        unsafe { libc::send(sock, (&reply as *const i32).cast(), 4, libc::MSG_NOSIGNAL) };
    }
}

/// Forks the worker of `spec` with the fds received for it: its pid, or
/// a negative errno.
fn fork_one(sock: i32, slots: &Slots, spec: &mut Spec, fds: &[i32]) -> i32 {
    let want = 1 + usize::from(spec.rd >= 0) + usize::from(spec.wr >= 0);
    if fds.len() != want {
        return -libc::EBADMSG;
    }
    let mut next = fds[1..].iter();
    if spec.rd >= 0 {
        spec.rd = *next.next().unwrap_or(&-1);
    }
    if spec.wr >= 0 {
        spec.wr = *next.next().unwrap_or(&-1);
    }
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP | CLONE_PARENT,
        // clone3 refuses CLONE_PARENT with an exit signal (EINVAL): the
        // child takes ours, SIGCHLD (the zygote was forked), so guest-init
        // is told of its end as of any child's.
        exit_signal: 0,
        cgroup: fds[0] as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork of this single-threaded
    // process; the child runs only worker::child_main.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    match pid {
        0 => {
            close(sock);
            close(fds[0]);
            worker::unpin_self();
            worker::child_main(slots, spec)
        }
        -1 => -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
        pid => pid as i32,
    }
}

/// recvmsg into `len` bytes at `data`, taking up to MAX_FDS fds: the
/// bytes received and the number of fds stored in `fds`.
fn recv_with_fds(sock: i32, data: *mut u8, len: usize, fds: &mut [i32; MAX_FDS]) -> (isize, usize) {
    let mut iov = libc::iovec {
        iov_base: data.cast(),
        iov_len: len,
    };
    let mut buf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain data; every pointer set below is to a live
    // buffer of the stated size; CMSG_* walk only within msg_control.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.0.as_mut_ptr().cast();
        msg.msg_controllen = buf.0.len();
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        let mut nfds = 0;
        if n >= 0 {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                    let p = libc::CMSG_DATA(c).cast::<i32>();
                    for k in 0..bytes / size_of::<i32>() {
                        let fd = p.add(k).read_unaligned();
                        if nfds < MAX_FDS {
                            fds[nfds] = fd;
                            nfds += 1;
                        } else {
                            close(fd);
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        (n, nfds)
    }
}
