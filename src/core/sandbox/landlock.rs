//! The Landlock ruleset, built in the parent (it allocates and opens paths);
//! the child only calls `landlock_restrict_self` on its descriptor.

use std::os::fd::OwnedFd;

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

use super::{Network, Sandbox, SYSTEM_READ_PATHS};

/// The kernel's Landlock ABI version, 0 when Landlock is unavailable.
pub fn abi_version() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with this flag the call only returns the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}

/// A ruleset ready to be applied, and what it allows (for the report).
pub struct Prepared {
    pub fd: Option<OwnedFd>,
    pub abi: u32,
    pub read: Vec<String>,
    pub write: Vec<String>,
    pub ports: Vec<u16>,
    /// Scopes in force (ABI 6+): IPC the tool cannot reach outside its domain.
    pub scopes: Vec<String>,
}

/// Builds the ruleset for `sandbox` at `abi`. Paths that do not exist are
/// skipped (nothing to allow); the report lists only what was allowed.
pub fn prepare(sandbox: &Sandbox, abi: u32) -> Result<Prepared, String> {
    let level = ABI::from(i32::try_from(abi).unwrap_or(0));
    let mut read: Vec<String> = Vec::new();
    if sandbox.system_paths {
        read.extend(SYSTEM_READ_PATHS.iter().map(|p| p.to_string()));
    }
    read.extend(sandbox.read.iter().map(|p| p.display().to_string()));
    let mut write: Vec<String> = vec!["/dev/null".to_string()];
    write.extend(sandbox.write.iter().map(|p| p.display().to_string()));
    read.retain(|p| std::path::Path::new(p).exists());
    write.retain(|p| std::path::Path::new(p).exists());
    let ports = match &sandbox.network {
        Network::Ports(p) if abi >= 4 => p.clone(),
        _ => Vec::new(),
    };
    let err = |e: landlock::RulesetError| format!("cannot build the Landlock ruleset: {e}");
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(level))
        .map_err(err)?;
    if matches!(sandbox.network, Network::Ports(_)) && abi >= 4 {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(level))
            .map_err(err)?;
    }
    // Abstract Unix sockets and signals only within the tool's own domain:
    // nothing the host listens on in the abstract namespace, no signal to a
    // process outside the box (the gate, the supervisor, anything else).
    let mut scopes = Vec::new();
    if abi >= 6 {
        ruleset = ruleset.scope(Scope::from_all(ABI::V6)).map_err(err)?;
        scopes = vec!["abstract_unix_socket".to_string(), "signal".to_string()];
    }
    let mut created = ruleset
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(&read, AccessFs::from_read(level)))
        .map_err(err)?
        .add_rules(path_beneath_rules(&write, AccessFs::from_all(level)))
        .map_err(err)?;
    for port in &ports {
        created = created
            .add_rule(NetPort::new(*port, AccessNet::from_all(level)))
            .map_err(err)?;
    }
    let fd: Option<OwnedFd> = created.into();
    Ok(Prepared {
        abi: if fd.is_some() { abi } else { 0 },
        fd,
        read,
        write,
        ports,
        scopes,
    })
}
