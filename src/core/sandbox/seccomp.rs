//! The seccomp filter: a denylist of the system calls a tool has no business
//! making, and of the sockets its network setting does not allow.
//!
//! A denylist rather than an allowlist because tools are arbitrary programs
//! (shells, interpreters, compilers): an allowlist would break them in ways
//! no test here would see, while the calls below are the kernel's known
//! escape and attack surface (debugging other processes, loading code into
//! the kernel, mounting, new namespaces, keyrings, io_uring, which bypasses
//! seccomp for the socket calls it can make). Denied calls fail with `EPERM`,
//! so programs see an ordinary "not permitted" and can fall back; the
//! process is killed only for a foreign architecture or ABI, where system
//! call numbers would mean something else.
//!
//! Built with `seccompiler` in the parent, once per process and setting;
//! the child only installs the prepared program (one system call, no
//! allocation).

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

use super::{Network, SeccompReport};

/// The architecture the filter is compiled for, when it is one seccompiler
/// (and this list of system calls) knows.
fn arch() -> Option<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).ok()
}

/// Whether seccomp filters can be installed here.
pub fn available() -> bool {
    // SAFETY: PR_GET_SECCOMP has no arguments and no side effects.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    mode >= 0 && arch().is_some()
}

/// The prepared program, installed by the child.
#[derive(Clone)]
pub struct Filter {
    /// The denylist (EPERM), with `clone3` answered ENOSYS: its flags are
    /// behind a pointer, out of a filter's reach, and libc falls back to
    /// `clone`, whose flags the filter sees.
    pub program: BpfProgram,
    /// What the filter does, for `protections.seccomp`.
    pub report: SeccompReport,
}

/// System calls denied whatever their arguments.
const DENIED: &[(&str, libc::c_long)] = &[
    // Reading or writing other processes.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    // Code and data into the kernel.
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    // Kernel keyrings (shared by every process of a uid).
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    // The kernel log.
    ("syslog", libc::SYS_syslog),
    // Mounts and namespaces: a tool stays in the ones it was given.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    // File handles open any inode by number, past every path rule.
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    // The machine itself.
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("vhangup", libc::SYS_vhangup),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
];

/// The `clone` flags that make new namespaces.
const CLONE_NAMESPACES: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The x32 ABI's system call numbers carry this bit; they share x86_64's
/// audit architecture, so without a check they would bypass every rule.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn cond(arg: u8, op: Op, value: u64) -> Result<Cond, String> {
    Cond::new(arg, Len::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conditions: Vec<Cond>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

/// Rules on `socket(domain, type, protocol)` matching what is denied.
fn socket_rules(network: &Network, unix: bool) -> Result<(Vec<SeccompRule>, Vec<String>), String> {
    const TYPE_MASK: u64 = 0xf; // SOCK_NONBLOCK and SOCK_CLOEXEC sit above
    let inet = [libc::AF_INET as u64, libc::AF_INET6 as u64];
    let mut allowed_families = vec![
        libc::AF_INET as u64,
        libc::AF_INET6 as u64,
        libc::AF_NETLINK as u64,
    ];
    if unix {
        allowed_families.push(libc::AF_UNIX as u64);
    }
    let mut rules = vec![
        // Any family not listed: packet, vsock, bluetooth, alg, xdp, key, ...
        rule(
            allowed_families
                .iter()
                .map(|f| cond(0, Op::Ne, *f))
                .collect::<Result<_, _>>()?,
        )?,
        // Netlink only to the routing tables (what libc's interface queries
        // use); not the audit, uevent or user-to-user protocols.
        rule(vec![
            cond(0, Op::Eq, libc::AF_NETLINK as u64)?,
            cond(2, Op::Ne, libc::NETLINK_ROUTE as u64)?,
        ])?,
    ];
    // Raw and packet sockets in every mode: they forge and sniff traffic.
    // Socket types from <linux/net.h>, not all of which libc names.
    const SOCK_DGRAM: u64 = 2;
    const SOCK_RAW: u64 = 3;
    const SOCK_RDM: u64 = 4;
    const SOCK_SEQPACKET: u64 = 5;
    const SOCK_DCCP: u64 = 6;
    const SOCK_PACKET: u64 = 10;
    let mut denied_types = vec![SOCK_RAW, SOCK_PACKET];
    let ports = matches!(network, Network::Ports(_));
    if ports {
        // Landlock's port rules cover TCP only: in port-list mode every
        // other internet socket (UDP, SCTP, DCCP, ...) is denied.
        denied_types.extend([SOCK_DGRAM, SOCK_RDM, SOCK_SEQPACKET, SOCK_DCCP]);
    }
    for family in inet {
        for t in &denied_types {
            rules.push(rule(vec![
                cond(0, Op::Eq, family)?,
                cond(1, Op::MaskedEq(TYPE_MASK), *t)?,
            ])?);
        }
        if ports {
            // A stream socket of another protocol (SCTP, MPTCP) is not TCP.
            rules.push(rule(vec![
                cond(0, Op::Eq, family)?,
                cond(2, Op::Ne, 0)?,
                cond(2, Op::Ne, libc::IPPROTO_TCP as u64)?,
            ])?);
        }
    }
    let mut sockets = if ports {
        vec!["inet:tcp".to_string(), "inet6:tcp".to_string()]
    } else {
        vec![
            "inet:stream,dgram".to_string(),
            "inet6:stream,dgram".to_string(),
        ]
    };
    sockets.push("netlink:route".into());
    sockets.push(if unix { "unix" } else { "unix:socketpair" }.into());
    Ok((rules, sockets))
}

/// The filter for a network setting and Unix-socket grant, compiled once per
/// process for each of the six combinations (a port list's ports are
/// Landlock's business; the filter only knows it is a port list).
pub fn filter(network: &Network, unix: bool) -> Result<Filter, String> {
    type Cache = [std::sync::OnceLock<Result<Filter, String>>; 6];
    static CACHE: Cache = [const { std::sync::OnceLock::new() }; 6];
    let mode = match network {
        // The proxy's namespace is a private one like none's: same filter.
        Network::None | Network::Proxy => 0,
        Network::Host => 1,
        Network::Ports(_) => 2,
    };
    CACHE[mode * 2 + usize::from(unix)]
        .get_or_init(|| build(network, unix))
        .clone()
}

/// Builds the filter for a network setting and Unix-socket grant.
pub fn build(network: &Network, unix: bool) -> Result<Filter, String> {
    let arch = arch().ok_or_else(|| "seccomp: unsupported architecture".to_string())?;
    let err = |e: seccompiler::BackendError| format!("seccomp: {e}");
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut denied: Vec<String> = Vec::new();
    for (name, nr) in DENIED {
        rules.insert(*nr, Vec::new());
        denied.push((*name).to_string());
    }
    // New namespaces through clone's flags.
    rules.insert(
        libc::SYS_clone,
        CLONE_NAMESPACES
            .iter()
            .map(|f| rule(vec![cond(0, Op::MaskedEq(*f), *f)?]))
            .collect::<Result<_, _>>()?,
    );
    denied.push("clone(CLONE_NEW*)".into());
    // Device nodes (regular files and FIFOs stay possible).
    const S_IFMT: u64 = libc::S_IFMT as u64;
    let devices = |arg: u8| -> Result<Vec<SeccompRule>, String> {
        Ok(vec![
            rule(vec![cond(arg, Op::MaskedEq(S_IFMT), libc::S_IFCHR as u64)?])?,
            rule(vec![cond(arg, Op::MaskedEq(S_IFMT), libc::S_IFBLK as u64)?])?,
        ])
    };
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_mknod, devices(1)?);
    rules.insert(libc::SYS_mknodat, devices(2)?);
    denied.push("mknod(device)".into());
    // Faking terminal input to whoever shares the terminal (request numbers
    // of the generic ioctl table, as x86_64 and aarch64 use).
    const TIOCSTI: u64 = 0x5412;
    const TIOCLINUX: u64 = 0x541C;
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Op::Eq, TIOCSTI)?])?,
            rule(vec![cond(1, Op::Eq, TIOCLINUX)?])?,
        ],
    );
    denied.push("ioctl(TIOCSTI, TIOCLINUX)".into());
    let (socket, sockets) = socket_rules(network, unix)?;
    rules.insert(libc::SYS_socket, socket);
    denied.push("socket(other families, raw, packet)".into());

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    let mut program: BpfProgram = filter.try_into().map_err(err)?;
    // After seccompiler's 3-instruction architecture check, two rules its
    // one-action-per-filter form cannot express (one filter, not two, keeps
    // the install to one system call): x32 call numbers (x86_64 only) are
    // killed like a foreign architecture, and `clone3` returns ENOSYS.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let mut guard = vec![op(BPF_LD_W_ABS, 0, 0, 0)]; // seccomp_data.nr
    if std::env::consts::ARCH == "x86_64" {
        guard.push(op(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT));
        guard.push(op(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS));
    }
    let clone3 = u32::try_from(libc::SYS_clone3).map_err(|e| e.to_string())?;
    guard.push(op(BPF_JMP_JEQ_K, 0, 1, clone3));
    guard.push(op(
        BPF_RET_K,
        0,
        0,
        libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    ));
    if program.len() < 3 || program[0].k != 4 {
        return Err("seccomp: unexpected program layout".into());
    }
    program.splice(3..3, guard);
    denied.push("clone3 (ENOSYS)".into());
    Ok(Filter {
        program,
        report: SeccompReport {
            action: "EPERM".into(),
            denied,
            sockets,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_for_every_network_setting() {
        for network in [Network::None, Network::Host, Network::Ports(vec![443])] {
            for unix in [false, true] {
                let f = build(&network, unix).unwrap();
                assert!(f.program.len() > 50 && f.program.len() < 4096);
                assert!(f.report.denied.iter().any(|d| d == "ptrace"));
                assert_eq!(f.report.sockets.iter().any(|s| s == "unix"), unix);
            }
        }
    }
}
