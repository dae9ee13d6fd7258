//! Running a tool as a child process under kernel-enforced limits.
//!
//! The parent prepares everything that allocates (the Landlock ruleset, the
//! seccomp program, cgroup directories and their open `cgroup.procs` files, the
//! user namespace's id maps, the environment); the children, between `fork`
//! and `exec`, only make async-signal-safe system calls. The tool is PID 1
//! of its own PID namespace, without capabilities, as an unprivileged uid of
//! its own user namespace, under Landlock and seccomp (see `runner`).
//!
//! Which protections were actually in force is reported with every result;
//! with `strict` a run is refused when one that was asked for is unavailable.

mod cgroup;
mod landlock;
mod netns;
mod runner;
mod seccomp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use netns::{private_network, PrivateNetwork};
pub use runner::run;

/// Resource limits. `None` leaves a resource unlimited (as inherited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// CPU time in seconds (RLIMIT_CPU; SIGXCPU then SIGKILL).
    pub cpu_seconds: Option<u64>,
    /// Memory in bytes: a cgroup memory limit where available, and
    /// RLIMIT_AS everywhere (looser when the cgroup binds; see `runner`).
    pub memory_bytes: Option<u64>,
    /// Largest file the tool may write (RLIMIT_FSIZE).
    pub file_size_bytes: Option<u64>,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: Option<u64>,
    /// Processes/threads (a pids cgroup as root, RLIMIT_NPROC otherwise).
    pub processes: Option<u64>,
    /// Wall-clock time; the whole process tree is killed when it runs out.
    pub wall: Option<Duration>,
    /// Bytes of stdout and of stderr kept; the rest is read and discarded.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_seconds: None,
            memory_bytes: None,
            file_size_bytes: None,
            open_files: None,
            processes: None,
            wall: None,
            output_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// The stricter of two limit sets, field by field (a policy can tighten
    /// what a caller asked, never loosen it).
    pub fn stricter(&self, other: &Limits) -> Limits {
        fn min<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, None) => x,
                (None, y) => y,
            }
        }
        Limits {
            cpu_seconds: min(self.cpu_seconds, other.cpu_seconds),
            memory_bytes: min(self.memory_bytes, other.memory_bytes),
            file_size_bytes: min(self.file_size_bytes, other.file_size_bytes),
            open_files: min(self.open_files, other.open_files),
            processes: min(self.processes, other.processes),
            wall: min(self.wall, other.wall),
            output_bytes: self.output_bytes.min(other.output_bytes),
        }
    }
}

/// Network access for the tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A fresh network namespace with only loopback.
    None,
    /// The host's network.
    Host,
    /// The host's network, but TCP connect/bind only to these ports (Landlock ABI 4+).
    Ports(Vec<u16>),
    /// The network namespace in `Sandbox::join_network` (made by
    /// [`private_network`]): only loopback, where the gate's egress proxy
    /// listens; its only way out.
    Proxy,
}

/// Everything a sandboxed run is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Resource limits.
    pub limits: Limits,
    /// Paths readable (and executable) in addition to the system defaults.
    pub read: Vec<PathBuf>,
    /// Paths readable and writable.
    pub write: Vec<PathBuf>,
    /// Whether the system directories a program needs to start are readable.
    pub system_paths: bool,
    /// Network access.
    pub network: Network,
    /// The child's whole environment (nothing else is inherited).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Bytes fed to standard input (empty: stdin is /dev/null).
    pub stdin: Vec<u8>,
    /// Refuse to run when a requested protection is unavailable.
    pub strict: bool,
    /// Copy the child's output to this process's stdout/stderr as it arrives
    /// (it is captured, capped, as well).
    pub stream: bool,
    /// Whether the tool may create Unix-domain sockets (and so connect to any
    /// named socket it can resolve: Landlock cannot scope `connect` by path on
    /// today's kernels). Off, only `socketpair` works.
    pub unix_sockets: bool,
    /// For `Network::Proxy`: a descriptor of the network namespace the tool
    /// joins (a [`PrivateNetwork`]'s, kept open by the caller for the run).
    pub join_network: Option<std::os::fd::RawFd>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            read: Vec::new(),
            write: Vec::new(),
            system_paths: true,
            network: Network::None,
            env: BTreeMap::new(),
            cwd: None,
            stdin: Vec::new(),
            strict: false,
            stream: false,
            unix_sockets: false,
            join_network: None,
        }
    }
}

/// The system directories readable by default, so ordinary programs start.
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/lib32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/proc",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
    "/dev/null",
    "/sys/devices/system/cpu",
];

/// Resource usage of the child, from `wait4` and the cgroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    /// User CPU seconds.
    pub user_cpu: f64,
    /// System CPU seconds.
    pub system_cpu: f64,
    /// Peak resident memory in bytes (the cgroup's peak when one was used,
    /// which includes descendants; otherwise the child's own max RSS).
    pub max_rss: u64,
}

/// Which protections were in force for a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Protections {
    /// rlimits that were set, by name.
    pub rlimits: BTreeMap<String, u64>,
    /// Landlock ABI used (0: unavailable or not applied).
    pub landlock_abi: u32,
    /// Paths Landlock allowed to read.
    pub landlock_read: Vec<String>,
    /// Paths Landlock allowed to write.
    pub landlock_write: Vec<String>,
    /// TCP ports Landlock allowed (network = ports).
    pub landlock_tcp_ports: Vec<u16>,
    /// Whether the child ran in a fresh network namespace.
    pub netns: bool,
    /// The cgroup controllers used (`memory`, `pids`).
    pub cgroups: Vec<String>,
    /// How the process count was bounded: `cgroup-pids`, `rlimit-nproc`, or `none`.
    pub process_limit: String,
    /// The uid the tool ran as, as it sees itself (65534 in its own user
    /// namespace; otherwise the gate's uid).
    pub uid: u32,
    /// The uid the tool's files and processes belong to outside its box.
    pub host_uid: u32,
    /// Whether the tool ran in its own user namespace.
    pub userns: bool,
    /// Whether the tool ran as PID 1 of its own PID namespace (it can neither
    /// see nor signal processes outside it, and everything it started dies
    /// with it), as the gate's child, killed with its namespace if the gate dies.
    pub pidns: bool,
    /// Capabilities the tool kept (in any set: bounding, permitted, effective,
    /// inheritable, ambient). Empty when every one was dropped.
    pub capabilities: Vec<String>,
    /// Whether no_new_privs was set.
    pub no_new_privs: bool,
    /// The seccomp filter in force (None when seccomp was unavailable).
    pub seccomp: Option<SeccompReport>,
    /// Landlock scopes in force (ABI 6+): `abstract_unix_socket`, `signal`.
    pub landlock_scopes: Vec<String>,
    /// Requested protections that could not be applied.
    pub missing: Vec<String>,
}

/// What the seccomp filter denies, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeccompReport {
    /// What a denied call returns (`EPERM`; `clone3` returns `ENOSYS` so
    /// libc falls back to `clone`, whose namespace flags are filtered).
    pub action: String,
    /// System calls denied outright or for some arguments, by name.
    pub denied: Vec<String>,
    /// Socket families and types the tool may create, e.g. `inet:stream`.
    pub sockets: Vec<String>,
}

/// The outcome of a sandboxed run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Completed {
    /// Exit status, when the process exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Captured standard output (at most `output_bytes`).
    #[serde(skip)]
    pub stdout: Vec<u8>,
    /// Captured standard error (at most `output_bytes`).
    #[serde(skip)]
    pub stderr: Vec<u8>,
    /// Whether output past the cap was discarded.
    pub truncated: bool,
    /// Wall time in seconds.
    pub duration: f64,
    /// CPU and memory.
    pub usage: Usage,
    /// The limit that stopped the run: `memory`, `cpu`, `wall`, `output`,
    /// `file_size`, `processes`, or None.
    pub limit_hit: Option<String>,
    /// What was in force.
    pub protections: Protections,
}

/// Which protections this kernel and process can provide, for `strict` and
/// for reporting. `EXECGATE_TEST_UNAVAILABLE=landlock,netns,cgroup,userns,
/// pidns,seccomp` makes the named ones look unavailable (a test hook; it can
/// only remove protections).
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Landlock ABI version (0 when unavailable).
    pub landlock_abi: u32,
    /// Whether a network namespace can be created.
    pub netns: bool,
    /// Whether cgroup v1 memory and pids controllers are writable.
    pub cgroup: bool,
    /// Whether we run as root.
    pub root: bool,
    /// Whether a user namespace can be created.
    pub userns: bool,
    /// Whether a PID namespace can be created.
    pub pidns: bool,
    /// Whether seccomp filters are supported (and this architecture is one
    /// the filter is written for).
    pub seccomp: bool,
}

impl Capabilities {
    /// Probes the running kernel.
    pub fn probe() -> Self {
        let hidden = std::env::var("EXECGATE_TEST_UNAVAILABLE").unwrap_or_default();
        let hidden: Vec<&str> = hidden.split(',').map(str::trim).collect();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let userns = !hidden.contains(&"userns") && runner::userns_available();
        Self {
            landlock_abi: if hidden.contains(&"landlock") {
                0
            } else {
                landlock::abi_version()
            },
            // Without root, a network or PID namespace needs a user namespace
            // to own it.
            netns: (root || userns) && !hidden.contains(&"netns"),
            pidns: (root || userns) && !hidden.contains(&"pidns"),
            cgroup: root && !hidden.contains(&"cgroup") && cgroup::available(),
            seccomp: !hidden.contains(&"seccomp") && seccomp::available(),
            root,
            userns,
        }
    }
}

impl Sandbox {
    /// The stricter of this sandbox and a policy's `obligations.sandbox`:
    /// lower limits, the intersection of paths, the narrower network. A policy
    /// can tighten what the caller asked, never loosen it. Keys this code does
    /// not know are an error (a requirement that cannot be enforced denies).
    pub fn tightened(&self, obligation: &serde_json::Value) -> crate::core::error::Result<Sandbox> {
        use crate::core::error::CoreError;
        use serde_json::Value as Json;
        let bad = |m: String| CoreError::Sandbox(format!("obligations.sandbox: {m}"));
        let Json::Object(ob) = obligation else {
            return Err(bad("must be an object".into()));
        };
        let mut out = self.clone();
        for (key, value) in ob {
            match key.as_str() {
                "limits" => {
                    let Json::Object(l) = value else {
                        return Err(bad("limits must be an object".into()));
                    };
                    let mut policy = Limits {
                        output_bytes: usize::MAX,
                        ..Limits::default()
                    };
                    for (name, v) in l {
                        let n = v.as_f64().filter(|n| *n >= 0.0).ok_or_else(|| {
                            bad(format!("limits.{name} must be a non-negative number"))
                        })?;
                        let whole = n.ceil() as u64;
                        match name.as_str() {
                            "cpu_seconds" => policy.cpu_seconds = Some(whole),
                            "memory_bytes" => policy.memory_bytes = Some(whole),
                            "file_size_bytes" => policy.file_size_bytes = Some(whole),
                            "open_files" => policy.open_files = Some(whole),
                            "processes" => policy.processes = Some(whole),
                            "wall_seconds" => {
                                policy.wall =
                                    Some(Duration::try_from_secs_f64(n).map_err(|_| {
                                        bad(format!("limits.{name} is out of range: {n:e}"))
                                    })?)
                            }
                            "output_bytes" => policy.output_bytes = whole as usize,
                            other => return Err(bad(format!("unknown limit {other:?}"))),
                        }
                    }
                    out.limits = out.limits.stricter(&policy);
                }
                "read" | "write" => {
                    let paths: Vec<PathBuf> = value
                        .as_array()
                        .and_then(|a| a.iter().map(|p| p.as_str().map(PathBuf::from)).collect())
                        .ok_or_else(|| bad(format!("{key} must be a list of paths")))?;
                    if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
                        return Err(bad(format!("{key}: {} is not absolute", p.display())));
                    }
                    // A policy path that does not resolve grants nothing.
                    let policy: Vec<PathBuf> = paths
                        .iter()
                        .filter_map(|p| std::fs::canonicalize(p).ok())
                        .collect();
                    let mine = if key == "read" {
                        &mut out.read
                    } else {
                        &mut out.write
                    };
                    *mine = intersect(&resolve_all(mine)?, &policy);
                }
                "unix_sockets" => {
                    let allow = value
                        .as_bool()
                        .ok_or_else(|| bad("unix_sockets must be a boolean".into()))?;
                    out.unix_sockets &= allow;
                }
                "system_paths" => {
                    let allow = value
                        .as_bool()
                        .ok_or_else(|| bad("system_paths must be a boolean".into()))?;
                    out.system_paths &= allow;
                }
                "network" => {
                    let policy =
                        match value {
                            Json::String(s) if s == "none" => Network::None,
                            Json::String(s) if s == "host" => Network::Host,
                            Json::String(s) if s == "proxy" => Network::Proxy,
                            Json::Array(ports) => Network::Ports(
                                ports
                                    .iter()
                                    .map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                                    .collect::<Option<Vec<u16>>>()
                                    .ok_or_else(|| {
                                        bad("network ports must be integers 0-65535".into())
                                    })?,
                            ),
                            _ => return Err(bad(
                                "network must be \"none\", \"host\", \"proxy\" or a list of ports"
                                    .into(),
                            )),
                        };
                    out.network = narrower(&out.network, &policy);
                }
                other => return Err(bad(format!("unknown key {other:?}"))),
            }
        }
        Ok(out)
    }
}

/// A requested path as the kernel will see it: absolute, no `.` or `..`,
/// every symlink followed. A path that cannot be resolved is refused rather
/// than skipped, so that what is compared, granted and reported is one thing.
pub(crate) fn resolve(path: &Path) -> crate::core::error::Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| {
        crate::core::error::CoreError::Sandbox(format!(
            "cannot resolve the requested path {}: {e}",
            path.display()
        ))
    })
}

/// [`resolve`] for each path.
fn resolve_all(paths: &[PathBuf]) -> crate::core::error::Result<Vec<PathBuf>> {
    paths.iter().map(|p| resolve(p)).collect()
}

/// Paths allowed by both lists (both resolved by the caller): each path of
/// one that lies under a path of the other. `starts_with` compares whole
/// components, so `/w2` is not under `/w`.
fn intersect(a: &[PathBuf], b: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for x in a {
        for y in b {
            let keep = if x.starts_with(y) {
                Some(x)
            } else if y.starts_with(x) {
                Some(y)
            } else {
                None
            };
            if let Some(p) = keep {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
    }
    out
}

/// The narrower of two network settings; `none` when neither lies within the
/// other (a port list and the proxy).
fn narrower(a: &Network, b: &Network) -> Network {
    match (a, b) {
        (Network::None, _) | (_, Network::None) => Network::None,
        (Network::Proxy, Network::Proxy | Network::Host) | (Network::Host, Network::Proxy) => {
            Network::Proxy
        }
        (Network::Proxy, Network::Ports(_)) | (Network::Ports(_), Network::Proxy) => Network::None,
        (Network::Ports(x), Network::Ports(y)) => {
            Network::Ports(x.iter().copied().filter(|p| y.contains(p)).collect())
        }
        (Network::Ports(p), Network::Host) | (Network::Host, Network::Ports(p)) => {
            Network::Ports(p.clone())
        }
        (Network::Host, Network::Host) => Network::Host,
    }
}

impl Sandbox {
    /// A JSON description for receipts: limits, paths, network, and the
    /// environment's variable names (never their values).
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "limits": {
                "cpu_seconds": self.limits.cpu_seconds,
                "memory_bytes": self.limits.memory_bytes,
                "file_size_bytes": self.limits.file_size_bytes,
                "open_files": self.limits.open_files,
                "processes": self.limits.processes,
                "wall_seconds": self.limits.wall.map(|w| w.as_secs_f64()),
                "output_bytes": self.limits.output_bytes,
            },
            "read": self.read,
            "write": self.write,
            "system_paths": self.system_paths,
            "network": self.network,
            "unix_sockets": self.unix_sockets,
            "env": self.env.keys().collect::<Vec<_>>(),
            "cwd": self.cwd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A fresh directory tree for one test: `root/{data/public,srv,w,outside}`.
    fn tree(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("execgate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["data/public", "srv", "w", "outside", "tmp/out"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::canonicalize(root).unwrap()
    }

    #[test]
    fn obligations_only_tighten() {
        let root = tree("tighten");
        let mine = Sandbox {
            limits: Limits {
                cpu_seconds: Some(10),
                memory_bytes: None,
                ..Limits::default()
            },
            read: vec![root.join("data"), root.join("srv")],
            write: vec![root.join("tmp/out")],
            network: Network::Host,
            ..Sandbox::default()
        };
        let t = mine
            .tightened(&json!({"limits": {"cpu_seconds": 60, "memory_bytes": 1000},
                                "read": [root.join("data/public"), "/etc"], "write": ["/"],
                                "network": [443]}))
            .unwrap();
        assert_eq!(t.limits.cpu_seconds, Some(10)); // the caller's lower limit stays
        assert_eq!(t.limits.memory_bytes, Some(1000)); // the policy adds one
        assert_eq!(t.read, vec![root.join("data/public")]);
        assert_eq!(t.write, vec![root.join("tmp/out")]);
        assert_eq!(t.network, Network::Ports(vec![443]));
        // A policy asking for "host" cannot widen "none".
        let none = Sandbox::default();
        assert_eq!(
            none.tightened(&json!({"network": "host"})).unwrap().network,
            Network::None
        );
        // The proxy is narrower than the host's network, and wider than none;
        // with a port list neither lies within the other: none.
        assert_eq!(
            mine.tightened(&json!({"network": "proxy"}))
                .unwrap()
                .network,
            Network::Proxy
        );
        let proxy = Sandbox {
            network: Network::Proxy,
            ..Sandbox::default()
        };
        assert_eq!(
            proxy
                .tightened(&json!({"network": "host"}))
                .unwrap()
                .network,
            Network::Proxy
        );
        assert_eq!(
            proxy.tightened(&json!({"network": [80]})).unwrap().network,
            Network::None
        );
        assert!(mine.tightened(&json!({"limits": {"gpu": 1}})).is_err());
        assert!(mine.tightened(&json!({"teleport": true})).is_err());
        assert!(
            !Sandbox {
                unix_sockets: true,
                ..Sandbox::default()
            }
            .tightened(&json!({"unix_sockets": false}))
            .unwrap()
            .unix_sockets
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn dot_dot_and_symlinks_cannot_widen_the_clamp() {
        let root = tree("clamp");
        let w = root.join("w");
        std::os::unix::fs::symlink(root.join("outside"), w.join("link")).unwrap();
        let clamp = json!({"write": [w]});
        let asking = |p: PathBuf| Sandbox {
            write: vec![p],
            ..Sandbox::default()
        };
        // `/w/..` is the parent of the clamp: only the clamp itself is
        // granted (as text, `/w/..` lay "under" `/w` and was kept whole).
        let up = asking(w.join("..")).tightened(&clamp).unwrap();
        assert_eq!(up.write, vec![w.clone()]);
        // A symlink inside `/w` that points out is where it points.
        let out = asking(w.join("link")).tightened(&clamp).unwrap();
        assert_eq!(out.write, Vec::<PathBuf>::new());
        // A path inside stays, resolved.
        std::fs::create_dir(w.join("sub")).unwrap();
        let inside = asking(w.join("./sub/../sub")).tightened(&clamp).unwrap();
        assert_eq!(inside.write, vec![w.join("sub")]);
        // A sibling whose name shares a prefix is not inside.
        std::fs::create_dir(root.join("w2")).unwrap();
        assert!(asking(root.join("w2"))
            .tightened(&clamp)
            .unwrap()
            .write
            .is_empty());
        // What cannot be resolved is refused, not skipped.
        let err = asking(w.join("missing/x")).tightened(&clamp).unwrap_err();
        assert!(err.to_string().contains("cannot resolve"), "{err}");
        // A clamp through a symlink clamps to its target.
        std::os::unix::fs::symlink(&w, root.join("wl")).unwrap();
        let via = asking(w.clone())
            .tightened(&json!({"write": [root.join("wl")]}))
            .unwrap();
        assert_eq!(via.write, vec![w]);
        assert!(asking(root.clone())
            .tightened(&json!({"write": ["relative"]}))
            .is_err());
        std::fs::remove_dir_all(root).unwrap();
    }
}
