//! A site tier for the lab: regcache nodes named by `--node-name`, HAProxy running the shipped
//! `contrib/haproxy/haproxy.cfg` in front of them, and the site's certificates (for
//! `tests/e2e_tier.rs` and `benches/tier.rs`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::mirror::{regcache_bin, Mirror, RegcacheSpec};
use super::proc::{self, Daemon};
use super::Lab;

/// A regcache node `name` (`--node-name name`) of the lab's upstream, cache `<name>-cache`.
pub fn start_node(lab: &Lab, name: &str, tag_ttl: &str) -> Mirror {
    let upstream = lab.upstream();
    let mut spec = RegcacheSpec::new(
        &format!("regcache ({name})"),
        lab.root(),
        &format!("{name}-cache"),
        &format!("{name}.log"),
    );
    spec.upstream = Some(upstream.mirror_url());
    spec.redirect_hosts = upstream.redirect_hosts.clone();
    spec.tag_ttl = tag_ttl.to_owned();
    spec.extra_args = vec!["--node-name".into(), name.into()];
    Mirror::start_regcache(spec)
}

/// HAProxy with the shipped configuration.
pub struct Haproxy {
    /// The plain-HTTP entry.
    pub plain: SocketAddr,
    /// The HTTPS entry (client certificates of the site CA required).
    pub tls: SocketAddr,
    pub daemon: Daemon,
}

/// The site CA, the tier's certificate (for HAProxy) and a sidecar's client certificate.
pub struct SiteCerts {
    pub ca: PathBuf,
    pub tier_pem: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// `ca.crt`, `client.cert`, `client.key`: containers/image's `--src-cert-dir` layout.
    pub skopeo_dir: PathBuf,
}

/// `regcache certs init` (localhost, 127.0.0.1) and `certs client --name sidecar-1` under `root`.
pub fn site_certs(root: &Path) -> SiteCerts {
    let certs = root.join("site-certs");
    proc::run_ok(
        Command::new(regcache_bin())
            .args([
                "certs",
                "init",
                "--hostname",
                "localhost",
                "--ip",
                "127.0.0.1",
                "--out",
            ])
            .arg(&certs),
        Duration::from_secs(30),
    );
    let client = root.join("site-client");
    proc::run_ok(
        Command::new(regcache_bin())
            .args(["certs", "client", "--name", "sidecar-1", "--ca-dir"])
            .arg(&certs)
            .arg("--out")
            .arg(&client),
        Duration::from_secs(30),
    );
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    };
    // HAProxy's `crt`: the chain, then the key, in one file.
    let tier_pem = root.join("tier.pem");
    std::fs::write(
        &tier_pem,
        read(certs.join("regcache.crt")) + &read(certs.join("regcache.key")),
    )
    .expect("write tier.pem");
    let skopeo_dir = root.join("skopeo-certs");
    std::fs::create_dir_all(&skopeo_dir).expect("mkdir skopeo certs");
    let client_cert = client.join("sidecar-1.cert");
    let client_key = client.join("sidecar-1.key");
    for (from, to) in [
        (certs.join("ca.crt"), "ca.crt"),
        (client_cert.clone(), "client.cert"),
        (client_key.clone(), "client.key"),
    ] {
        std::fs::copy(&from, skopeo_dir.join(to)).expect("copy cert");
    }
    SiteCerts {
        ca: certs.join("ca.crt"),
        tier_pem,
        client_cert,
        client_key,
        skopeo_dir,
    }
}

/// HAProxy with `contrib/haproxy/haproxy.cfg` (checked with `-c` first) for `nodes` (three).
pub fn start_haproxy(root: &Path, bin: &Path, nodes: &[SocketAddr], certs: &SiteCerts) -> Haproxy {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/haproxy/haproxy.cfg");
    let plain: SocketAddr = format!("127.0.0.1:{}", proc::free_port()).parse().unwrap();
    let tls: SocketAddr = format!("127.0.0.1:{}", proc::free_port()).parse().unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&cfg);
    cmd.env("REGCACHE_TIER_PLAIN_BIND", plain.to_string())
        .env("REGCACHE_TIER_TLS_BIND", tls.to_string())
        .env("REGCACHE_TIER_CERT", &certs.tier_pem)
        .env("REGCACHE_TIER_CLIENT_CA", &certs.ca);
    for (var, addr) in ["REGCACHE_NODE_A", "REGCACHE_NODE_B", "REGCACHE_NODE_C"]
        .iter()
        .zip(nodes)
    {
        cmd.env(var, addr.to_string());
    }
    proc::run_ok(
        Command::new(bin)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?)))),
        Duration::from_secs(30),
    );
    let mut daemon = Daemon::spawn(
        "haproxy",
        &mut cmd,
        &root.join("haproxy.log"),
        Duration::from_secs(5),
    );
    daemon.wait_ready(Duration::from_secs(20), || {
        proc::http_status(plain, "/v2/") == Some(200)
    });
    Haproxy { plain, tls, daemon }
}

/// Blob digests in a node's cache (`blobs/sha256/xx/<hex>.<len>`).
pub fn cached_blobs(cache: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(dirs) = std::fs::read_dir(cache.join("blobs/sha256")) else {
        return out;
    };
    for d in dirs.flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some((hex, len)) = name.split_once('.') {
                if hex.len() == 64 && len.bytes().all(|b| b.is_ascii_digit()) {
                    out.insert(format!("sha256:{hex}"));
                }
            }
        }
    }
    out
}
