//! The system calls each worker family may make, and those refused with
//! an error rather than a kill.
//!
//! How these lists were found (x86_64, kernel 6.18, glibc 2.36), by
//! running each family's e2e files with the filter in log mode
//! (`[workers] seccomp = "log"`: `SECCOMP_RET_LOG` for every call off the
//! list) and reading the kernel's audit lines back:
//!
//! 1. A first list held what the runtime surely makes (read, write, mmap,
//!    futex, clone, signals, ...) plus the refused calls; about ninety
//!    plausible others (legacy x86_64 forms, socket I/O, epoll, ioctl,
//!    sched_*, get*id, ...) were left off on purpose so that each use
//!    would be logged.
//! 2. With the kernel's printk rate limit lifted for the run
//!    (`echo 1000000 > /proc/sys/kernel/printk_ratelimit_burst`, or the
//!    audit lines are dropped as "callbacks suppressed"), these ran once,
//!    one after another: `sandbox lite text vision vision_tasks vision_h264
//!    chat embed hostile_runtime hostile_vision faults`
//!    (`cargo test --release -p e2e --test NAME`), while
//!    `dmesg -w | grep type=1326 > audit.log` collected the lines.
//! 3. `grep -o 'exe="[^"]*" sig=0 arch=c000003e syscall=[0-9]*' audit.log |
//!    sort | uniq -c` gave each worker binary's calls; a call every family
//!    made went to [`BASE`], the others to their family's list (with the
//!    runtime path that needs it), and the rest of the candidates stayed
//!    off. glibc paths the tests cannot reach but a worker will (malloc's
//!    `mremap`/`madvise`, `sched_yield` of thread pools with more threads,
//!    `getrandom`) were kept in [`BASE`] by reading glibc.
//! 4. The same files then passed with the filter enforced.
//!
//! A call still missing shows as a worker killed by SIGSYS (reason
//! `crash`, "signal 31"); the operator's way out at 3 a.m. is
//! `seccomp = "log"` (and the kernel log names the call: `syscall=N`), and
//! the fix is one line here.

use libc::c_long;

/// A system call's name (`SYS_read`, for messages) and number.
pub(super) type Sys = (&'static str, c_long);

/// `(name, number)` pairs from `libc`'s `SYS_*` constants.
macro_rules! sys {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name)),*]
    };
}

/// Refused with EPERM whatever the family (each a way out of the sandbox,
/// none needed to serve a model): running programs, tracing or reading
/// other processes, new sockets (the inherited socketpair and eventfds stay
/// usable), mounts and namespaces, kernel modules and keys, BPF, perf,
/// userfaultfd and io_uring (the kernel's largest attack surfaces),
/// `tkill` (a bare thread id could be anyone's) and `pidfd_getfd`
/// (another process's descriptors).
pub(super) const REFUSED: &[Sys] = sys![
    SYS_execve,
    SYS_execveat,
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_socket,
    SYS_socketpair,
    SYS_mount,
    SYS_umount2,
    SYS_fsopen,
    SYS_fsconfig,
    SYS_fsmount,
    SYS_fspick,
    SYS_move_mount,
    SYS_open_tree,
    SYS_mount_setattr,
    SYS_pivot_root,
    SYS_chroot,
    SYS_unshare,
    SYS_setns,
    SYS_bpf,
    SYS_keyctl,
    SYS_add_key,
    SYS_request_key,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_kexec_load,
    SYS_kexec_file_load,
    SYS_reboot,
    SYS_perf_event_open,
    SYS_userfaultfd,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_open_by_handle_at,
    SYS_tkill,
    SYS_pidfd_getfd,
];

/// Allowed, but only towards this process (the first argument is its pid):
/// a compromised worker must not signal the supervisor, another worker or
/// its process group. glibc's `abort`/`raise` use `tgkill(getpid(), ...)`.
pub(super) const OWN_PID_ONLY: &[Sys] = sys![
    SYS_kill,
    SYS_tgkill,
    SYS_rt_sigqueueinfo,
    SYS_rt_tgsigqueueinfo,
    SYS_pidfd_open,
];

/// Allowed towards this process only (the first argument 0 or its pid):
/// glibc reads its own limits with `prlimit64(0, ...)` when it starts a
/// thread; another pid would let a worker change the supervisor's limits.
pub(super) const OWN_PID_OR_SELF: &[Sys] = sys![SYS_prlimit64];

/// What every worker makes, whatever its family: the worker runtime (the
/// channel's eventfds and death-watch `poll`, the shared-memory regions'
/// descriptors received on that socket (`recvmsg`) and read and written
/// with `pread64`/`pwrite64`, heartbeats, tracing to
/// stderr, `/proc/self` memory figures), Rust's std (threads, `statx`,
/// `readlink` of `/proc/self/exe`), glibc (malloc's `mremap`/`madvise`,
/// pthreads' `rseq`/`set_robust_list`, `abort`'s signals, sleeps), and the
/// sandbox probe of test builds (`posix_spawn`: its child's `dup2` of
/// `/dev/null`, the parent's `wait4`; `execve` itself is refused).
pub(super) const BASE: &[Sys] = sys![
    // Files and descriptors.
    SYS_read,
    SYS_write,
    SYS_writev,
    SYS_pread64,
    SYS_pwrite64,
    SYS_recvmsg,
    SYS_close,
    SYS_openat,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_lseek,
    SYS_fcntl,
    SYS_readlinkat,
    SYS_dup3,
    SYS_ppoll,
    SYS_eventfd2,
    // Memory.
    SYS_mmap,
    SYS_munmap,
    SYS_mprotect,
    SYS_mremap,
    SYS_madvise,
    SYS_brk,
    // Threads, futexes, signals, sleeps.
    SYS_clone,
    SYS_clone3,
    SYS_exit,
    SYS_exit_group,
    SYS_wait4,
    SYS_futex,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_set_tid_address,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sigaltstack,
    SYS_restart_syscall,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_prctl,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    // Who and what.
    SYS_getpid,
    SYS_gettid,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_getrandom,
    SYS_sysinfo,
];

/// x86_64's older forms that glibc still calls there (aarch64 has only
/// the `*at`/`p*`/`dup3` forms, in [`BASE`]).
#[cfg(target_arch = "x86_64")]
pub(super) const BASE_X86_64: &[Sys] = sys![SYS_readlink, SYS_poll, SYS_dup2];

/// Nothing on other architectures.
#[cfg(not(target_arch = "x86_64"))]
pub(super) const BASE_X86_64: &[Sys] = &[];

/// TEXT (llama.cpp with OpenMP): `posix_fadvise` on the model file it
/// maps (its loader's read-ahead hint).
pub(super) const TEXT: &[Sys] = sys![SYS_fadvise64];

/// VISION (OpenCV, openh264, LiteRT/XNNPACK for `.tflite` detectors):
/// OpenCV lists `/sys/devices/system/cpu` (`getdents64`) and reads the
/// kernel's name (`uname`) when it sizes its thread pool.
pub(super) const VISION: &[Sys] = sys![SYS_getdents64, SYS_uname];

/// LITE (LiteRT loaded at run time, XNNPACK): worker-lite points stderr at
/// a memfd around LiteRT's calls to keep its log (`memfd_create`, `dup`;
/// `dup2`/`dup3` are in the base).
pub(super) const LITE: &[Sys] = sys![SYS_memfd_create, SYS_dup];
