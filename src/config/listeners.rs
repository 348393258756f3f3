//! `[[listeners]]`: the addresses the mirror listens on, and who may use each one.
//!
//! ```toml
//! [[listeners]]                  # plain HTTP for this host's own dockerd
//! address = "127.0.0.1:5000"
//! [[listeners]]                  # HTTPS for the site, clients must authenticate
//! name = "lan"                   # matches FileDescriptorName= in a socket unit
//! address = "0.0.0.0:5443"
//! tls_cert = "/etc/regcache/certs/regcache.crt"
//! tls_key = "${CREDENTIALS_DIRECTORY}/regcache.key"   # systemd LoadCredential=
//! htpasswd = "/etc/regcache/htpasswd"    # bcrypt entries (htpasswd -B)
//! client_ca = "/etc/regcache/certs/ca.crt"   # TLS client certificates signed by this CA
//! allow_anonymous = false        # true: serve anyone who can reach it (read the warning)
//! ```
//!
//! Without `[[listeners]]`, the top-level `listen` (and `tls_cert`/`tls_key`) make the one
//! listener; the `serve` flags (`--listen`, `--tls-cert`, `--htpasswd`, ...) override it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, ServeArgs, DEFAULT_LISTEN};

/// One `[[listeners]]` entry as written in the file.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// `address`: socket address, e.g. `"0.0.0.0:5443"` (or `"localhost:5000"`).
    #[serde(default, deserialize_with = "super::de_listen")]
    pub address: Option<SocketAddr>,
    /// `name`: matched against systemd's `FileDescriptorName=` (`LISTEN_FDNAMES`) under socket
    /// activation; letters, digits, `.`, `_`, `-`.
    pub name: Option<String>,
    /// `tls_cert`: PEM certificate chain; with `tls_key`, the listener speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `htpasswd`: a file of `user:$2y$...` bcrypt entries (`htpasswd -B`); clients must send
    /// HTTP Basic credentials matching one.
    pub htpasswd: Option<PathBuf>,
    /// `client_ca`: PEM CA certificates; clients must present a TLS certificate signed by one
    /// (needs `tls_cert`/`tls_key`).
    pub client_ca: Option<PathBuf>,
    /// `allow_anonymous`: serve clients that authenticate in no way on a non-loopback address
    /// even though a registry has credentials (default false: `serve` refuses to start).
    pub allow_anonymous: Option<bool>,
}

/// HTTPS settings of a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

/// One resolved listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its socket-activation name, if any.
    pub name: Option<String>,
    /// HTTPS, when configured.
    pub tls: Option<ListenerTls>,
    /// The htpasswd file clients authenticate against, if any.
    pub htpasswd: Option<PathBuf>,
    /// Anonymous clients accepted on a non-loopback address although a registry has
    /// credentials.
    pub allow_anonymous: bool,
}

impl ListenerConfig {
    /// The default listener: plain HTTP on [`DEFAULT_LISTEN`], open (it is loopback).
    pub fn default_listener() -> ListenerConfig {
        ListenerConfig {
            address: DEFAULT_LISTEN.parse().expect("valid default"),
            name: None,
            tls: None,
            htpasswd: None,
            allow_anonymous: false,
        }
    }

    /// Whether only this host can reach it (`127.0.0.0/8`, `::1`, `::ffff:127.0.0.0/104`).
    pub fn is_loopback(&self) -> bool {
        self.address.ip().to_canonical().is_loopback()
    }

    /// Whether it verifies TLS client certificates (`client_ca`).
    pub fn verifies_client_certificates(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }

    /// Whether clients must authenticate (Basic credentials or a client certificate).
    pub fn has_client_auth(&self) -> bool {
        self.htpasswd.is_some() || self.verifies_client_certificates()
    }

    /// `http://127.0.0.1:5000` or `https://0.0.0.0:5443 (lan)`, for messages.
    pub fn label(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match &self.name {
            Some(n) => format!("{scheme}://{} ({n})", self.address),
            None => format!("{scheme}://{}", self.address),
        }
    }
}

/// The listeners from the file's `[[listeners]]` (or its top-level `listen`, `tls_cert`,
/// `tls_key`) and the flags, each problem pushed to `problems` with its key and fix (and
/// `[[listeners]] #N: ` when the file's N-th entry has it). Also whether they are the file's
/// `[[listeners]]` entries, in order.
pub(super) fn resolve(
    listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    listeners: Option<Vec<ListenerFile>>,
    args: &ServeArgs,
    problems: &mut Vec<ConfigError>,
) -> (Vec<ListenerConfig>, bool) {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    let top_level = ListenerFile {
        address: listen,
        tls_cert,
        tls_key,
        ..Default::default()
    };
    let mut from_array = listeners.is_some();
    let mut entries = match listeners {
        Some(list) => {
            if top_level != ListenerFile::default() {
                problems.push(invalid(
                    "listen",
                    "the top-level listen/tls_cert/tls_key and [[listeners]] are both given; move them into a [[listeners]] entry".into(),
                ));
            }
            if list.is_empty() {
                problems.push(invalid(
                    "listeners",
                    "is empty: the mirror would listen nowhere; add a [[listeners]] entry with an address, or remove the key".into(),
                ));
            }
            list
        }
        None => vec![top_level],
    };
    let from_flags = args.listen.is_some()
        || args.tls_cert.is_some()
        || args.htpasswd.is_some()
        || args.client_ca.is_some()
        || args.allow_anonymous;
    if from_flags {
        // The flags make one listener: over the file's, when it has exactly one.
        let mut one = match entries.len() {
            1 => entries.remove(0),
            0 => ListenerFile::default(),
            n => {
                problems.push(invalid(
                    "--listen",
                    format!("--listen, --tls-cert, --htpasswd, --client-ca and --allow-anonymous make one listener, but the config file has {n} [[listeners]]; drop the flags (or set those keys in the entries), or keep one entry"),
                ));
                ListenerFile::default()
            }
        };
        one.address = args.listen.or(one.address);
        if args.tls_cert.is_some() {
            one.tls_cert = args.tls_cert.clone();
            one.tls_key = args.tls_key.clone();
        }
        one.htpasswd = args.htpasswd.clone().or(one.htpasswd);
        one.client_ca = args.client_ca.clone().or(one.client_ca);
        if args.allow_anonymous {
            one.allow_anonymous = Some(true);
        }
        entries = vec![one];
        from_array = false;
    }
    let single = entries.len() == 1 && !from_array;
    let mut out: Vec<ListenerConfig> = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let at = entry_prefix(from_array, i);
        let address = match e.address {
            Some(a) => a,
            None if single && e.name.is_none() => DEFAULT_LISTEN.parse().expect("valid default"),
            None => {
                problems.push(invalid(
                    "address",
                    format!("{at}address is missing; write e.g. address = \"0.0.0.0:5443\""),
                ));
                continue;
            }
        };
        if let Some(n) = &e.name {
            if n.is_empty()
                || n.len() > 255
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                problems.push(invalid(
                    "name",
                    format!("{at}{n:?} is not a listener name (letters, digits, '.', '_', '-'; as systemd's FileDescriptorName=)"),
                ));
            }
        }
        let mut path = |key: &'static str, p: Option<PathBuf>| -> Option<PathBuf> {
            let p = p?;
            match super::expand_path(&p) {
                Ok(p) => Some(p),
                Err(m) => {
                    problems.push(invalid(key, format!("{at}{m}")));
                    // Kept as written: the listener still has this file (and its client auth)
                    // for the checks that follow.
                    Some(p)
                }
            }
        };
        let cert = path("tls_cert", e.tls_cert);
        let key = path("tls_key", e.tls_key);
        let client_ca = path("client_ca", e.client_ca);
        let htpasswd = path("htpasswd", e.htpasswd);
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(ListenerTls {
                cert,
                key,
                client_ca,
            }),
            (None, None) => {
                if client_ca.is_some() {
                    problems.push(invalid(
                        "client_ca",
                        format!("{at}client certificates need HTTPS: add tls_cert and tls_key to this listener (regcache certs init makes them)"),
                    ));
                }
                None
            }
            _ => {
                problems.push(invalid(
                    "tls_cert",
                    format!("{at}tls_cert and tls_key must be given together"),
                ));
                None
            }
        };
        out.push(ListenerConfig {
            address,
            name: e.name,
            tls,
            htpasswd,
            allow_anonymous: e.allow_anonymous.unwrap_or(false),
        });
    }
    for (i, l) in out.iter().enumerate() {
        if out[..i].iter().any(|o| o.address == l.address) {
            problems.push(invalid(
                "address",
                format!(
                    "{} is given to two listeners; give each its own address",
                    l.address
                ),
            ));
        }
        if let Some(n) = &l.name {
            if out[..i].iter().any(|o| o.name.as_ref() == Some(n)) {
                problems.push(invalid(
                    "name",
                    format!("{n:?} names two listeners; give each its own name"),
                ));
            }
        }
    }
    (out, from_array)
}

/// `[[listeners]] #N: ` for the file's N-th entry (how `with_lines` finds its line).
fn entry_prefix(from_array: bool, index: usize) -> String {
    match from_array {
        true => format!("[[listeners]] #{}: ", index + 1),
        false => String::new(),
    }
}

/// The refusal of a listener that would serve what the operator's credentials fetch to anyone
/// on the network: a non-loopback listener without client auth or `allow_anonymous`, while
/// `with_credentials` (registry names) is not empty.
pub(super) fn exposure_problems(
    listeners: &[ListenerConfig],
    from_array: bool,
    with_credentials: &[&str],
) -> Vec<ConfigError> {
    if with_credentials.is_empty() {
        return Vec::new();
    }
    listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_loopback() && !l.has_client_auth() && !l.allow_anonymous)
        .map(|(i, l)| ConfigError::Invalid {
            key: "address",
            message: format!(
                "{}listener {} is reachable from the network without client auth, and {} {} credentials: anyone who can reach it could pull the private images they fetch. Give the listener htpasswd = FILE (Basic auth) or client_ca = FILE (client certificates, with tls_cert/tls_key), listen on 127.0.0.1, or set allow_anonymous = true on it (--allow-anonymous) if serving them to anyone is intended",
                entry_prefix(from_array, i),
                l.label(),
                with_credentials.join(", "),
                if with_credentials.len() == 1 { "has" } else { "have" },
            ),
        })
        .collect()
}

/// What `serve` warns about but runs with: plain HTTP off loopback (Docker will not use it as
/// a mirror), Basic passwords over plain HTTP off loopback, `allow_anonymous` in effect.
pub(super) fn warnings(listeners: &[ListenerConfig], with_credentials: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for l in listeners.iter().filter(|l| !l.is_loopback()) {
        if l.tls.is_none() {
            out.push(format!(
                "listener {}: plain HTTP off loopback; Docker uses a plain-HTTP mirror only on 127.0.0.1 or when the mirror is in its insecure-registries; give this listener tls_cert and tls_key (regcache certs init makes a local CA and a certificate)",
                l.label()
            ));
            if l.htpasswd.is_some() {
                out.push(format!(
                    "listener {}: htpasswd over plain HTTP: passwords cross the network readable by anyone on the path; serve HTTPS (tls_cert, tls_key)",
                    l.label()
                ));
            }
        }
        if l.allow_anonymous && !l.has_client_auth() && !with_credentials.is_empty() {
            out.push(format!(
                "listener {}: allow_anonymous = true: anyone who can reach it can pull what the credentials of {} fetch",
                l.label(),
                with_credentials.join(", ")
            ));
        }
    }
    out
}
