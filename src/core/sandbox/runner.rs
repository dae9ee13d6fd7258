//! Spawning, limiting, watching and reaping the sandboxed child.
//!
//! The process `Command` starts joins the cgroups, sets the rlimits and
//! then clones the tool into a new user and PID namespace as a child of the
//! gate (CLONE_PARENT), and exits. The tool is PID 1 there: it cannot see or
//! signal the gate or anything else outside, and when it exits the kernel
//! kills everything it started. The gate's waiting thread is its
//! supervisor; the tool's parent-death signal (which the kernel delivers to
//! a namespace's PID 1 from outside) kills it, and so the whole namespace,
//! if the gate dies. So neither the wall limit nor the tree kill depend on
//! the gate staying alive: if it dies, the box dies with it.
//!
//! In the tool, before exec: its uid becomes 65534 of its own user namespace
//! (the gate's uid outside, so granted paths stay writable by their owner
//! bits), a private network namespace where asked, every capability dropped
//! from every set with the securebits locked, no_new_privs, Landlock (paths,
//! ports, IPC scopes), and last the seccomp filter.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use seccompiler::BpfProgram;

use super::cgroup::Cgroups;
use super::{landlock, seccomp};
use super::{Capabilities, Completed, Network, Protections, Sandbox, Usage};
use crate::core::error::{CoreError, Result};

/// The uid and gid the tool has in its own user namespace ("nobody"): not
/// root, so programs behave as unprivileged, and mapped to the gate's own
/// uid/gid outside.
pub const TOOL_ID: u32 = 65534;

/// Slack above the cgroup memory limit for RLIMIT_AS. Address space is not
/// memory: allocators reserve large regions up front (mimalloc, used by this
/// extension, reserves 1 GiB arenas; Go and Java reserve more), so a tight
/// RLIMIT_AS fails allocations long before memory is used. Where the cgroup
/// binds, RLIMIT_AS is only a backstop against runaway mappings.
const AS_SLACK: u64 = 8 << 30;

/// What the child applies between fork and exec: plain values only, so the
/// pre-exec code needs no allocation.
struct ChildPlan {
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)>,
    cgroup_procs: Vec<RawFd>,
    netns: bool,
    /// A network namespace to join (network = proxy) instead of a fresh one.
    join_netns: Option<RawFd>,
    landlock_fd: Option<RawFd>,
    /// Whether the gate runs as root (it can clear supplementary groups).
    root: bool,
    /// `/proc/self/{uid,gid}_map` contents, when the tool gets a user namespace.
    id_maps: Option<(Vec<u8>, Vec<u8>)>,
    /// When the tool is PID 1 of a new PID namespace under a supervisor:
    /// what it execs.
    pidns: Option<ToolExec>,
    /// Seccomp programs, installed in order just before exec.
    seccomp: Vec<BpfProgram>,
}

/// Whether this process can create a user namespace: probed once, by a
/// child that does nothing else.
pub fn userns_available() -> bool {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| {
        // SAFETY: a raw clone (no atfork handlers, no locks taken); the
        // child only exits, the parent reaps exactly that child.
        unsafe {
            let pid = libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            );
            if pid == 0 {
                libc::_exit(0);
            }
            if pid < 0 {
                return false;
            }
            let mut status = 0;
            libc::waitpid(pid as libc::pid_t, &mut status, 0) == pid as libc::pid_t
                && libc::WIFEXITED(status)
                && libc::WEXITSTATUS(status) == 0
        }
    })
}

fn sandbox_error(message: impl Into<String>) -> CoreError {
    CoreError::Sandbox(message.into())
}

/// Runs `argv` under `sandbox`; returns when the child and everything it
/// started are gone.
pub fn run(argv: &[String], sandbox: &Sandbox) -> Result<Completed> {
    let program = argv.first().ok_or_else(|| sandbox_error("argv is empty"))?;
    let caps = Capabilities::probe();
    let limits = &sandbox.limits;
    let mut missing = Vec::new();
    if caps.landlock_abi == 0 {
        missing.push("landlock".to_string());
    }
    if sandbox.network == Network::None && !caps.netns {
        missing.push("netns".to_string());
    }
    // The proxy's namespace is the only way out; without it there is no run.
    let join_netns = match (&sandbox.network, sandbox.join_network) {
        (Network::Proxy, Some(fd)) => Some(fd),
        (Network::Proxy, None) => {
            return Err(sandbox_error(
                "network=\"proxy\" needs the gate's egress proxy and its network namespace \
                 (run the tool through gate.run)",
            ))
        }
        _ => None,
    };
    if matches!(sandbox.network, Network::Ports(_)) && caps.landlock_abi < 4 {
        missing.push("landlock-tcp".to_string());
    }
    if limits.memory_bytes.is_some() && !caps.cgroup {
        missing.push("cgroup-memory".to_string());
    }
    if limits.processes.is_some() && caps.root && !caps.cgroup {
        missing.push("process-limit".to_string());
    }
    if !caps.userns {
        missing.push("userns".to_string());
    }
    if !caps.pidns {
        missing.push("pidns".to_string());
    }
    if !caps.seccomp {
        missing.push("seccomp".to_string());
    }
    if (1..6).contains(&caps.landlock_abi) {
        missing.push("landlock-scope".to_string());
    }
    if sandbox.strict && !missing.is_empty() {
        return Err(sandbox_error(format!(
            "strict sandbox: unavailable on this system: {}",
            missing.join(", ")
        )));
    }

    // What is granted is what the paths resolve to now; one that does not
    // resolve is refused.
    let mut resolved = sandbox.clone();
    resolved.read = super::resolve_all(&sandbox.read)?;
    resolved.write = super::resolve_all(&sandbox.write)?;
    let sandbox = &resolved;
    let ruleset = if caps.landlock_abi > 0 {
        Some(landlock::prepare(sandbox, caps.landlock_abi).map_err(sandbox_error)?)
    } else {
        None
    };
    let filter = if caps.seccomp {
        Some(seccomp::filter(&sandbox.network, sandbox.unix_sockets).map_err(sandbox_error)?)
    } else {
        None
    };
    let cgroups = if caps.cgroup {
        let id = crate::core::receipt::new_id();
        // The process that clones the tool counts until the tool has started
        // (then it lowers the limit back; see `ToolExec::pids_max`).
        let processes = limits.processes.map(|n| n + u64::from(caps.pidns));
        Some(
            Cgroups::create(&id, limits.memory_bytes, processes)
                .map_err(|e| sandbox_error(format!("cannot create cgroups: {e}")))?,
        )
    } else {
        None
    };
    // SAFETY: geteuid/getegid have no preconditions.
    let (host_uid, host_gid) = unsafe { (libc::geteuid(), libc::getegid()) };

    let mut protections = Protections {
        landlock_abi: ruleset.as_ref().map_or(0, |r| r.abi),
        landlock_read: ruleset.as_ref().map(|r| r.read.clone()).unwrap_or_default(),
        landlock_write: ruleset
            .as_ref()
            .map(|r| r.write.clone())
            .unwrap_or_default(),
        landlock_tcp_ports: ruleset
            .as_ref()
            .map(|r| r.ports.clone())
            .unwrap_or_default(),
        netns: (sandbox.network == Network::None && caps.netns) || join_netns.is_some(),
        cgroups: if cgroups.is_some() {
            vec!["memory".into(), "pids".into()]
        } else {
            Vec::new()
        },
        uid: if caps.userns { TOOL_ID } else { host_uid },
        host_uid,
        userns: caps.userns,
        pidns: caps.pidns,
        // The child does not start unless every set was emptied.
        capabilities: Vec::new(),
        no_new_privs: true,
        seccomp: filter.as_ref().map(|f| f.report.clone()),
        landlock_scopes: ruleset
            .as_ref()
            .map(|r| r.scopes.clone())
            .unwrap_or_default(),
        missing,
        ..Protections::default()
    };
    let mut rlimits = vec![(libc::RLIMIT_CORE, 0, 0)];
    protections.rlimits.insert("core".into(), 0);
    if let Some(cpu) = limits.cpu_seconds {
        // SIGXCPU at the soft limit, SIGKILL a second later.
        rlimits.push((libc::RLIMIT_CPU, cpu, cpu + 1));
        protections.rlimits.insert("cpu".into(), cpu);
    }
    if let Some(mem) = limits.memory_bytes {
        let space = if cgroups.is_some() {
            mem.saturating_mul(2).max(mem + AS_SLACK)
        } else {
            mem
        };
        rlimits.push((libc::RLIMIT_AS, space, space));
        protections.rlimits.insert("as".into(), space);
    }
    if let Some(size) = limits.file_size_bytes {
        rlimits.push((libc::RLIMIT_FSIZE, size, size));
        protections.rlimits.insert("fsize".into(), size);
    }
    if let Some(n) = limits.open_files {
        rlimits.push((libc::RLIMIT_NOFILE, n, n));
        protections.rlimits.insert("nofile".into(), n);
    }
    protections.process_limit = match limits.processes {
        None => "none".into(),
        Some(_) if cgroups.is_some() => "cgroup-pids".into(),
        Some(n) if !caps.root => {
            rlimits.push((libc::RLIMIT_NPROC, n, n));
            protections.rlimits.insert("nproc".into(), n);
            "rlimit-nproc".into()
        }
        Some(_) => "none".into(),
    };

    // The PID-namespace start's two pipes: the tool's pid back to the gate,
    // and the gate's liveness to the tool.
    let handoff = if caps.pidns {
        Some((pipe()?, pipe()?))
    } else {
        None
    };
    let plan = ChildPlan {
        rlimits,
        cgroup_procs: cgroups.as_ref().map(Cgroups::procs_fds).unwrap_or_default(),
        netns: protections.netns && join_netns.is_none(),
        join_netns,
        landlock_fd: ruleset
            .as_ref()
            .and_then(|r| r.fd.as_ref().map(AsRawFd::as_raw_fd)),
        root: caps.root,
        id_maps: caps.userns.then(|| {
            (
                format!("{TOOL_ID} {host_uid} 1\n").into_bytes(),
                format!("{TOOL_ID} {host_gid} 1\n").into_bytes(),
            )
        }),
        pidns: match &handoff {
            Some(((_, pid_w), (alive_r, alive_w))) => Some(ToolExec {
                pid_w: pid_w.as_raw_fd(),
                alive_r: alive_r.as_raw_fd(),
                alive_w: alive_w.as_raw_fd(),
                pids_max: cgroups
                    .as_ref()
                    .and_then(Cgroups::pids_max_fd)
                    .zip(limits.processes)
                    .map(|(fd, n)| (fd, n.to_string().into_bytes())),
                ..ToolExec::new(program, argv, &sandbox.env)?
            }),
            None => None,
        },
        seccomp: filter.map(|f| vec![f.program]).unwrap_or_default(),
    };

    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(&sandbox.env)
        .stdin(if sandbox.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &sandbox.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: the closure only makes async-signal-safe system calls on plain
    // values prepared above; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || child_setup(&plan));
    }
    let start = Instant::now();
    let spawned = cmd.spawn();
    // With a PID namespace the process `Command` started has exited by now
    // (or failed): the tool is our child, and its pid is in the pipe.
    let mut group = 0;
    let tool = match handoff {
        Some(((pid_r, pid_w), (_alive_r, alive_w))) => {
            drop((pid_w, alive_w));
            let tool = read_pid(pid_r);
            if let Ok(c) = &spawned {
                // Reaped by the waiting thread, off the start-up path.
                group = c.id() as libc::pid_t;
            }
            tool
        }
        None => None,
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(pid) = tool {
                let mut status = 0;
                // SAFETY: reaping the tool that failed to exec.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
            return Err(sandbox_error(format!("cannot start {program}: {e}")));
        }
    };
    let pid = match (tool, group) {
        (Some(pid), _) => pid,
        (None, 0) => child.id() as libc::pid_t,
        (None, cloner) => {
            let mut status = 0;
            // SAFETY: reaping the child `Command` started, which sent no pid.
            unsafe { libc::waitpid(cloner, &mut status, 0) };
            return Err(sandbox_error(format!(
                "cannot start {program}: the tool was not cloned"
            )));
        }
    };
    if group == 0 {
        group = pid;
    }

    let cap = limits.output_bytes;
    let stream = sandbox.stream;
    let stdout = child.stdout.take().map(|s| {
        capture(
            s,
            cap,
            stream.then(|| Box::new(std::io::stdout()) as Box<dyn Write + Send>),
        )
    });
    let stderr = child.stderr.take().map(|s| {
        capture(
            s,
            cap,
            stream.then(|| Box::new(std::io::stderr()) as Box<dyn Write + Send>),
        )
    });
    if let Some(mut input) = child.stdin.take() {
        let data = sandbox.stdin.clone();
        // A child that exits without reading gives EPIPE; that is its business.
        std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
    }
    let (tx, rx) = mpsc::channel();
    // The process `Command` started, when it only cloned the tool.
    let cloner = (group != pid).then_some(group);
    std::thread::spawn(move || {
        let mut status: libc::c_int = 0;
        if let Some(cloner) = cloner {
            // SAFETY: reaping the child `Command` started (it has exited).
            unsafe { libc::waitpid(cloner, &mut status, 0) };
        }
        // SAFETY: rusage is plain data, zero is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting on our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let _ = tx.send((r, status, usage));
    });
    let mut wall_hit = false;
    let waited = match limits.wall {
        Some(wall) => match rx.recv_timeout(wall) {
            Ok(w) => Ok(w),
            Err(_) => {
                wall_hit = true;
                kill_tree(Some(pid), Some(group), cgroups.as_ref());
                rx.recv()
            }
        },
        None => rx.recv(),
    };
    let duration = start.elapsed().as_secs_f64();
    // Whatever the child left running (background grandchildren) goes too.
    // The tool is reaped: its pid (and, with a PID namespace, everything
    // else) is gone, and a signal by number could reach a process that
    // reused it. Without a PID namespace, its process group may live on.
    let leftover_group = (!protections.pidns).then_some(group);
    kill_tree(None, leftover_group, cgroups.as_ref());
    let (r, status, usage) = waited.map_err(|_| sandbox_error("lost track of the child"))?;
    if r < 0 {
        return Err(sandbox_error(format!(
            "wait failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    let (out, out_cut) = stdout
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    let (err, err_cut) = stderr
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();

    let exit_code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let usage = Usage {
        user_cpu: seconds(usage.ru_utime),
        system_cpu: seconds(usage.ru_stime),
        max_rss: cgroups.as_ref().and_then(Cgroups::peak_memory).unwrap_or(
            u64::try_from(usage.ru_maxrss)
                .unwrap_or(0)
                .saturating_mul(1024),
        ),
    };
    let cpu_used = usage.user_cpu + usage.system_cpu;
    // A shell reports a child's fatal signal as exit status 128 + signal.
    let died_of = |sig: libc::c_int| signal == Some(sig) || exit_code == Some(128 + sig);
    let truncated = out_cut || err_cut;
    let limit_hit = if wall_hit {
        Some("wall")
    } else if cgroups.as_ref().is_some_and(Cgroups::memory_hit) {
        Some("memory")
    } else if died_of(libc::SIGXCPU)
        || (died_of(libc::SIGKILL)
            && limits
                .cpu_seconds
                .is_some_and(|c| cpu_used + 0.05 >= c as f64))
    {
        Some("cpu")
    } else if died_of(libc::SIGXFSZ) {
        Some("file_size")
    } else if cgroups.as_ref().is_some_and(Cgroups::pids_hit) {
        Some("processes")
    } else if truncated {
        Some("output")
    } else {
        None
    };
    drop(cgroups);
    drop(ruleset);
    Ok(Completed {
        exit_code,
        signal,
        stdout: out,
        stderr: err,
        truncated,
        duration,
        usage,
        limit_hit: limit_hit.map(str::to_string),
        protections,
    })
}

/// SIGKILLs the tool (while it is not yet reaped), its process group and
/// everything in its cgroups. With a PID namespace the tool is its PID 1, so
/// killing it kills every process inside.
fn kill_tree(pid: Option<libc::pid_t>, group: Option<libc::pid_t>, cgroups: Option<&Cgroups>) {
    // SAFETY: signalling our unreaped child and the process group we created
    // (the child called setsid), which lives while any member does.
    unsafe {
        if let Some(pid) = pid {
            libc::kill(pid, libc::SIGKILL);
        }
        if let Some(group) = group {
            libc::kill(-group, libc::SIGKILL);
        }
    }
    if let Some(c) = cgroups {
        c.kill_all();
    }
}

/// Reads a pipe to the end, keeping at most `cap` bytes (memory stays bounded
/// whatever the child prints), and copying everything to `tee` if given.
fn capture(
    mut pipe: impl Read + Send + 'static,
    cap: usize,
    mut tee: Option<Box<dyn Write + Send>>,
) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut cut = false;
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(out) = tee.as_mut() {
                        // A closed terminal must not stop the capture.
                        let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
                    }
                    let room = cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                    cut |= n > room;
                }
            }
        }
        (kept, cut)
    })
}

/// Signals whose disposition the child gets back to the default.
const RESET_SIGNALS: [libc::c_int; 10] = [
    libc::SIGPIPE,
    libc::SIGXFSZ,
    libc::SIGXCPU,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
];

fn check(r: libc::c_long) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs in the child between fork and exec. Only async-signal-safe calls:
/// plain system calls on values prepared by the parent, no allocation.
fn child_setup(plan: &ChildPlan) -> std::io::Result<()> {
    // SAFETY (whole block): raw system calls with valid arguments in the
    // single-threaded child.
    unsafe {
        check(libc::setsid() as libc::c_long)?;
        // Dispositions set to "ignore" survive exec; Python ignores SIGXFSZ and
        // SIGPIPE, which would turn limit kills into silent errors.
        for sig in RESET_SIGNALS {
            libc::signal(sig, libc::SIG_DFL);
        }
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as libc::c_long)?;
        for &fd in &plan.cgroup_procs {
            check(libc::write(fd, b"0".as_ptr().cast(), 1) as libc::c_long)?;
        }
        for &(resource, soft, hard) in &plan.rlimits {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            check(libc::setrlimit(resource, &lim) as libc::c_long)?;
        }
        if let Some(fd) = plan.join_netns {
            // Before any new user namespace: the proxy's namespace belongs to
            // the gate's, so the tool holds no capability over it.
            check(libc::setns(fd, libc::CLONE_NEWNET) as libc::c_long)?;
        }
        if plan.root {
            // Root's supplementary groups would still open group-owned files
            // outside; a user namespace cannot drop them later.
            check(libc::syscall(
                libc::SYS_setgroups,
                0usize,
                std::ptr::null::<libc::gid_t>(),
            ))?;
        }
        if let Some(exec) = &plan.pidns {
            // Only the gate holds the liveness pipe's write end.
            libc::close(exec.alive_w);
            // Never returns unless the tool could not be started.
            return Err(spawn_pid1(plan, exec));
        }
        if plan.id_maps.is_some() {
            check(libc::unshare(libc::CLONE_NEWUSER) as libc::c_long)?;
        }
        tool_setup(plan)
    }
}

/// The tool's own confinement, in the process that will exec it: ids in
/// its user namespace, network namespace, capabilities, descriptors,
/// no_new_privs, Landlock, and last seccomp.
///
/// # Safety
/// Only between fork (or clone) and exec; async-signal-safe calls only.
unsafe fn tool_setup(plan: &ChildPlan) -> std::io::Result<()> {
    if let Some((uid_map, gid_map)) = &plan.id_maps {
        // A single line mapping our own ids needs no privilege outside;
        // gid_map needs setgroups denied first.
        write_file(c"/proc/self/setgroups", b"deny")?;
        write_file(c"/proc/self/uid_map", uid_map)?;
        write_file(c"/proc/self/gid_map", gid_map)?;
    }
    if plan.netns {
        check(libc::unshare(libc::CLONE_NEWNET) as libc::c_long)?;
        loopback_up()?;
    }
    drop_capabilities(plan.root || plan.id_maps.is_some())?;
    // Inherited descriptors (anything but stdio) close at exec.
    check(libc::syscall(
        libc::SYS_close_range,
        3u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC,
    ))?;
    check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
    if let Some(fd) = plan.landlock_fd {
        check(libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32))?;
    }
    // Last: from here on the denied calls fail, and exec is all that is left.
    for program in &plan.seccomp {
        seccompiler::apply_filter(program).map_err(|e| match e {
            seccompiler::Error::Seccomp(e) | seccompiler::Error::Prctl(e) => e,
            _ => std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    }
    Ok(())
}

/// What the tool process needs to exec by itself (it does not return to
/// `Command`): prepared by the parent, read-only in the children.
struct ToolExec {
    path: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// The tool's stack until exec (it shares the supervisor's memory).
    stack: Vec<u8>,
    /// The errno of a failed start, written by the tool, read by the process
    /// that cloned it (they share memory until the tool execs).
    failed: AtomicI32,
    /// Where the tool's pid goes to the gate.
    pid_w: RawFd,
    /// `pids.max` and the tool's own limit, written once the tool has
    /// started: the process that cloned it counted against the limit until
    /// then (the gate set it one higher).
    pids_max: Option<(RawFd, Vec<u8>)>,
    /// The read end of a pipe only the gate writes to: it hangs up when the
    /// gate has died.
    alive_r: RawFd,
    /// The gate's end, closed in the children.
    alive_w: RawFd,
}

// SAFETY: the raw pointers point into `_argv`/`_envp`, owned by the same
// value and never mutated after construction.
unsafe impl Send for ToolExec {}
// SAFETY: as above; the only mutable fields are atomics.
unsafe impl Sync for ToolExec {}

/// The tool's stack size until exec (debug builds use more than release).
const TOOL_STACK: usize = 256 << 10;

impl ToolExec {
    fn new(program: &str, argv: &[String], env: &BTreeMap<String, String>) -> Result<Self> {
        let cstring =
            |s: &str| CString::new(s).map_err(|_| sandbox_error(format!("NUL byte in {s:?}")));
        let path = resolve_program(program, env.get("PATH").map(String::as_str))?;
        let argv_c: Vec<CString> = argv.iter().map(|a| cstring(a)).collect::<Result<_>>()?;
        let envp_c: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}")))
            .collect::<Result<_>>()?;
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Self {
            path: cstring(&path.to_string_lossy())?,
            argv: ptrs(&argv_c),
            envp: ptrs(&envp_c),
            _argv: argv_c,
            _envp: envp_c,
            stack: vec![0u8; TOOL_STACK],
            failed: AtomicI32::new(0),
            pid_w: -1,
            pids_max: None,
            alive_r: -1,
            alive_w: -1,
        })
    }
}

/// The program as the tool's `execve` needs it: a path with a slash is used
/// as is; a bare name is looked up in the tool's `PATH` (as `execvp` would).
fn resolve_program(program: &str, path: Option<&str>) -> Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let search = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    search
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| sandbox_error(format!("cannot start {program}: not found in PATH")))
}

/// Starts the tool as PID 1 of a new PID namespace (and user namespace, when
/// asked), as a child of the gate, sends the gate its pid and exits; returns
/// only the error of a tool that could not be started.
///
/// The clone shares this process's memory and suspends it until the tool
/// execs (CLONE_VM | CLONE_VFORK, as posix_spawn does): no second copy of
/// the gate's page tables. The tool runs on its own prepared stack,
/// allocates nothing, and reports a failed start through `exec.failed`.
///
/// # Safety
/// Only in the single-threaded child between fork and exec.
unsafe fn spawn_pid1(plan: &ChildPlan, exec: &ToolExec) -> std::io::Error {
    let mut flags = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::CLONE_PARENT
        | libc::CLONE_NEWPID
        | libc::SIGCHLD;
    if plan.id_maps.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    // The stack grows down from its 16-byte aligned end.
    let top = exec.stack.as_ptr().add(exec.stack.len()) as usize & !15;
    let pid = libc::clone(
        tool_main,
        top as *mut libc::c_void,
        flags,
        plan as *const ChildPlan as *mut libc::c_void,
    );
    if pid < 0 {
        return std::io::Error::last_os_error();
    }
    // Here the tool has exec'd or exited.
    if let Some((fd, limit)) = &exec.pids_max {
        libc::write(*fd, limit.as_ptr().cast(), limit.len());
    }
    let bytes = pid.to_ne_bytes();
    libc::write(exec.pid_w, bytes.as_ptr().cast(), bytes.len());
    let failed = exec.failed.load(Ordering::SeqCst);
    if failed != 0 {
        return std::io::Error::from_raw_os_error(failed);
    }
    libc::_exit(0)
}

/// The tool process's entry point (on its own stack, in the new namespaces):
/// confines itself and execs the tool; on failure records errno and exits.
extern "C" fn tool_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the plan `spawn_supervised` passed, alive (and not
    // mutated) while the supervisor waits for this process to exec or exit.
    let plan = unsafe { &*(arg as *const ChildPlan) };
    let Some(exec) = &plan.pidns else {
        return 127;
    };
    // SAFETY: async-signal-safe system calls on prepared values.
    let result = unsafe {
        (|| -> std::io::Result<()> {
            // The gate's thread is the parent (CLONE_PARENT).
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as libc::c_long)?;
            let mut poll = libc::pollfd {
                fd: exec.alive_r,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut poll, 1, 0) > 0 && poll.revents & libc::POLLHUP != 0 {
                libc::_exit(137); // the gate died before the signal was armed
            }
            libc::close(exec.alive_r);
            tool_setup(plan)?;
            // `Command` would reset the mask after pre_exec; this process
            // execs before that point.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execve(exec.path.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr());
            Err(std::io::Error::last_os_error())
        })()
    };
    let errno = result
        .err()
        .and_then(|e| e.raw_os_error())
        .unwrap_or(libc::EINVAL);
    exec.failed.store(errno.max(1), Ordering::SeqCst);
    // SAFETY: exiting the tool process without running anything else.
    unsafe { libc::_exit(127) }
}

/// Empties every capability set: bounding (so nothing comes back at exec),
/// ambient, inheritable, permitted, effective; with the securebits locked
/// so that uid 0, where the tool still has it, confers nothing at exec
/// either. `privileged`: whether this process has CAP_SETPCAP to do the
/// first two (an unprivileged gate has nothing to drop there).
///
/// # Safety
/// Only in the single-threaded child between fork and exec.
unsafe fn drop_capabilities(privileged: bool) -> std::io::Result<()> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    if privileged {
        check(libc::prctl(
            libc::PR_SET_SECUREBITS,
            SECBIT_NOROOT
                | SECBIT_NOROOT_LOCKED
                | SECBIT_NO_SETUID_FIXUP
                | SECBIT_NO_SETUID_FIXUP_LOCKED
                | SECBIT_KEEP_CAPS_LOCKED
                | SECBIT_NO_CAP_AMBIENT_RAISE
                | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
            0,
            0,
            0,
        ) as libc::c_long)?;
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                // EINVAL: past the last capability this kernel has.
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    check(libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL,
        0,
        0,
        0,
    ) as libc::c_long)?;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()))
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors, which we then own.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(sandbox_error(format!(
                "pipe: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// The tool's pid, as the process that cloned it wrote it (None: it never did).
fn read_pid(from: OwnedFd) -> Option<libc::pid_t> {
    let mut file = std::fs::File::from(from);
    let mut bytes = [0u8; 4];
    file.read_exact(&mut bytes).ok()?;
    Some(libc::pid_t::from_ne_bytes(bytes)).filter(|p| *p > 0)
}

/// Writes `data` to `path` with open/write/close (async-signal-safe).
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated path and a valid buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// Brings up `lo` in a fresh network namespace (it starts down).
pub(super) fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a socket and two ioctls on a zeroed, correctly sized ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut r = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(sock);
        if r < 0 {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Completed {
        let argv = ["/bin/sh", "-c", script].map(String::from);
        run(&argv, &Sandbox::default()).unwrap()
    }

    #[test]
    fn the_tool_is_pid_1_without_capabilities_as_an_unprivileged_uid() {
        let caps = Capabilities::probe();
        let done = sh("echo $$; id -u; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status");
        assert_eq!(
            done.exit_code,
            Some(0),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        let out = String::from_utf8_lossy(&done.stdout).to_string();
        let mut lines = out.lines();
        if caps.pidns {
            assert_eq!(lines.next(), Some("1"));
        } else {
            lines.next();
        }
        if caps.userns {
            assert_eq!(lines.next(), Some("65534"));
        } else {
            lines.next();
        }
        let sets: Vec<&str> = lines.collect();
        assert_eq!(sets.len(), 5, "{out}");
        for set in sets {
            assert!(set.ends_with("0000000000000000"), "{set}");
        }
        assert!(done.protections.capabilities.is_empty());
        assert_eq!(done.protections.pidns, caps.pidns);
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error() {
        for program in ["/nonexistent/tool", "no-such-tool-anywhere"] {
            let err = run(&[program.to_string()], &Sandbox::default()).unwrap_err();
            assert!(err.to_string().contains("cannot start"), "{err}");
        }
    }

    #[test]
    fn bare_names_are_found_in_the_tools_path() {
        let env: BTreeMap<String, String> = [("PATH".into(), "/nonexistent:/bin".into())].into();
        assert_eq!(
            resolve_program("sh", env.get("PATH").map(String::as_str)).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(resolve_program("no-such-tool", Some("/bin")).is_err());
        assert_eq!(resolve_program("./x", None).unwrap(), PathBuf::from("./x"));
    }
}
