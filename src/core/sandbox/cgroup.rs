//! cgroup v1 memory and pids controllers: true peak memory, reliable OOM and
//! fork-limit accounting, and a way to kill every descendant.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Whether the v1 memory and pids hierarchies exist and can be written.
pub fn available() -> bool {
    ["memory", "pids"].iter().all(|c| {
        let dir = Path::new(ROOT).join(c);
        dir.join("cgroup.procs").exists() && std::fs::create_dir_all(dir.join("execgate")).is_ok()
    })
}

/// The name of a run's group: the gate's pid first, so that the groups a
/// gate left behind when it was killed can be told from live ones.
pub fn group_name(id: &str) -> String {
    format!("{}-{id}", std::process::id())
}

/// Removes groups whose gate process is gone. Their processes died with the
/// gate (the tool's parent-death signal); what is left is the empty
/// directory. `rmdir` fails on a group that still has processes, so a
/// group in use is never removed.
pub fn sweep() {
    for controller in ["memory", "pids"] {
        let base = Path::new(ROOT).join(controller).join("execgate");
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                // Older names are a bare UUIDv7, whose first group starts
                // with '0'; a pid never does.
                .filter(|(pid, _)| !pid.starts_with('0'))
                .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            // SAFETY: signal 0 only checks that the process exists.
            let gone = unsafe { libc::kill(pid, 0) } < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// A run's cgroups, removed (after killing what is left in them) on drop.
pub struct Cgroups {
    dirs: Vec<(&'static str, PathBuf)>,
    procs: Vec<File>,
    pids_max: Option<File>,
}

impl Cgroups {
    /// Creates `execgate/<gate pid>-<id>` under the memory and pids hierarchies.
    pub fn create(id: &str, memory: Option<u64>, processes: Option<u64>) -> std::io::Result<Self> {
        let mut groups = Self {
            dirs: Vec::new(),
            procs: Vec::new(),
            pids_max: None,
        };
        sweep();
        let name = group_name(id);
        for controller in ["memory", "pids"] {
            let dir = Path::new(ROOT)
                .join(controller)
                .join("execgate")
                .join(&name);
            std::fs::create_dir_all(&dir)?;
            groups.dirs.push((controller, dir.clone()));
            match controller {
                "memory" => {
                    if let Some(bytes) = memory {
                        write(&dir.join("memory.limit_in_bytes"), bytes)?;
                        // Without swap accounting this file is absent; with it,
                        // swap must not extend the limit.
                        let _ = write(&dir.join("memory.memsw.limit_in_bytes"), bytes);
                    }
                }
                _ => {
                    if let Some(n) = processes {
                        write(&dir.join("pids.max"), n)?;
                        groups.pids_max =
                            Some(OpenOptions::new().write(true).open(dir.join("pids.max"))?);
                    }
                }
            }
            groups.procs.push(
                OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))?,
            );
        }
        Ok(groups)
    }

    /// Descriptors the child writes "0" to, to join (async-signal-safe).
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// An open `pids.max`, for a child to lower the limit once a helper
    /// process that counted against it is about to leave.
    pub fn pids_max_fd(&self) -> Option<RawFd> {
        self.pids_max.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    /// Peak memory of the whole group in bytes.
    pub fn peak_memory(&self) -> Option<u64> {
        read_u64(&self.dir("memory")?.join("memory.max_usage_in_bytes"))
    }

    /// Whether the memory limit killed something (or was hit).
    pub fn memory_hit(&self) -> bool {
        let Some(dir) = self.dir("memory") else {
            return false;
        };
        let oom_kills = std::fs::read_to_string(dir.join("memory.oom_control"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .unwrap_or(0);
        oom_kills > 0
    }

    /// Whether a fork failed because of pids.max.
    pub fn pids_hit(&self) -> bool {
        let Some(dir) = self.dir("pids") else {
            return false;
        };
        std::fs::read_to_string(dir.join("pids.events"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("max ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .unwrap_or(0)
            > 0
    }

    /// SIGKILLs every process still in the groups (grandchildren included,
    /// even those that left the process group), until they are empty.
    pub fn kill_all(&self) {
        for _ in 0..200 {
            let mut any = false;
            for (_, dir) in &self.dirs {
                let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                    continue;
                };
                for pid in text
                    .lines()
                    .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
                {
                    any = true;
                    // SAFETY: sending a signal has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if !any {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.kill_all();
        self.procs.clear();
        self.pids_max = None;
        for (_, dir) in &self.dirs {
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

fn write(path: &Path, value: u64) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.to_string().as_bytes())
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
