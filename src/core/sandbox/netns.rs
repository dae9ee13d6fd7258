//! A private network namespace the gate makes for `network = proxy`: only
//! loopback, and on it one TCP listener that the gate holds. The tool joins
//! the namespace; the gate accepts its connections on the listener and makes
//! its own (decided) connections from the host's network. No interface,
//! route or relay connects the two: what leaves is what the gate sends.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::core::error::{CoreError, Result};

/// A network namespace with only loopback, and a listener in it.
#[derive(Debug)]
pub struct PrivateNetwork {
    /// The namespace (`/proc/thread-self/ns/net` of the thread that made
    /// it), for the tool to join.
    pub namespace: OwnedFd,
    /// A listening TCP socket on 127.0.0.1:`port` inside the namespace.
    pub listener: OwnedFd,
    /// The listener's port.
    pub port: u16,
}

/// Makes a [`PrivateNetwork`]. A short-lived thread enters a new network
/// namespace (only that thread: the namespace is per thread), brings up
/// loopback, listens and opens the namespace; the descriptors keep the
/// namespace alive after the thread ends. Needs `CAP_SYS_ADMIN` (root).
pub fn private_network() -> Result<PrivateNetwork> {
    let err = |what: &str, e: std::io::Error| {
        CoreError::Sandbox(format!(
            "cannot make the proxy's network namespace: {what}: {e}"
        ))
    };
    let made = std::thread::spawn(move || -> Result<PrivateNetwork> {
        // SAFETY: unshare on this thread only; no memory is involved.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(err("unshare", std::io::Error::last_os_error()));
        }
        super::runner::loopback_up().map_err(|e| err("loopback", e))?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| err("listen", e))?;
        let port = listener.local_addr().map_err(|e| err("listen", e))?.port();
        // SAFETY: a NUL-terminated path; the descriptor is owned at once.
        let fd = unsafe {
            libc::open(
                c"/proc/thread-self/ns/net".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(err("open the namespace", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let namespace = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PrivateNetwork {
            namespace,
            listener: listener.into(),
            port,
        })
    });
    made.join()
        .map_err(|_| CoreError::Sandbox("the network namespace thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_new_namespace_and_this_thread_stays_where_it_was() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // needs CAP_SYS_ADMIN
        }
        let ours = || std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        let before = ours();
        let net = private_network().unwrap();
        assert_eq!(ours(), before);
        let theirs = std::fs::metadata(format!("/proc/self/fd/{}", net.namespace.as_raw_fd()))
            .unwrap()
            .ino();
        assert_ne!(theirs, before);
        assert!(net.port > 0);
    }
}
