//! How the shared state reaches Redis: the `state=` URL, one server or a
//! Redis Cluster, TLS with the system's roots or a given CA, and client
//! certificates.
//!
//! - `redis://[user:password@]host:port/db`, `rediss://...` (TLS),
//!   `redis+unix:///path` or `unix:///path`: one server (the redis crate's
//!   forms).
//! - `redis+cluster://[user:password@]host:port,host:port,.../` and
//!   `rediss+cluster://...` (TLS): a Redis Cluster. The hosts are seeds (one
//!   that answers is enough; the client learns the others from it), as in
//!   PostgreSQL's multi-host URLs. Database 0 only (a cluster has no other),
//!   no unix sockets (nodes announce IP and port). Following `MOVED`/`ASK`
//!   redirections, refreshing the slot map after a resharding or a failover
//!   and reconnecting are the redis crate's sync cluster client's, with at
//!   most [`CLUSTER_RETRIES`] retries per command so a cluster that cannot
//!   serve the slot denies soon.
//! - TLS parameters in the query, with the names redis-py accepts:
//!   `ssl_certfile` and `ssl_keyfile` (a client certificate chain and its
//!   private key, PEM, for a server that requires client certificates:
//!   `tls-auth-clients yes`), `ssl_ca_certs` (a PEM file of CAs trusted
//!   instead of the system's roots). The files are read when the store is
//!   opened (a missing or unreadable one is a configuration error); a
//!   certificate the server refuses, or a key that does not match the
//!   certificate, fails each connection, so calls that need the store deny.
//!
//! There is no mode that skips verifying the server (the crate's
//! `tls-rustls-insecure` feature is not compiled: `#insecure` fails to
//! connect).

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection, Connect};
use redis::{
    Client, ClientTlsConfig, Cmd, Connection, ConnectionInfo, ConnectionLike, IntoConnectionInfo,
    RedisResult, TlsCertificates, Value,
};

use super::StateOptions;

/// Retries of one command on a cluster (a redirection, a refreshed slot map
/// after a failover, a reconnect): enough to follow `ASK` then `MOVED`, few
/// enough that a slot nobody serves denies within a few timeouts.
pub const CLUSTER_RETRIES: u32 = 2;

/// The TLS query parameters (redis-py's names).
const CERT: &str = "ssl_certfile";
const KEY: &str = "ssl_keyfile";
const CA: &str = "ssl_ca_certs";

/// A store's address: one server or a cluster's seeds.
pub enum Link {
    Node(Client),
    Cluster(ClusterClient),
}

/// One connection to the store (to each node it needs, for a cluster).
pub enum Conn {
    Node(Connection),
    Cluster(Box<OneSlot>),
}

/// A cluster connection that takes pipelines. The cluster client sends a
/// packed pipeline to the node serving its first command's key, and resends
/// the whole to where a `MOVED` or `ASK` points; every key execgate keeps is
/// in one slot (the `{execgate}` tag), so a pipeline that starts with one of
/// them runs where the state lives. (The crate refuses plain pipelines on a
/// cluster because in general their keys span nodes; its cluster pipeline
/// would send keyless commands such as `TIME` to a random node.)
pub struct OneSlot(ClusterConnection<NodeConn>);

impl ConnectionLike for OneSlot {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        self.0.req_command(cmd)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }

    fn supports_pipelining(&self) -> bool {
        true
    }

    fn check_connection(&mut self) -> bool {
        self.0.check_connection()
    }

    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

impl Conn {
    /// Commands, pipelines and scripts run on either.
    pub fn link(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Node(c) => c,
            Conn::Cluster(c) => &mut **c,
        }
    }
}

impl Link {
    /// The store at `url` (see the module's documentation for the forms).
    /// Returns the link and the URL to show (no password, no TLS files).
    /// Connects to nothing.
    pub fn open(url: &str, options: &StateOptions) -> Result<(Self, String), String> {
        let (base, files) = split_tls_files(url)?;
        let shown = without_password(&base);
        let certs = files.load()?;
        let cluster = [
            ("redis+cluster://", "redis"),
            ("rediss+cluster://", "rediss"),
        ]
        .into_iter()
        .find_map(|(prefix, scheme)| base.strip_prefix(prefix).map(|rest| (scheme, rest)));
        let link = match (cluster, certs) {
            (Some((scheme, rest)), certs) => {
                let seeds = cluster_seeds(scheme, rest)?;
                if certs.is_some() && scheme != "rediss" {
                    return Err(format!("{CERT}/{KEY}/{CA} need TLS: rediss+cluster://"));
                }
                let mut builder = ClusterClientBuilder::new(seeds)
                    .connection_timeout(options.connect_timeout)
                    .response_timeout(options.timeout)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(10)
                    .max_retry_wait(100);
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                Link::Cluster(builder.build().map_err(|e| e.to_string())?)
            }
            (None, certs) => {
                let info = without_lib_name(base.as_str()).map_err(|e| e.to_string())?;
                let client = match certs {
                    None => Client::open(info),
                    Some(_) if !base.starts_with("rediss://") => {
                        return Err(format!("{CERT}/{KEY}/{CA} need TLS: rediss://"));
                    }
                    Some(certs) => Client::build_with_tls(info, certs),
                };
                Link::Node(client.map_err(|e| e.to_string())?)
            }
        };
        Ok((link, shown))
    }

    /// A new connection, every reply bounded by `options.timeout`.
    pub fn connect(&self, options: &StateOptions) -> RedisResult<Conn> {
        match self {
            Link::Node(client) => {
                let conn = client.get_connection_with_timeout(options.connect_timeout)?;
                conn.set_read_timeout(Some(options.timeout))?;
                conn.set_write_timeout(Some(options.timeout))?;
                Ok(Conn::Node(conn))
            }
            Link::Cluster(client) => {
                // Reads are bounded by the builder's response timeout. (The
                // generic constructor is public but hidden from the crate's
                // documentation: it is how a node connection type is chosen.)
                let conn = client.get_generic_connection::<NodeConn>()?;
                conn.set_write_timeout(Some(options.timeout))?;
                Ok(Conn::Cluster(Box::new(OneSlot(conn))))
            }
        }
    }
}

thread_local! {
    /// When the request [`within`] runs on this thread must be over.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `op`, one request to the store, with every connect, write and read
/// of a cluster's nodes bounded by `deadline` as well as by its own
/// timeout. The cluster client retries, redirects, refreshes its slot map
/// and reconnects inside one command, each step with its own timeout, so a
/// hung node would otherwise cost many timeouts per call (8 s measured with
/// a stopped node, 1 s and 0.2 s timeouts).
pub fn within<T>(deadline: Instant, op: impl FnOnce() -> T) -> T {
    let outer = DEADLINE.replace(Some(deadline));
    let out = op();
    DEADLINE.set(outer);
    out
}

/// `limit`, shortened to what is left before the deadline; an error once it
/// passed.
fn bounded(limit: Option<Duration>) -> RedisResult<Option<Duration>> {
    let Some(deadline) = DEADLINE.get() else {
        return Ok(limit);
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "the call's deadline passed");
        return Err(late.into());
    }
    Ok(Some(limit.map_or(left, |l| l.min(left))))
}

/// One node's connection in a cluster: the crate's own, with every socket
/// operation bounded by the deadline of [`within`]. Connecting leaves the
/// read timeout set (the crate's plain connection clears it after its
/// handshake, and the cluster client then sends `PING` before setting its
/// own: a node that accepts connections but never answers would hang it).
pub struct NodeConn {
    conn: Connection,
    read: Cell<Option<Duration>>,
    write: Cell<Option<Duration>>,
}

impl NodeConn {
    /// The socket's timeouts, shortened to what is left of the deadline.
    fn arm(&self) -> RedisResult<()> {
        self.conn.set_read_timeout(bounded(self.read.get())?)?;
        self.conn.set_write_timeout(bounded(self.write.get())?)
    }
}

impl Connect for NodeConn {
    fn connect<T: IntoConnectionInfo>(info: T, timeout: Option<Duration>) -> RedisResult<Self> {
        let limit = bounded(timeout)?;
        let client = Client::open(without_lib_name(info)?)?;
        let conn = match limit {
            Some(limit) => client.get_connection_with_timeout(limit)?,
            None => client.get_connection()?,
        };
        conn.set_read_timeout(limit)?;
        conn.set_write_timeout(limit)?;
        Ok(Self {
            conn,
            read: Cell::new(limit),
            write: Cell::new(limit),
        })
    }

    fn send_packed_command(&mut self, cmd: &[u8]) -> RedisResult<()> {
        self.arm()?;
        self.conn.send_packed_command(cmd)
    }

    fn set_write_timeout(&self, dur: Option<Duration>) -> RedisResult<()> {
        self.write.set(dur);
        self.conn.set_write_timeout(dur)
    }

    fn set_read_timeout(&self, dur: Option<Duration>) -> RedisResult<()> {
        self.read.set(dur);
        self.conn.set_read_timeout(dur)
    }

    fn recv_response(&mut self) -> RedisResult<Value> {
        self.arm()?;
        self.conn.recv_response()
    }
}

impl ConnectionLike for NodeConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.arm()?;
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.arm()?;
        self.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }

    fn check_connection(&mut self) -> bool {
        self.arm().is_ok() && self.conn.check_connection()
    }

    fn is_open(&self) -> bool {
        self.conn.is_open()
    }
}

/// `info` without the `CLIENT SETINFO` the crate sends after connecting:
/// two replies to wait for (Redis before 7.2 answers both with an error),
/// each bounded by the whole connect timeout, so a server that accepts
/// connections but does not answer took twice the connect timeout.
fn without_lib_name(info: impl IntoConnectionInfo) -> RedisResult<ConnectionInfo> {
    let info = info.into_connection_info()?;
    let redis = info.redis_settings().clone().set_skip_set_lib_name();
    Ok(info.set_redis_settings(redis))
}

/// The TLS files a URL names.
#[derive(Default)]
struct TlsFiles {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

impl TlsFiles {
    fn load(self) -> Result<Option<TlsCertificates>, String> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
        };
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read(cert, &format!("client certificate ({CERT})"))?,
                client_key: read(key, &format!("client key ({KEY})"))?,
            }),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "{CERT} and {KEY} go together (a certificate and its key)"
                ))
            }
        };
        let root_cert = match &self.ca {
            Some(ca) => Some(read(ca, &format!("CA file ({CA})"))?),
            None => None,
        };
        if client_tls.is_none() && root_cert.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// `url` without its TLS query parameters (the other parameters and the
/// fragment kept as written), and the files they name.
fn split_tls_files(url: &str) -> Result<(String, TlsFiles), String> {
    let (head, fragment) = match url.find('#') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let Some((base, query)) = head.split_once('?') else {
        return Ok((url.to_string(), TlsFiles::default()));
    };
    let mut files = TlsFiles::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((name, value)) = url::form_urlencoded::parse(pair.as_bytes()).next() else {
            continue;
        };
        let slot = match name.as_ref() {
            CERT => &mut files.cert,
            KEY => &mut files.key,
            CA => &mut files.ca,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        if slot.replace(PathBuf::from(value.as_ref())).is_some() {
            return Err(format!("{name} is given twice"));
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    Ok((format!("{base}{query}{fragment}"), files))
}

/// The seed URLs of `redis+cluster://` (given without its scheme).
fn cluster_seeds(scheme: &str, rest: &str) -> Result<Vec<String>, String> {
    if rest.contains(['?', '#']) {
        return Err(format!(
            "a cluster URL takes no query but {CERT}, {KEY} and {CA}, and no fragment \
             (there is no insecure mode)"
        ));
    }
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(db, "" | "0") {
        return Err("a Redis Cluster has database 0 only".into());
    }
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{user}{h}/"))
        .collect();
    if seeds.is_empty() {
        return Err(
            "a cluster URL names its seed nodes: redis+cluster://host:port,host:port/".into(),
        );
    }
    Ok(seeds)
}

/// The URL without the password of its user part, or of a unix URL's
/// `pass=` parameter.
pub fn without_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let url = match url[start..end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    };
    match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<&str> = query
                .split('&')
                .map(|p| {
                    if p.starts_with("pass=") {
                        "pass=***"
                    } else {
                        p
                    }
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            without_password("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            without_password("redis+cluster://u:p@a:1,b:2/"),
            "redis+cluster://***@a:1,b:2/"
        );
        assert_eq!(without_password("unix:///tmp/r.sock"), "unix:///tmp/r.sock");
        assert_eq!(
            without_password("unix:///tmp/r@x.sock?db=1&pass=secret"),
            "unix:///tmp/r@x.sock?db=1&pass=***"
        );
    }

    #[test]
    fn tls_files_are_taken_from_the_query() {
        let (base, files) = split_tls_files(
            "rediss://h:1/0?protocol=resp3&ssl_certfile=%2Ftmp%2Fc.pem&ssl_keyfile=/k#x",
        )
        .unwrap();
        assert_eq!(base, "rediss://h:1/0?protocol=resp3#x");
        assert_eq!(files.cert, Some(PathBuf::from("/tmp/c.pem")));
        assert_eq!(files.key, Some(PathBuf::from("/k")));
        assert!(files.ca.is_none());
        assert!(split_tls_files("rediss://h/?ssl_ca_certs=a&ssl_ca_certs=b").is_err());
        let only_cert = split_tls_files("rediss://h/?ssl_certfile=/c").unwrap().1;
        assert!(only_cert.load().unwrap_err().contains("go together"));
        let missing = split_tls_files("rediss://h/?ssl_ca_certs=/nonexistent/ca.pem")
            .unwrap()
            .1;
        assert!(missing.load().unwrap_err().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn cluster_urls_name_their_seeds() {
        assert_eq!(
            cluster_seeds("redis", "u:p@10.0.0.1:7000, 10.0.0.2:7001/").unwrap(),
            ["redis://u:p@10.0.0.1:7000/", "redis://u:p@10.0.0.2:7001/"]
        );
        assert_eq!(
            cluster_seeds("rediss", "[::1]:7000").unwrap(),
            ["rediss://[::1]:7000/"]
        );
        assert!(cluster_seeds("redis", "a:1/1")
            .unwrap_err()
            .contains("database 0"));
        assert!(cluster_seeds("redis", "a:1/#insecure").is_err());
        assert!(cluster_seeds("redis", "/").is_err());
        let options = StateOptions::default();
        assert!(Link::open("redis+cluster://127.0.0.1:1,127.0.0.1:2/", &options).is_ok());
        let plain_with_certs = "redis+cluster://127.0.0.1:1/?ssl_ca_certs=/dev/null";
        assert!(Link::open(plain_with_certs, &options)
            .err()
            .unwrap()
            .contains("need TLS"));
        let plain = "redis://127.0.0.1:1/?ssl_ca_certs=/dev/null";
        assert!(Link::open(plain, &options)
            .err()
            .unwrap()
            .contains("need TLS"));
    }
}
