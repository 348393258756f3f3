//! Protected HTTPS listeners of the mirror ([`super::LabOptions::protected_listeners`]): a
//! local CA, server and client certificates made by `regcache certs init` / `certs client`,
//! an htpasswd file of bcrypt entries (as `htpasswd -B` writes them), and the `[[listeners]]`
//! entries of the mirror's config file that use them. Also the client-side files: a
//! certificate directory as Docker's `certs.d/<host:port>/` and containers/image's
//! `--src-cert-dir` read it (`*.crt` CAs, a `*.cert` + `*.key` pair), and an installed
//! `/etc/docker/certs.d/<host:port>/` that is removed again.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::mirror::regcache_bin;
use super::proc;

/// The htpasswd user the clients authenticate as.
pub const USER: &str = "e2e-puller";
/// The client certificate's name (its CN).
pub const CLIENT_NAME: &str = "e2e-client";

/// The mirror's protected listeners and the files clients need for them.
#[derive(Clone, Debug)]
pub struct Protected {
    /// `ca.crt`, `ca.key`, `regcache.crt`, `regcache.key` (`regcache certs init`).
    pub certs: PathBuf,
    pub ca: PathBuf,
    /// `e2e-client.cert` / `e2e-client.key` (`regcache certs client`).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub htpasswd: PathBuf,
    pub password: String,
    /// HTTPS, client certificates required (`client_ca` only).
    pub tls_client: SocketAddr,
    /// HTTPS, Basic credentials required (`htpasswd` only).
    pub basic: SocketAddr,
    /// HTTPS, either a client certificate or Basic credentials (`client_ca` and `htpasswd`).
    pub either: SocketAddr,
    /// The host's first non-loopback IPv4 address, if it has one: dockerd treats every
    /// mirror on 127.0.0.0/8 as insecure (no certificate checks, no certs.d, so no client
    /// certificate), so its checks need a listener on another address.
    pub lan: Option<IpAddr>,
    /// On `lan`: HTTPS, client certificates required.
    pub lan_tls_client: Option<SocketAddr>,
    /// On `lan`: HTTPS, Basic credentials required.
    pub lan_basic: Option<SocketAddr>,
    dir: PathBuf,
}

impl Protected {
    /// Makes the CA, the certificates and the htpasswd file under `root/access` and picks
    /// the listeners' ports.
    pub fn create(root: &Path) -> Protected {
        let dir = root.join("access");
        let certs = dir.join("certs");
        std::fs::create_dir_all(&dir).expect("create access dir");
        let lan = non_loopback_ipv4();
        let mut init = Command::new(regcache_bin());
        init.args([
            "certs",
            "init",
            "--hostname",
            "localhost",
            "--ip",
            "127.0.0.1",
        ]);
        if let Some(ip) = lan {
            init.args(["--ip", &ip.to_string()]);
        }
        init.arg("--out").arg(&certs);
        proc::run_ok(&mut init, Duration::from_secs(30));
        let client_dir = dir.join("client");
        proc::run_ok(
            Command::new(regcache_bin())
                .args(["certs", "client", "--name", CLIENT_NAME, "--ca-dir"])
                .arg(&certs)
                .arg("--out")
                .arg(&client_dir),
            Duration::from_secs(30),
        );
        let password = format!("pw-{}-{}", std::process::id(), proc::free_port());
        let htpasswd = dir.join("htpasswd");
        // Cost 5: what `htpasswd -B` uses by default.
        std::fs::write(
            &htpasswd,
            format!(
                "# regcache e2e\n{USER}:{}\n",
                bcrypt::hash(&password, 5).expect("bcrypt")
            ),
        )
        .expect("write htpasswd");
        let local = |ip: IpAddr| SocketAddr::new(ip, proc::free_port());
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        let p = Protected {
            ca: certs.join("ca.crt"),
            client_cert: client_dir.join(format!("{CLIENT_NAME}.cert")),
            client_key: client_dir.join(format!("{CLIENT_NAME}.key")),
            certs,
            htpasswd,
            password,
            tls_client: local(loopback),
            basic: local(loopback),
            either: local(loopback),
            lan,
            lan_tls_client: lan.map(local),
            lan_basic: lan.map(local),
            dir,
        };
        for f in [&p.ca, &p.client_cert, &p.client_key] {
            assert!(f.exists(), "regcache certs did not write {}", f.display());
        }
        p
    }

    /// `user:password` for the htpasswd entry.
    pub fn creds(&self) -> String {
        format!("{USER}:{}", self.password)
    }

    /// The `Authorization` header value of those credentials.
    pub fn basic_header(&self) -> String {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(self.creds())
        )
    }

    /// The `[[listeners]]` entries: `plain` first (plain HTTP, open: the lab's own checks and
    /// the other clients), then the protected ones.
    pub fn listeners_toml(&self, plain: SocketAddr) -> String {
        let cert = self.certs.join("regcache.crt");
        let key = self.certs.join("regcache.key");
        let tls = format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        );
        let client_ca = format!("client_ca = \"{}\"\n", self.ca.display());
        let htpasswd = format!("htpasswd = \"{}\"\n", self.htpasswd.display());
        let mut s = format!("[[listeners]]\nname = \"plain\"\naddress = \"{plain}\"\n");
        let mut entry = |name: &str, addr: SocketAddr, auth: &str| {
            s.push_str(&format!(
                "\n[[listeners]]\nname = \"{name}\"\naddress = \"{addr}\"\n{tls}{auth}"
            ));
        };
        entry("tls-client", self.tls_client, &client_ca);
        entry("basic", self.basic, &htpasswd);
        entry("either", self.either, &format!("{client_ca}{htpasswd}"));
        if let (Some(c), Some(b)) = (self.lan_tls_client, self.lan_basic) {
            entry("lan-tls-client", c, &client_ca);
            entry("lan-basic", b, &htpasswd);
        }
        s
    }

    /// A fresh certificate directory `<access>/<name>/` holding `ca.crt` and, with
    /// `client`, `client.cert` + `client.key`: the layout of Docker's
    /// `certs.d/<host:port>/` and of containers/image's `--src-cert-dir`.
    pub fn cert_dir(&self, name: &str, client: bool) -> PathBuf {
        let d = self.dir.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d).expect("remove old cert dir");
        }
        std::fs::create_dir_all(&d).expect("create cert dir");
        fill_cert_dir(self, &d, client);
        d
    }

    /// Installs `/etc/docker/certs.d/<host:port>/` (dockerd's certificate directory; the
    /// daemon has no option to move it, only rootless mode does) with `ca.crt` and, with
    /// `client`, the client pair. Removed when the guard is dropped.
    pub fn install_docker_certs(&self, host_port: &str, client: bool) -> DockerCertsDir {
        DockerCertsDir::install(self, host_port, client)
    }
}

fn fill_cert_dir(p: &Protected, d: &Path, client: bool) {
    std::fs::copy(&p.ca, d.join("ca.crt")).expect("copy ca.crt");
    if client {
        std::fs::copy(&p.client_cert, d.join("client.cert")).expect("copy client.cert");
        std::fs::copy(&p.client_key, d.join("client.key")).expect("copy client.key");
    }
}

/// `/etc/docker/certs.d/<host:port>/`, removed on drop, and `certs.d` and `/etc/docker` too
/// once empty if they did not exist before this process first installed one.
pub struct DockerCertsDir {
    pub path: PathBuf,
}

const DOCKER_ETC: &str = "/etc/docker";
const DOCKER_CERTS_D: &str = "/etc/docker/certs.d";

/// Of `[/etc/docker, /etc/docker/certs.d]`, those that did not exist before this process
/// first installed a certificate directory.
fn docker_dirs_made_here() -> &'static Vec<PathBuf> {
    static MADE: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        [DOCKER_ETC, DOCKER_CERTS_D]
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect()
    })
}

impl DockerCertsDir {
    fn install(p: &Protected, host_port: &str, client: bool) -> DockerCertsDir {
        docker_dirs_made_here();
        let path = Path::new(DOCKER_CERTS_D).join(host_port);
        assert!(
            !path.exists(),
            "{} exists already; not touching it",
            path.display()
        );
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        fill_cert_dir(p, &path, client);
        proc::say(format!(
            "installed {} ({})",
            path.display(),
            if client {
                "ca.crt, client.cert, client.key"
            } else {
                "ca.crt"
            }
        ));
        DockerCertsDir { path }
    }
}

impl Drop for DockerCertsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        for d in docker_dirs_made_here().iter().rev() {
            // Only if empty: another directory may still be installed, or something else
            // may have put files there meanwhile.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The first global-scope IPv4 address of this host (`ip -4 -o addr show scope global`).
pub fn non_loopback_ipv4() -> Option<IpAddr> {
    let ip = proc::which("ip")?;
    let out = proc::run(
        Command::new(ip).args(["-4", "-o", "addr", "show", "scope", "global"]),
        Duration::from_secs(10),
    );
    out.stdout.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        it.find(|w| *w == "inet")?;
        let addr: IpAddr = it.next()?.split('/').next()?.parse().ok()?;
        (!addr.is_loopback()).then_some(addr)
    })
}
