//! Spawning, limiting, watching and reaping the sandboxed child.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use super::cgroup::Cgroups;
use super::landlock;
use super::{Capabilities, Completed, Network, Protections, Sandbox, Usage};
use crate::core::error::{CoreError, Result};

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
    landlock_fd: Option<RawFd>,
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
    if matches!(sandbox.network, Network::Ports(_)) && caps.landlock_abi < 4 {
        missing.push("landlock-tcp".to_string());
    }
    if limits.memory_bytes.is_some() && !caps.cgroup {
        missing.push("cgroup-memory".to_string());
    }
    if limits.processes.is_some() && caps.root && !caps.cgroup {
        missing.push("process-limit".to_string());
    }
    if sandbox.strict && !missing.is_empty() {
        return Err(sandbox_error(format!(
            "strict sandbox: unavailable on this system: {}",
            missing.join(", ")
        )));
    }

    let ruleset = if caps.landlock_abi > 0 {
        Some(landlock::prepare(sandbox, caps.landlock_abi).map_err(sandbox_error)?)
    } else {
        None
    };
    let cgroups = if caps.cgroup {
        let id = uuid::Uuid::now_v7().to_string();
        Some(
            Cgroups::create(&id, limits.memory_bytes, limits.processes)
                .map_err(|e| sandbox_error(format!("cannot create cgroups: {e}")))?,
        )
    } else {
        None
    };

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
        netns: sandbox.network == Network::None && caps.netns,
        cgroups: if cgroups.is_some() {
            vec!["memory".into(), "pids".into()]
        } else {
            Vec::new()
        },
        // SAFETY: getuid has no preconditions.
        uid: unsafe { libc::getuid() },
        no_new_privs: true,
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

    let plan = ChildPlan {
        rlimits,
        cgroup_procs: cgroups.as_ref().map(Cgroups::procs_fds).unwrap_or_default(),
        netns: protections.netns,
        landlock_fd: ruleset
            .as_ref()
            .and_then(|r| r.fd.as_ref().map(AsRawFd::as_raw_fd)),
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
    let mut child = cmd
        .spawn()
        .map_err(|e| sandbox_error(format!("cannot start {program}: {e}")))?;
    let pid = child.id() as libc::pid_t;

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
    std::thread::spawn(move || {
        let mut status: libc::c_int = 0;
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
                kill_tree(pid, cgroups.as_ref());
                rx.recv()
            }
        },
        None => rx.recv(),
    };
    let duration = start.elapsed().as_secs_f64();
    // Whatever the child left running (background grandchildren) goes too.
    kill_tree(pid, cgroups.as_ref());
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

/// SIGKILLs the child's process group and everything in its cgroups.
fn kill_tree(pid: libc::pid_t, cgroups: Option<&Cgroups>) {
    // SAFETY: signalling a process group we created (the child called setsid).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
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

/// Runs in the child between fork and exec. Only async-signal-safe calls.
fn child_setup(plan: &ChildPlan) -> std::io::Result<()> {
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
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
        if plan.netns {
            check(libc::unshare(libc::CLONE_NEWNET) as libc::c_long)?;
            loopback_up()?;
        }
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
    }
    Ok(())
}

/// Brings up `lo` in a fresh network namespace (it starts down).
fn loopback_up() -> std::io::Result<()> {
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
