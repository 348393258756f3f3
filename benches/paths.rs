//! End-to-end benchmark of three paths `benches/compare.rs` does not take (issue 17, items 4, 5
//! and 6): regcache against nginx `proxy_cache`, each started fresh, on 127.0.0.1 only, against
//! the same local upstream (Debian's `docker-registry`, plain HTTP, no auth).
//!
//! Run it with `scripts/bench --paths` (after compare) or `scripts/bench --paths-only`; it
//! writes `target/bench/paths.md` and `paths.json`. Directly:
//! `REGCACHE_BIN=target/release/regcache cargo bench --bench paths`.
//! Without `--bench` on its command line (that is, under `cargo test --benches`) it does nothing.
//!
//! Phases (`BENCH_PATHS_PHASES`, default all three, in this order):
//! - `tls-upstream` (item 4): an nginx TLS terminator (`listen ... ssl`, `proxy_buffering off`)
//!   in front of the upstream, certificate from a test CA made here (rcgen); regcache
//!   (`[upstream] url = "https://..."`, `ca_file`) and nginx (`proxy_pass https://`,
//!   `proxy_ssl_verify on`) each fill through it. Cold single GET (median of
//!   `BENCH_PATHS_COLD_SAMPLES` distinct cold blobs, `sync` before each) and cold concurrent
//!   (`BENCH_PATHS_COLD_CLIENTS` clients released together on one cold blob: the slowest client,
//!   and the blob GETs in the upstream's access log); the floor is the same GETs straight at the
//!   terminator (this program's TLS client).
//! - `tls-listener` (item 5): regcache (`--tls-cert/--tls-key`) and nginx (`listen ... ssl
//!   http2`) serving a cached `BENCH_PATHS_BLOB_MIB` blob over HTTPS to this program's client
//!   (hyper over tokio-rustls, one connection per GET, ALPN `http/1.1` or `h2`; HTTP/2 with
//!   16 MiB stream and connection windows, as Go clients open large ones, and 16 KiB frames
//!   unless `BENCH_PATHS_H2_FRAME_KIB` says more), plain-HTTP upstream:
//!   `BENCH_PATHS_HIT_REPEATS` sequential GETs per protocol per round, median MiB/s and the
//!   server's CPU (utime+stime of its processes from /proc) per GiB served. Timed GETs count
//!   bytes only (no hashing: the client shares the 2 cores); the warm-up GET is hashed.
//! - `fills` (item 6): `BENCH_PATHS_FILLS` distinct cold blobs of `BENCH_PATHS_FILL_MIB`, one
//!   client each, released together: aggregate MiB/s (bytes ÷ time from the release to the last
//!   client's end) straight at the upstream, then through each peer (fresh). The same blobs serve
//!   the direct run and the peers; the direct run goes first, so every peer finds them in the
//!   upstream's page cache. New blobs every round.
//!
//! `BENCH_PERF=1` records each peer's phases with `perf` into `<out>/perf/<peer>-<phase>.data`
//! (the figures then carry perf's overhead).
//!
//! Peers alternate order over `BENCH_PATHS_ROUNDS` rounds. Every daemon runs in its own process
//! group (recorded in `BENCH_PGID_FILE`) and is stopped when its phase ends or on panic; request
//! errors are collected into the report, not panics.

/// What the end-to-end benchmarks share (daemons, /proc, the HTTP client, the upstream...).
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio_rustls::TlsConnector;

use common::proc::free_port;
use common::*;

// ------------------------------------------------------------------------------------------
// Sizes (each overridable by the environment variable named in `Settings::from_env`).

/// Blob size of the TLS upstream and TLS listener phases, MiB (`BENCH_PATHS_BLOB_MIB`).
const BLOB_MIB: u64 = 256;
/// Cold single GETs per peer per round over the TLS upstream (`BENCH_PATHS_COLD_SAMPLES`).
const COLD_SAMPLES: usize = 5;
/// Clients of the cold concurrent figure (`BENCH_PATHS_COLD_CLIENTS`).
const COLD_CLIENTS: usize = 10;
/// Sequential warm GETs per server, protocol and round over the TLS listener
/// (`BENCH_PATHS_HIT_REPEATS`).
const HIT_REPEATS: usize = 4;
/// Distinct cold blobs (and clients) of the many-fills phase (`BENCH_PATHS_FILLS`).
const FILLS: usize = 50;
/// Size of each of those blobs, MiB (`BENCH_PATHS_FILL_MIB`).
const FILL_MIB: u64 = 16;
/// Rounds (`BENCH_PATHS_ROUNDS`); peers alternate order, fresh every round.
const ROUNDS: usize = 2;
/// HTTP/2 stream and connection windows of the client (Go's transport opens 4 MiB / 1 GiB,
/// containerd's the same; 16 MiB keeps flow control out of the figure).
const H2_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 DATA frame the client accepts (SETTINGS_MAX_FRAME_SIZE), KiB
/// (`BENCH_PATHS_H2_FRAME_KIB`): 16 is the protocol's default, what hyper and nginx's clients
/// advertise; newer Go clients advertise up to 1024.
const H2_FRAME_KIB: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Peer {
    Regcache,
    Nginx,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Regcache => "regcache",
            Peer::Nginx => "nginx",
        }
    }
}

/// Columns of the figures: the floor, then the peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Col {
    Direct,
    Peer(Peer),
}

impl Col {
    fn name(self) -> &'static str {
        match self {
            Col::Direct => "direct",
            Col::Peer(p) => p.name(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
        }
    }

    fn alpn(self) -> &'static [u8] {
        match self {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    TlsUpstream,
    TlsListener,
    Fills,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::TlsUpstream => "tls-upstream",
            Phase::TlsListener => "tls-listener",
            Phase::Fills => "fills",
        }
    }
}

struct Settings {
    blob_mib: u64,
    cold_samples: usize,
    cold_clients: usize,
    hit_repeats: usize,
    fills: usize,
    fill_mib: u64,
    h2_frame_kib: u32,
    rounds: usize,
    phases: Vec<Phase>,
    out_dir: PathBuf,
    regcache_bin: PathBuf,
    keep_work: bool,
    /// `BENCH_PERF=1`: `perf record` each peer's phases into `<out>/perf/`.
    perf: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let all = [Phase::TlsUpstream, Phase::TlsListener, Phase::Fills];
        let phases = match std::env::var("BENCH_PATHS_PHASES") {
            Ok(v) if !v.trim().is_empty() => {
                let want: Vec<&str> = v.split(',').map(str::trim).collect();
                for w in &want {
                    assert!(
                        all.iter().any(|p| p.name() == *w),
                        "BENCH_PATHS_PHASES: unknown phase {w:?} (tls-upstream, tls-listener, fills)"
                    );
                }
                all.into_iter()
                    .filter(|p| want.contains(&p.name()))
                    .collect()
            }
            _ => all.to_vec(),
        };
        let s = Settings {
            blob_mib: env_or("BENCH_PATHS_BLOB_MIB", BLOB_MIB),
            cold_samples: env_or("BENCH_PATHS_COLD_SAMPLES", COLD_SAMPLES),
            cold_clients: env_or("BENCH_PATHS_COLD_CLIENTS", COLD_CLIENTS),
            hit_repeats: env_or("BENCH_PATHS_HIT_REPEATS", HIT_REPEATS),
            fills: env_or("BENCH_PATHS_FILLS", FILLS),
            fill_mib: env_or("BENCH_PATHS_FILL_MIB", FILL_MIB),
            h2_frame_kib: env_or("BENCH_PATHS_H2_FRAME_KIB", H2_FRAME_KIB),
            rounds: env_or("BENCH_PATHS_ROUNDS", ROUNDS),
            phases,
            out_dir: std::env::var_os("BENCH_OUT_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/bench")),
            regcache_bin: std::env::var_os("REGCACHE_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_regcache"))),
            keep_work: std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1"),
            perf: std::env::var("BENCH_PERF").is_ok_and(|v| v == "1"),
        };
        assert!(
            s.blob_mib >= 1 && s.fill_mib >= 1,
            "blob sizes must be ≥ 1 MiB"
        );
        assert!(s.cold_samples >= 1 && s.cold_clients >= 1 && s.hit_repeats >= 1);
        assert!(s.fills >= 1, "BENCH_PATHS_FILLS must be at least 1");
        assert!(
            (16..=16383).contains(&s.h2_frame_kib),
            "BENCH_PATHS_H2_FRAME_KIB must be 16 to 16383 (RFC 9113: 2^14 to 2^24-1 bytes)"
        );
        assert!(s.rounds >= 1, "BENCH_PATHS_ROUNDS must be at least 1");
        s
    }

    fn blob_len(&self) -> u64 {
        self.blob_mib << 20
    }

    fn fill_len(&self) -> u64 {
        self.fill_mib << 20
    }

    /// The peers of round `round` (0-based), in the order they run.
    fn order(&self, round: usize) -> Vec<Peer> {
        let mut v = vec![Peer::Regcache, Peer::Nginx];
        if round % 2 == 1 {
            v.reverse();
        }
        v
    }
}

// ------------------------------------------------------------------------------------------
// Certificates: a test CA and a server certificate for 127.0.0.1 (rcgen).

struct Certs {
    /// The CA certificate (PEM): regcache's `ca_file`, nginx's `proxy_ssl_trusted_certificate`.
    ca: PathBuf,
    /// The server certificate, then the CA's (PEM).
    cert: PathBuf,
    /// The server key (PEM, PKCS#8, ECDSA P-256).
    key: PathBuf,
    ca_der: Vec<u8>,
}

fn make_certs(dir: &Path) -> Result<Certs, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "regcache bench test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
    let c = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca_der: ca_cert.der().to_vec(),
    };
    let write = |p: &Path, s: String| fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()));
    write(&c.ca, ca_cert.pem())?;
    write(&c.cert, format!("{}{}", leaf_cert.pem(), ca_cert.pem()))?;
    write(&c.key, key.serialize_pem())?;
    Ok(c)
}

// ------------------------------------------------------------------------------------------
// The TLS client: hyper over tokio-rustls, one connection per GET, ALPN per protocol.

struct TlsClient {
    h1: TlsConnector,
    h2: TlsConnector,
    /// SETTINGS_MAX_FRAME_SIZE the HTTP/2 client advertises, bytes.
    h2_max_frame: u32,
    /// TLS versions and cipher suites the handshakes negotiated, for the report.
    seen: Mutex<BTreeSet<String>>,
}

impl TlsClient {
    fn new(ca_der: &[u8], h2_max_frame: u32) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der.to_vec()))
            .expect("test CA certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = |alpn: &[u8]| {
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("rustls protocol versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = vec![alpn.to_vec()];
            TlsConnector::from(Arc::new(c))
        };
        TlsClient {
            h1: cfg(Proto::H1.alpn()),
            h2: cfg(Proto::H2.alpn()),
            h2_max_frame,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// One GET on a new TLS connection speaking `proto` (an error if ALPN picks another).
    /// `hash`: SHA-256 of the body into `Got::sha256` (the timed GETs do not hash).
    async fn get(
        &self,
        proto: Proto,
        addr: SocketAddr,
        path: &str,
        hash: bool,
    ) -> Result<Got, String> {
        let t0 = Instant::now();
        let work = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            let connector = match proto {
                Proto::H1 => &self.h1,
                Proto::H2 => &self.h2,
            };
            let tls = connector
                .connect(ServerName::from(addr.ip()), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            {
                let c = tls.get_ref().1;
                if c.alpn_protocol() != Some(proto.alpn()) {
                    return Err(format!(
                        "{addr} negotiated ALPN {:?}, not {}",
                        c.alpn_protocol().map(String::from_utf8_lossy),
                        String::from_utf8_lossy(proto.alpn())
                    ));
                }
                let desc = format!(
                    "{}, {}",
                    c.protocol_version()
                        .map_or("?".into(), |v| format!("{v:?}")),
                    c.negotiated_cipher_suite()
                        .map_or("?".into(), |s| format!("{:?}", s.suite()))
                );
                self.seen.lock().unwrap().insert(desc);
            }
            let io = TokioIo::new(tls);
            let resp = match proto {
                Proto::H1 => {
                    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
                        .await
                        .map_err(|e| format!("handshake: {e}"))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let req = Request::get(path)
                        .header(HOST, addr.to_string())
                        .header(USER_AGENT, "regcache-bench/1")
                        .body(Empty::<Bytes>::new())
                        .map_err(|e| e.to_string())?;
                    tx.send_request(req)
                        .await
                        .map_err(|e| format!("GET {path}: {e}"))?
                }
                Proto::H2 => {
                    let (mut tx, conn) =
                        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                            .initial_stream_window_size(H2_WINDOW)
                            .initial_connection_window_size(H2_WINDOW)
                            .max_frame_size(self.h2_max_frame)
                            .handshake(io)
                            .await
                            .map_err(|e| format!("h2 handshake: {e}"))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let req = Request::get(format!("https://{addr}{path}"))
                        .header(USER_AGENT, "regcache-bench/1")
                        .body(Empty::<Bytes>::new())
                        .map_err(|e| e.to_string())?;
                    tx.send_request(req)
                        .await
                        .map_err(|e| format!("GET {path}: {e}"))?
                }
            };
            read_response(resp, hash, t0, &format!("GET {path}")).await
        };
        match tokio::time::timeout(GET_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("GET {path}: no answer within {GET_TIMEOUT:?}")),
        }
    }

    /// A GET that must answer 200 with exactly `len` bytes.
    async fn get_exact(
        &self,
        proto: Proto,
        addr: SocketAddr,
        path: &str,
        len: u64,
        hash: bool,
    ) -> Result<Got, String> {
        let g = self.get(proto, addr, path, hash).await?;
        if g.status != 200 || g.bytes != len {
            return Err(format!(
                "GET {path} via https://{addr} ({}): status {} with {} bytes (want 200 with {len})",
                proto.name(),
                g.status,
                g.bytes
            ));
        }
        Ok(g)
    }
}

/// Waits until `GET /v2/` over TLS (HTTP/1.1) answers 200.
fn wait_ready_tls(rt: &tokio::runtime::Runtime, d: &mut Daemon, c: &TlsClient, addr: SocketAddr) {
    d.wait_until(&format!("GET /v2/ on https://{addr}"), || {
        rt.block_on(c.get(Proto::H1, addr, "/v2/", false))
            .is_ok_and(|g| g.status == 200)
    });
}

// ------------------------------------------------------------------------------------------
// Daemons: the TLS terminator, and the peers with their TLS variants.

/// nginx as a TLS terminator in front of the plain upstream (the "HTTPS upstream").
fn start_terminator(
    rt: &tokio::runtime::Runtime,
    t: &Tools,
    work: &Path,
    up: SocketAddr,
    certs: &Certs,
    client: &TlsClient,
    pgids: &Path,
) -> (Daemon, SocketAddr, PathBuf) {
    let dir = work.join("tls-terminator");
    fs::create_dir_all(dir.join("tmp")).expect("create terminator dir");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {d}/access.log;
  keepalive_requests 1000000;
  client_body_temp_path {d}/tmp/client;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  upstream registry {{
    server {up};
    keepalive 32;
  }}
  server {{
    listen {addr} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:tls:10m;
    location / {{
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_request_buffering off;
      client_max_body_size 0;
      proxy_read_timeout 600s;
    }}
  }}
}}
"#,
        cert = certs.cert.display(),
        key = certs.key.display(),
    );
    let log = dir.join("server.log");
    let mut daemon = start_nginx(t, "nginx (TLS terminator)", &dir, &conf, &log, pgids);
    wait_ready_tls(rt, &mut daemon, client, addr);
    say(format!(
        "TLS terminator on https://{addr} in front of http://{up}"
    ));
    (daemon, addr, dir.join("access.log"))
}

/// How a peer is started: where its upstream is and whether its listener speaks TLS.
enum PeerSetup<'a> {
    /// HTTPS upstream (the terminator), plain-HTTP listener.
    TlsUpstream {
        upstream: SocketAddr,
        certs: &'a Certs,
    },
    /// Plain-HTTP upstream, HTTPS listener (HTTP/1.1 and HTTP/2).
    TlsListener {
        upstream: SocketAddr,
        certs: &'a Certs,
    },
    /// Plain HTTP on both sides.
    Plain { upstream: SocketAddr },
}

struct Running {
    daemon: Daemon,
    addr: SocketAddr,
}

#[allow(clippy::too_many_arguments)]
fn start_peer(
    rt: &tokio::runtime::Runtime,
    peer: Peer,
    setup: &PeerSetup<'_>,
    t: &Tools,
    s: &Settings,
    work: &Path,
    client: Option<&TlsClient>,
    pgids: &Path,
) -> Result<Running, String> {
    let dir = work.join(peer.name());
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("clean {}: {e}", dir.display()))?;
    }
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.join("server.log");
    let mut d = match peer {
        Peer::Regcache => {
            let mut cmd = Command::new(&s.regcache_bin);
            cmd.arg("serve");
            let common_args = |cmd: &mut Command| {
                cmd.arg("--listen")
                    .arg(addr.to_string())
                    .arg("--cache-dir")
                    .arg(dir.join("cache"))
                    .arg("--tag-ttl")
                    .arg("0s");
            };
            match setup {
                PeerSetup::TlsUpstream { upstream, certs } => {
                    let cfg = dir.join("regcache.toml");
                    fs::write(
                        &cfg,
                        format!(
                            "[upstream]\nurl = \"https://{upstream}\"\nca_file = \"{}\"\n",
                            certs.ca.display()
                        ),
                    )
                    .map_err(|e| e.to_string())?;
                    // The same flags through check-config first: a refusal is an error of
                    // the run, with regcache's message.
                    let mut check = Command::new(&s.regcache_bin);
                    check.arg("check-config").arg("--config").arg(&cfg);
                    common_args(&mut check);
                    let out = check.output().map_err(|e| e.to_string())?;
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    if !out.status.success() {
                        return Err(format!(
                            "regcache check-config refused {}: {}",
                            cfg.display(),
                            text.trim()
                        ));
                    }
                    say(format!("regcache check-config: {}", text.trim()));
                    cmd.arg("--config").arg(&cfg);
                }
                PeerSetup::TlsListener { upstream, certs } => {
                    cmd.arg("--upstream")
                        .arg(format!("http://{upstream}"))
                        .arg("--tls-cert")
                        .arg(&certs.cert)
                        .arg("--tls-key")
                        .arg(&certs.key);
                }
                PeerSetup::Plain { upstream } => {
                    cmd.arg("--upstream").arg(format!("http://{upstream}"));
                }
            }
            common_args(&mut cmd);
            cmd.env("REGCACHE_LOG", "info");
            Daemon::spawn("regcache", &mut cmd, &log, pgids)
        }
        Peer::Nginx => {
            let (upstream, site) = match setup {
                PeerSetup::TlsUpstream { upstream, certs } => (
                    *upstream,
                    NginxSite {
                        scheme: "https",
                        upstream_name: "registry_tls",
                        location_extra: vec![
                            format!("proxy_ssl_trusted_certificate {};", certs.ca.display()),
                            "proxy_ssl_verify on;".into(),
                            "proxy_ssl_name 127.0.0.1;".into(),
                            "proxy_ssl_session_reuse on;".into(),
                        ],
                        ..NginxSite::plain(addr)
                    },
                ),
                PeerSetup::TlsListener { upstream, certs } => (
                    *upstream,
                    NginxSite {
                        listen: format!("{addr} ssl http2"),
                        server_extra: vec![
                            format!("ssl_certificate {};", certs.cert.display()),
                            format!("ssl_certificate_key {};", certs.key.display()),
                            "ssl_protocols TLSv1.2 TLSv1.3;".into(),
                            "ssl_session_cache shared:tls:10m;".into(),
                        ],
                        ..NginxSite::plain(addr)
                    },
                ),
                PeerSetup::Plain { upstream } => (*upstream, NginxSite::plain(addr)),
            };
            let conf = nginx_cache_conf(&dir, upstream, &site);
            start_nginx(t, "nginx (proxy_cache)", &dir, &conf, &log, pgids)
        }
    };
    match (setup, client) {
        (PeerSetup::TlsListener { .. }, Some(c)) => wait_ready_tls(rt, &mut d, c, addr),
        _ => d.wait_ready(addr, "/v2/", |st| st == 200),
    }
    let scheme = if matches!(setup, PeerSetup::TlsListener { .. }) {
        "https"
    } else {
        "http"
    };
    say(format!(
        "{} on {scheme}://{addr} (pid {}, processes {:?})",
        peer.name(),
        d.pgid(),
        d.pids()
    ));
    Ok(Running { daemon: d, addr })
}

fn clean_peer(s: &Settings, work: &Path, peer: Peer) {
    if !s.keep_work {
        let _ = fs::remove_dir_all(work.join(peer.name()));
    }
}

/// Pushes `n` random blobs of `len` bytes (seeds from `seed`), returning their digests.
async fn push_blobs(up: SocketAddr, n: usize, len: u64, seed: u64) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let data = Bytes::from(random_blob(seed + i as u64, len));
        out.push(push_blob(up, data).await?);
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// Phase A: TLS upstream (item 4).

#[derive(Clone, Debug, Default, Serialize)]
struct TlsUpFig {
    cold_samples_s: Vec<f64>,
    cold_s: Option<f64>,
    /// Server CPU (utime+stime) over the cold single GETs ÷ their number, s.
    cold_cpu_s_per_get: Option<f64>,
    conc_slowest_s: Option<f64>,
    conc_fastest_s: Option<f64>,
    conc_upstream_gets: Option<u64>,
    errors: Vec<String>,
}

struct TlsUpContent {
    /// blobs[..cold_samples]: cold single; the last: cold concurrent.
    blobs: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn measure_tls_upstream(
    rt: &tokio::runtime::Runtime,
    col: Col,
    t: &Tools,
    s: &Settings,
    up: &Upstream,
    term: SocketAddr,
    certs: &Certs,
    client: &Arc<TlsClient>,
    c: &TlsUpContent,
    work: &Path,
    pgids: &Path,
) -> TlsUpFig {
    let mut f = TlsUpFig::default();
    let len = s.blob_len();
    let tck = clock_ticks_per_sec();
    let running = match col {
        Col::Direct => None,
        Col::Peer(p) => {
            let setup = PeerSetup::TlsUpstream {
                upstream: term,
                certs,
            };
            match start_peer(rt, p, &setup, t, s, work, None, pgids) {
                Ok(r) => Some(r),
                Err(e) => {
                    f.errors.push(e);
                    return f;
                }
            }
        }
    };
    let pids = running
        .as_ref()
        .map(|r| r.daemon.pids())
        .unwrap_or_default();
    // One GET through the peer (plain HTTP) or straight at the terminator (TLS).
    let peer_addr = running.as_ref().map(|r| r.addr);
    let one = move |path: String| {
        let client = client.clone();
        let addr = peer_addr;
        async move {
            match addr {
                Some(a) => get_exact(a, &path, len, &PLAIN).await,
                None => client.get_exact(Proto::H1, term, &path, len, false).await,
            }
        }
    };
    let perf = running.as_ref().map(|r| {
        let name = format!("{}-tls-upstream-cold", col.name());
        PerfRecord::start(s.perf, &s.out_dir, &r.daemon, &name)
    });
    let c0 = cpu_ticks(&pids);
    for d in &c.blobs[..s.cold_samples] {
        settle();
        pretouch(len);
        match rt.block_on(one(blob_path(d))) {
            Ok(g) => f.cold_samples_s.push(g.total.as_secs_f64()),
            Err(e) => f.errors.push(format!("cold single: {e}")),
        }
    }
    let c1 = cpu_ticks(&pids);
    drop(perf);
    if running.is_some() && !f.cold_samples_s.is_empty() {
        f.cold_cpu_s_per_get = Some((c1 - c0) as f64 / tck / f.cold_samples_s.len() as f64);
    }
    f.cold_s = median(&f.cold_samples_s);
    say(format!(
        "TLS upstream, {}: cold single {:?} s, server CPU {:?} s per GET",
        col.name(),
        f.cold_samples_s,
        f.cold_cpu_s_per_get
    ));

    // Cold concurrent: peers only (straight at the terminator, ten clients would be ten TLS
    // transfers against the peers' one, not a floor).
    let Some(running) = running else {
        return f;
    };
    let conc = blob_path(&c.blobs[s.cold_samples]);
    settle();
    pretouch(len);
    let mark = up.mark();
    let (results, _) = rt.block_on(together(s.cold_clients, |_| one(conc.clone())));
    let times: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|g| g.total.as_secs_f64()))
        .collect();
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        f.errors.push(format!("cold concurrent: {e}"));
    }
    if times.len() == s.cold_clients {
        f.conc_slowest_s = times.iter().copied().reduce(f64::max);
        f.conc_fastest_s = times.iter().copied().reduce(f64::min);
    }
    let gets = up.count_since(mark, "GET", &conc);
    f.conc_upstream_gets = Some(gets);
    if gets != 1 {
        f.errors.push(format!(
            "cold concurrent: {gets} upstream GETs of the blob (want 1)"
        ));
    }
    say(format!(
        "TLS upstream, {}: cold concurrent slowest {:?} s, upstream GETs {gets}",
        col.name(),
        f.conc_slowest_s
    ));
    drop(running);
    if let Col::Peer(p) = col {
        clean_peer(s, work, p);
    }
    f
}

fn merge_tls_up(rounds: &[TlsUpFig]) -> TlsUpFig {
    let cold: Vec<f64> = rounds
        .iter()
        .flat_map(|f| f.cold_samples_s.iter().copied())
        .collect();
    let med =
        |g: fn(&TlsUpFig) -> Option<f64>| median(&rounds.iter().filter_map(g).collect::<Vec<_>>());
    TlsUpFig {
        cold_s: median(&cold),
        cold_samples_s: cold,
        cold_cpu_s_per_get: med(|f| f.cold_cpu_s_per_get),
        conc_slowest_s: med(|f| f.conc_slowest_s),
        conc_fastest_s: med(|f| f.conc_fastest_s),
        conc_upstream_gets: rounds.iter().filter_map(|f| f.conc_upstream_gets).max(),
        errors: round_errors(rounds.iter().map(|f| &f.errors)),
    }
}

fn round_errors<'a>(rounds: impl Iterator<Item = &'a Vec<String>>) -> Vec<String> {
    rounds
        .enumerate()
        .flat_map(|(i, errs)| errs.iter().map(move |e| format!("round {}: {e}", i + 1)))
        .collect()
}

// ------------------------------------------------------------------------------------------
// Phase B: TLS listener, HTTP/1.1 and HTTP/2 (item 5).

#[derive(Clone, Debug, Default, Serialize)]
struct ListenerFig {
    samples_mib_s: Vec<f64>,
    mib_s: Option<f64>,
    cpu_s_per_gib: Option<f64>,
    errors: Vec<String>,
}

/// One round of one server: start it fresh, warm the blob (hashed GET), then for each protocol
/// `hit_repeats` sequential GETs with the server's CPU around them.
#[allow(clippy::too_many_arguments)]
fn measure_listener(
    rt: &tokio::runtime::Runtime,
    peer: Peer,
    round: usize,
    t: &Tools,
    s: &Settings,
    up: &Upstream,
    certs: &Certs,
    client: &TlsClient,
    digest: &str,
    work: &Path,
    pgids: &Path,
) -> BTreeMap<Proto, ListenerFig> {
    let mut out: BTreeMap<Proto, ListenerFig> = BTreeMap::new();
    let setup = PeerSetup::TlsListener {
        upstream: up.addr,
        certs,
    };
    let r = match start_peer(rt, peer, &setup, t, s, work, Some(client), pgids) {
        Ok(r) => r,
        Err(e) => {
            out.entry(Proto::H1).or_default().errors.push(e);
            return out;
        }
    };
    let len = s.blob_len();
    let path = blob_path(digest);
    let tck = clock_ticks_per_sec();
    // Warm-up: the fill (a miss), then one hashed GET that must be a hit with the right bytes.
    let mut warm_errors = Vec::new();
    for (i, proto) in [Proto::H1, Proto::H2].into_iter().enumerate() {
        match rt.block_on(client.get_exact(proto, r.addr, &path, len, i > 0)) {
            Ok(g) => {
                if i > 0 && g.sha256.as_deref() != Some(digest) {
                    warm_errors.push(format!(
                        "warm GET ({}) returned bytes hashing to {:?}, not {digest}",
                        proto.name(),
                        g.sha256
                    ));
                }
                if let Some(v) = g.headers.get("x-cache-status") {
                    if i > 0 && v != "HIT" {
                        warm_errors.push(format!("nginx warm GET was a cache {v:?}, not HIT"));
                    }
                }
            }
            Err(e) => warm_errors.push(format!("warm-up: {e}")),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut protos = vec![Proto::H1, Proto::H2];
    if round % 2 == 1 {
        protos.reverse();
    }
    for proto in protos {
        let f = out.entry(proto).or_default();
        settle();
        let pids = r.daemon.pids();
        let name = format!("{}-tls-listener-{}", peer.name(), proto.name());
        let perf = PerfRecord::start(s.perf, &s.out_dir, &r.daemon, &name);
        let c0 = cpu_ticks(&pids);
        let mut served = 0u64;
        for _ in 0..s.hit_repeats {
            match rt.block_on(client.get_exact(proto, r.addr, &path, len, false)) {
                Ok(g) => {
                    served += g.bytes;
                    f.samples_mib_s
                        .push(g.bytes as f64 / MIB / g.total.as_secs_f64());
                    if let Some(v) = g.headers.get("x-cache-status") {
                        if v != "HIT" {
                            f.errors
                                .push(format!("nginx GET was a cache {v:?}, not HIT"));
                        }
                    }
                }
                Err(e) => f.errors.push(format!("{}: {e}", proto.name())),
            }
        }
        let c1 = cpu_ticks(&pids);
        drop(perf);
        if served > 0 {
            f.cpu_s_per_gib = Some((c1 - c0) as f64 / tck / (served as f64 / GIB));
        }
        f.mib_s = median(&f.samples_mib_s);
        say(format!(
            "TLS listener, {} {}: {:?} MiB/s, {:?} CPU s/GiB",
            peer.name(),
            proto.name(),
            f.samples_mib_s
                .iter()
                .map(|v| v.round())
                .collect::<Vec<_>>(),
            f.cpu_s_per_gib
        ));
    }
    out.entry(Proto::H1).or_default().errors.extend(warm_errors);
    drop(r);
    clean_peer(s, work, peer);
    out
}

fn merge_listener(rounds: &[ListenerFig]) -> ListenerFig {
    let samples: Vec<f64> = rounds
        .iter()
        .flat_map(|f| f.samples_mib_s.iter().copied())
        .collect();
    ListenerFig {
        mib_s: median(&samples),
        samples_mib_s: samples,
        cpu_s_per_gib: median(
            &rounds
                .iter()
                .filter_map(|f| f.cpu_s_per_gib)
                .collect::<Vec<_>>(),
        ),
        errors: round_errors(rounds.iter().map(|f| &f.errors)),
    }
}

fn ktls() -> (String, bool) {
    let ulp = fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .unwrap_or_default()
        .trim()
        .to_string();
    let has = ulp.split_whitespace().any(|u| u == "tls");
    (ulp, has)
}

// ------------------------------------------------------------------------------------------
// Phase C: many distinct fills at once (item 6).

#[derive(Clone, Debug, Default, Serialize)]
struct FillsFig {
    aggregate_mib_s: Option<f64>,
    wall_s: Option<f64>,
    slowest_s: Option<f64>,
    /// Server CPU over the phase per GiB delivered, s.
    cpu_s_per_gib: Option<f64>,
    /// Upstream GETs per blob during the phase: lowest and highest.
    upstream_gets_min: Option<u64>,
    upstream_gets_max: Option<u64>,
    errors: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn measure_fills(
    rt: &tokio::runtime::Runtime,
    col: Col,
    t: &Tools,
    s: &Settings,
    up: &Upstream,
    blobs: &[String],
    work: &Path,
    pgids: &Path,
) -> FillsFig {
    let mut f = FillsFig::default();
    let len = s.fill_len();
    let tck = clock_ticks_per_sec();
    let running = match col {
        Col::Direct => None,
        Col::Peer(p) => {
            let setup = PeerSetup::Plain { upstream: up.addr };
            match start_peer(rt, p, &setup, t, s, work, None, pgids) {
                Ok(r) => Some(r),
                Err(e) => {
                    f.errors.push(e);
                    return f;
                }
            }
        }
    };
    let addr = running.as_ref().map_or(up.addr, |r| r.addr);
    let pids = match &running {
        Some(r) => r.daemon.pids(),
        None => up.daemon.pids(),
    };
    settle();
    pretouch(len * blobs.len() as u64);
    let mark = up.mark();
    let perf = running.as_ref().map(|r| {
        let name = format!("{}-fills", col.name());
        PerfRecord::start(s.perf, &s.out_dir, &r.daemon, &name)
    });
    let c0 = cpu_ticks(&pids);
    let paths: Vec<String> = blobs.iter().map(|d| blob_path(d)).collect();
    let (results, wall) = rt.block_on(together(blobs.len(), |i| {
        let p = paths[i].clone();
        async move { get_exact(addr, &p, len, &PLAIN).await }
    }));
    let c1 = cpu_ticks(&pids);
    drop(perf);
    let mut bytes = 0u64;
    let mut slowest = 0f64;
    for r in &results {
        match r {
            Ok(g) => {
                bytes += g.bytes;
                slowest = slowest.max(g.total.as_secs_f64());
            }
            Err(e) => f.errors.push(e.clone()),
        }
    }
    if f.errors.is_empty() {
        f.slowest_s = Some(slowest);
    }
    f.wall_s = wall;
    if let Some(w) = wall.filter(|w| *w > 0.0) {
        f.aggregate_mib_s = Some(bytes as f64 / MIB / w);
    }
    if bytes > 0 {
        f.cpu_s_per_gib = Some((c1 - c0) as f64 / tck / (bytes as f64 / GIB));
    }
    // Access-log lines land when responses end; count_since waits for them once.
    let counts: Vec<u64> = {
        std::thread::sleep(Duration::from_millis(300));
        let log = fs::read_to_string(&up.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().skip(mark).collect();
        paths
            .iter()
            .map(|p| {
                let needle = format!("\"GET {p} HTTP/");
                lines.iter().filter(|l| l.contains(&needle)).count() as u64
            })
            .collect()
    };
    f.upstream_gets_min = counts.iter().copied().min();
    f.upstream_gets_max = counts.iter().copied().max();
    if running.is_some() {
        let wrong: Vec<String> = counts
            .iter()
            .zip(blobs)
            .filter(|(n, _)| **n != 1)
            .map(|(n, d)| format!("{}: {n}", &d[..19.min(d.len())]))
            .collect();
        if !wrong.is_empty() {
            f.errors.push(format!(
                "{} of {} blobs not fetched upstream exactly once: {}",
                wrong.len(),
                blobs.len(),
                wrong.join(", ")
            ));
        }
    }
    say(format!(
        "fills, {}: {} × {} MiB in {:?} s: {:?} MiB/s aggregate, slowest {:?} s, CPU {:?} s/GiB, upstream GETs per blob {:?}..{:?}",
        col.name(),
        blobs.len(),
        s.fill_mib,
        wall,
        f.aggregate_mib_s,
        f.slowest_s,
        f.cpu_s_per_gib,
        f.upstream_gets_min,
        f.upstream_gets_max
    ));
    if let Col::Peer(p) = col {
        drop(running);
        clean_peer(s, work, p);
    }
    f
}

fn merge_fills(rounds: &[FillsFig]) -> FillsFig {
    let med =
        |g: fn(&FillsFig) -> Option<f64>| median(&rounds.iter().filter_map(g).collect::<Vec<_>>());
    FillsFig {
        aggregate_mib_s: med(|f| f.aggregate_mib_s),
        wall_s: med(|f| f.wall_s),
        slowest_s: med(|f| f.slowest_s),
        cpu_s_per_gib: med(|f| f.cpu_s_per_gib),
        upstream_gets_min: rounds.iter().filter_map(|f| f.upstream_gets_min).min(),
        upstream_gets_max: rounds.iter().filter_map(|f| f.upstream_gets_max).max(),
        errors: round_errors(rounds.iter().map(|f| &f.errors)),
    }
}

// ------------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Results {
    tls_up_rounds: BTreeMap<Col, Vec<TlsUpFig>>,
    tls_up: BTreeMap<Col, TlsUpFig>,
    listener_rounds: BTreeMap<Peer, BTreeMap<Proto, Vec<ListenerFig>>>,
    listener: BTreeMap<Peer, BTreeMap<Proto, ListenerFig>>,
    fills_rounds: BTreeMap<Col, Vec<FillsFig>>,
    fills: BTreeMap<Col, FillsFig>,
    /// TLS versions and cipher suites the client's handshakes negotiated.
    tls_seen: Vec<String>,
    /// Setup failures (a phase that could not run).
    setup_errors: Vec<String>,
}

struct Row {
    label: String,
    better: &'static str,
    decimals: usize,
    direct: Option<f64>,
    rc: Option<f64>,
    ng: Option<f64>,
    /// Whether the ratio columns mean anything.
    ratios: bool,
}

impl Results {
    fn rows(&self, s: &Settings) -> Vec<Row> {
        let mut v = Vec::new();
        let up = |c: Col, g: fn(&TlsUpFig) -> Option<f64>| self.tls_up.get(&c).and_then(g);
        let rc = Col::Peer(Peer::Regcache);
        let ng = Col::Peer(Peer::Nginx);
        if !self.tls_up.is_empty() {
            let mut row =
                |label: String, better, decimals, direct, g: fn(&TlsUpFig) -> Option<f64>| {
                    v.push(Row {
                        label,
                        better,
                        decimals,
                        direct: if direct { up(Col::Direct, g) } else { None },
                        rc: up(rc, g),
                        ng: up(ng, g),
                        ratios: true,
                    })
                };
            row(
                format!(
                    "TLS upstream: cold single GET ({} MiB), s (median)",
                    s.blob_mib
                ),
                "lower",
                3,
                true,
                |f| f.cold_s,
            );
            row(
                "TLS upstream: server CPU s per cold GET".into(),
                "lower",
                3,
                false,
                |f| f.cold_cpu_s_per_get,
            );
            row(
                format!(
                    "TLS upstream: cold concurrent ({} clients): slowest client, s",
                    s.cold_clients
                ),
                "lower",
                3,
                false,
                |f| f.conc_slowest_s,
            );
            row(
                "TLS upstream: cold concurrent: upstream blob GETs".into(),
                "lower",
                0,
                false,
                |f| f.conc_upstream_gets.map(|n| n as f64),
            );
        }
        if !self.listener.is_empty() {
            let l = |p: Peer, proto: Proto, g: fn(&ListenerFig) -> Option<f64>| {
                self.listener.get(&p)?.get(&proto).and_then(g)
            };
            for proto in [Proto::H1, Proto::H2] {
                v.push(Row {
                    label: format!(
                        "TLS listener, {}: warm GET ({} MiB) throughput, MiB/s (median)",
                        proto.name(),
                        s.blob_mib
                    ),
                    better: "higher",
                    decimals: 0,
                    direct: None,
                    rc: l(Peer::Regcache, proto, |f| f.mib_s),
                    ng: l(Peer::Nginx, proto, |f| f.mib_s),
                    ratios: true,
                });
                v.push(Row {
                    label: format!(
                        "TLS listener, {}: server CPU s per GiB served",
                        proto.name()
                    ),
                    better: "lower",
                    decimals: 3,
                    direct: None,
                    rc: l(Peer::Regcache, proto, |f| f.cpu_s_per_gib),
                    ng: l(Peer::Nginx, proto, |f| f.cpu_s_per_gib),
                    ratios: true,
                });
            }
            let h2h1 = |p: Peer| {
                ratio(
                    l(p, Proto::H2, |f| f.cpu_s_per_gib),
                    l(p, Proto::H1, |f| f.cpu_s_per_gib),
                )
            };
            v.push(Row {
                label: "TLS listener: CPU s/GiB, HTTP/2 ÷ HTTP/1.1".into(),
                better: "lower",
                decimals: 2,
                direct: None,
                rc: h2h1(Peer::Regcache),
                ng: h2h1(Peer::Nginx),
                ratios: false,
            });
        }
        if !self.fills.is_empty() {
            let fl = |c: Col, g: fn(&FillsFig) -> Option<f64>| self.fills.get(&c).and_then(g);
            let mut row =
                |label: String, better, decimals, direct, g: fn(&FillsFig) -> Option<f64>| {
                    v.push(Row {
                        label,
                        better,
                        decimals,
                        direct: if direct { fl(Col::Direct, g) } else { None },
                        rc: fl(rc, g),
                        ng: fl(ng, g),
                        ratios: true,
                    })
                };
            let what = format!("{} fills ({} × {} MiB cold)", s.fills, s.fills, s.fill_mib);
            row(format!("{what}: aggregate MiB/s"), "higher", 0, true, |f| {
                f.aggregate_mib_s
            });
            row(
                format!("{what}: slowest client, s"),
                "lower",
                3,
                true,
                |f| f.slowest_s,
            );
            row(
                format!("{what}: server CPU s per GiB"),
                "lower",
                3,
                true,
                |f| f.cpu_s_per_gib,
            );
            row(
                format!("{what}: upstream GETs per blob (most)"),
                "lower",
                0,
                false,
                |f| f.upstream_gets_max.map(|n| n as f64),
            );
        }
        v
    }

    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut out = Vec::new();
        let rc = Col::Peer(Peer::Regcache);
        let ng = Col::Peer(Peer::Nginx);
        let vs = |a: Option<f64>, b: Option<f64>, d: usize, unit: &str| {
            format!(
                "{} vs {} {unit} ({})",
                fmt_num(a, d),
                fmt_num(b, d),
                fmt_ratio(ratio(a, b))
            )
        };
        if !self.tls_up.is_empty() {
            let g = |c: Col, get: fn(&TlsUpFig) -> Option<f64>| self.tls_up.get(&c).and_then(get);
            for (what, get) in [
                (
                    "item 4: cold single over the TLS upstream ≤ 1.0x nginx's",
                    (|f: &TlsUpFig| f.cold_s) as fn(&TlsUpFig) -> Option<f64>,
                ),
                (
                    "item 4: cold concurrent (slowest client) over the TLS upstream ≤ 1.0x nginx's",
                    |f: &TlsUpFig| f.conc_slowest_s,
                ),
            ] {
                let (a, b) = (g(rc, get), g(ng, get));
                out.push((
                    what.to_string(),
                    vs(a, b, 3, "s"),
                    ratio(a, b).map(|r| r <= 1.0),
                ));
            }
            let n = g(rc, |f| f.conc_upstream_gets.map(|n| n as f64));
            out.push((
                "item 4: cold concurrent over the TLS upstream: exactly 1 upstream GET".into(),
                fmt_num(n, 0),
                n.map(|n| n == 1.0),
            ));
        }
        if !self.listener.is_empty() {
            let l = |p: Peer, proto: Proto, g: fn(&ListenerFig) -> Option<f64>| {
                self.listener.get(&p)?.get(&proto).and_then(g)
            };
            let cpu = |f: &ListenerFig| f.cpu_s_per_gib;
            let (a, b) = (
                l(Peer::Regcache, Proto::H2, cpu),
                l(Peer::Regcache, Proto::H1, cpu),
            );
            out.push((
                "item 5: regcache CPU/GiB, HTTP/2 ÷ HTTP/1.1 ≤ 1.1".into(),
                vs(a, b, 3, "s/GiB"),
                ratio(a, b).map(|r| r <= 1.1),
            ));
            for proto in [Proto::H1, Proto::H2] {
                let (a, b) = (l(Peer::Regcache, proto, cpu), l(Peer::Nginx, proto, cpu));
                out.push((
                    format!(
                        "item 5: CPU/GiB over TLS, {}: regcache ÷ nginx ≤ 0.6",
                        proto.name()
                    ),
                    vs(a, b, 3, "s/GiB"),
                    ratio(a, b).map(|r| r <= 0.6),
                ));
            }
            for proto in [Proto::H1, Proto::H2] {
                let tp = |f: &ListenerFig| f.mib_s;
                let (a, b) = (l(Peer::Regcache, proto, tp), l(Peer::Nginx, proto, tp));
                out.push((
                    format!(
                        "item 5: throughput over TLS, {}: regcache ÷ nginx ≥ 1.2",
                        proto.name()
                    ),
                    vs(a, b, 0, "MiB/s"),
                    ratio(a, b).map(|r| r >= 1.2),
                ));
            }
        }
        if !self.fills.is_empty() {
            let g = |c: Col| self.fills.get(&c).and_then(|f| f.aggregate_mib_s);
            let (a, d, b) = (g(rc), g(Col::Direct), g(ng));
            out.push((
                "item 6: many fills, aggregate: regcache ÷ direct ≥ 0.9".into(),
                vs(a, d, 0, "MiB/s"),
                ratio(a, d).map(|r| r >= 0.9),
            ));
            out.push((
                "item 6: many fills, aggregate: regcache ÷ nginx ≥ 1.0".into(),
                vs(a, b, 0, "MiB/s"),
                ratio(a, b).map(|r| r >= 1.0),
            ));
        }
        out
    }

    fn errors(&self) -> Vec<String> {
        let mut v = self.setup_errors.clone();
        for (c, f) in &self.tls_up {
            v.extend(
                f.errors
                    .iter()
                    .map(|e| format!("TLS upstream, {}: {e}", c.name())),
            );
        }
        for (p, m) in &self.listener {
            for (proto, f) in m {
                v.extend(
                    f.errors
                        .iter()
                        .map(|e| format!("TLS listener, {} {}: {e}", p.name(), proto.name())),
                );
            }
        }
        for (c, f) in &self.fills {
            v.extend(f.errors.iter().map(|e| format!("fills, {}: {e}", c.name())));
        }
        v
    }
}

fn report(s: &Settings, t: &Tools, r: &Results) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## regcache vs nginx: TLS upstream, TLS listener (HTTP/1.1, HTTP/2), many fills\n"
    );
    for (k, v) in machine(t) {
        let _ = writeln!(o, "- {k}: {v}");
    }
    let (ulp, has_ktls) = ktls();
    let _ = writeln!(
        o,
        "- kTLS: /proc/sys/net/ipv4/tcp_available_ulp = {:?}: {}",
        ulp,
        if has_ktls {
            "the kernel offers kTLS, but neither side uses it (rustls has no kTLS; nginx is not configured with ssl_conf_command Options KTLS)"
        } else {
            "no kTLS on either side"
        }
    );
    if !r.tls_seen.is_empty() {
        let _ = writeln!(
            o,
            "- TLS negotiated by the bench's client (every handshake): {}",
            r.tls_seen.join("; ")
        );
    }
    let mut set = vec![format!(
        "{} round(s), each peer fresh per round, order alternating",
        s.rounds
    )];
    if s.phases.contains(&Phase::TlsUpstream) {
        set.push(format!(
            "TLS upstream: {} MiB blobs, {} cold single GETs per peer per round (median of all, sync before each), {} cold concurrent clients; the floor straight at the TLS terminator",
            s.blob_mib, s.cold_samples, s.cold_clients
        ));
    }
    if s.phases.contains(&Phase::TlsListener) {
        set.push(format!(
            "TLS listener: {} MiB blob, {} sequential warm GETs per server, protocol and round, one TLS connection per GET, HTTP/2 windows {} MiB and SETTINGS_MAX_FRAME_SIZE {} KiB",
            s.blob_mib,
            s.hit_repeats,
            H2_WINDOW >> 20,
            s.h2_frame_kib
        ));
    }
    if s.phases.contains(&Phase::Fills) {
        set.push(format!(
            "fills: {} distinct cold blobs of {} MiB per round (new blobs every round), one client each, released together; the same blobs direct first (so the upstream's page cache is warm for every peer), then each peer",
            s.fills, s.fill_mib
        ));
    }
    let _ = writeln!(
        o,
        "- settings: {}. Figures are medians over rounds (cold single and throughput: over all samples); upstream GETs are the worst round.\n",
        set.join("; ")
    );
    let _ = writeln!(
        o,
        "| figure | better | direct | regcache | nginx | regcache ÷ direct | regcache ÷ nginx |\n|---|---|---:|---:|---:|---:|---:|"
    );
    for row in r.rows(s) {
        let (rd, rn) = if row.ratios {
            (
                fmt_ratio(ratio(row.rc, row.direct)),
                fmt_ratio(ratio(row.rc, row.ng)),
            )
        } else {
            ("–".into(), "–".into())
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {rd} | {rn} |",
            row.label,
            row.better,
            fmt_num(row.direct, row.decimals),
            fmt_num(row.rc, row.decimals),
            fmt_num(row.ng, row.decimals),
        );
    }
    let _ = writeln!(
        o,
        "\n\"direct\": TLS upstream rows, straight at the TLS terminator (this program's TLS client, HTTP/1.1); fills rows, straight at the plain upstream (its CPU row: the upstream's own). \"regcache ÷ X\" is regcache's figure divided by X's; read it with the \"better\" column.\n"
    );
    for (c, f) in &r.tls_up {
        let _ = writeln!(
            o,
            "- TLS upstream, {}: cold single samples {:?} s{}",
            c.name(),
            f.cold_samples_s
                .iter()
                .map(|v| (v * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            match f.conc_fastest_s {
                Some(v) => format!("; cold concurrent fastest {v:.3} s"),
                None => String::new(),
            }
        );
    }
    for (p, m) in &r.listener {
        for (proto, f) in m {
            let _ = writeln!(
                o,
                "- TLS listener, {} {}: samples {:?} MiB/s",
                p.name(),
                proto.name(),
                f.samples_mib_s
                    .iter()
                    .map(|v| v.round())
                    .collect::<Vec<_>>()
            );
        }
    }
    for (c, f) in &r.fills {
        let _ = writeln!(
            o,
            "- fills, {}: wall {} s; upstream GETs per blob {}..{}",
            c.name(),
            fmt_num(f.wall_s, 3),
            fmt_num(f.upstream_gets_min.map(|n| n as f64), 0),
            fmt_num(f.upstream_gets_max.map(|n| n as f64), 0),
        );
    }
    let errors = r.errors();
    if errors.is_empty() {
        let _ = writeln!(
            o,
            "- checks: every body had its length (warm-up bodies their digest), every peer fetched each blob upstream once, no request failed"
        );
    } else {
        let _ = writeln!(o, "- ERRORS ({}):", errors.len());
        for e in &errors {
            let _ = writeln!(o, "  - {e}");
        }
    }
    let _ = writeln!(
        o,
        "\n### Targets (regcache)\n\n| target | measured | met |\n|---|---|---|"
    );
    for (what, measured, met) in r.targets() {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(o, "| {what} | {measured} | {met} |");
    }
    if s.rounds > 1 {
        o.push_str(&rounds_table(r));
    }
    o
}

fn rounds_table(r: &Results) -> String {
    let mut o =
        String::from("\n### Round by round\n\n| figure | column | rounds |\n|---|---|---|\n");
    let join = |v: Vec<Option<f64>>, d: usize| {
        v.into_iter()
            .map(|x| fmt_num(x, d))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (c, rounds) in &r.tls_up_rounds {
        let _ = writeln!(
            o,
            "| TLS upstream: cold single s (median) | {} | {} |",
            c.name(),
            join(rounds.iter().map(|f| f.cold_s).collect(), 3)
        );
        let _ = writeln!(
            o,
            "| TLS upstream: cold concurrent slowest s | {} | {} |",
            c.name(),
            join(rounds.iter().map(|f| f.conc_slowest_s).collect(), 3)
        );
    }
    for (p, m) in &r.listener_rounds {
        for (proto, rounds) in m {
            let _ = writeln!(
                o,
                "| TLS listener {}: MiB/s (median) | {} | {} |",
                proto.name(),
                p.name(),
                join(rounds.iter().map(|f| f.mib_s).collect(), 0)
            );
            let _ = writeln!(
                o,
                "| TLS listener {}: CPU s/GiB | {} | {} |",
                proto.name(),
                p.name(),
                join(rounds.iter().map(|f| f.cpu_s_per_gib).collect(), 3)
            );
        }
    }
    for (c, rounds) in &r.fills_rounds {
        let _ = writeln!(
            o,
            "| fills: aggregate MiB/s | {} | {} |",
            c.name(),
            join(rounds.iter().map(|f| f.aggregate_mib_s).collect(), 0)
        );
    }
    o
}

// ------------------------------------------------------------------------------------------

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("paths: skipped (run scripts/bench --paths, or cargo bench --bench paths)");
        return;
    }
    START.get_or_init(Instant::now);
    let s = Settings::from_env();
    let t = tools();
    assert!(
        s.regcache_bin.is_file(),
        "regcache binary {} not found (set REGCACHE_BIN)",
        s.regcache_bin.display()
    );
    fs::create_dir_all(&s.out_dir).expect("create output dir");
    let work = s.out_dir.join(format!("work-paths-{}", std::process::id()));
    fs::create_dir_all(&work).expect("create work dir");
    let pgids = std::env::var_os("BENCH_PGID_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.join("pgids"));
    say(format!("work dir {}", work.display()));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let certs = make_certs(&work.join("certs")).unwrap_or_else(|e| panic!("test CA: {e}"));
    let client = Arc::new(TlsClient::new(&certs.ca_der, s.h2_frame_kib << 10));
    let up = start_upstream(&t, &work, &pgids);
    let mut res = Results::default();

    if s.phases.contains(&Phase::TlsUpstream) {
        say("=== phase tls-upstream (item 4) ===");
        let blobs = rt
            .block_on(push_blobs(
                up.addr,
                s.cold_samples + 1,
                s.blob_len(),
                10_000,
            ))
            .unwrap_or_else(|e| panic!("pushing test content upstream failed: {e}"));
        say(format!(
            "pushed {} blobs of {} MiB",
            blobs.len(),
            s.blob_mib
        ));
        let content = TlsUpContent { blobs };
        let (term, term_addr, _term_log) =
            start_terminator(&rt, &t, &work, up.addr, &certs, &client, &pgids);
        for round in 0..s.rounds {
            let order = s.order(round);
            say(format!(
                "--- tls-upstream round {}/{}: direct, then {:?} ---",
                round + 1,
                s.rounds,
                order.iter().map(|p| p.name()).collect::<Vec<_>>()
            ));
            let cols = std::iter::once(Col::Direct).chain(order.into_iter().map(Col::Peer));
            for col in cols {
                let f = measure_tls_upstream(
                    &rt, col, &t, &s, &up, term_addr, &certs, &client, &content, &work, &pgids,
                );
                res.tls_up_rounds.entry(col).or_default().push(f);
            }
        }
        drop(term);
        res.tls_up = res
            .tls_up_rounds
            .iter()
            .map(|(c, r)| (*c, merge_tls_up(r)))
            .collect();
    }

    if s.phases.contains(&Phase::TlsListener) {
        say("=== phase tls-listener (item 5) ===");
        let digest = rt
            .block_on(push_blobs(up.addr, 1, s.blob_len(), 20_000))
            .unwrap_or_else(|e| panic!("pushing test content upstream failed: {e}"))
            .remove(0);
        for round in 0..s.rounds {
            let order = s.order(round);
            say(format!(
                "--- tls-listener round {}/{}: {:?} ---",
                round + 1,
                s.rounds,
                order.iter().map(|p| p.name()).collect::<Vec<_>>()
            ));
            for p in order {
                let m = measure_listener(
                    &rt, p, round, &t, &s, &up, &certs, &client, &digest, &work, &pgids,
                );
                for (proto, f) in m {
                    res.listener_rounds
                        .entry(p)
                        .or_default()
                        .entry(proto)
                        .or_default()
                        .push(f);
                }
            }
        }
        res.listener = res
            .listener_rounds
            .iter()
            .map(|(p, m)| {
                (
                    *p,
                    m.iter()
                        .map(|(proto, r)| (*proto, merge_listener(r)))
                        .collect(),
                )
            })
            .collect();
    }

    if s.phases.contains(&Phase::Fills) {
        say("=== phase fills (item 6) ===");
        for round in 0..s.rounds {
            let blobs = match rt.block_on(push_blobs(
                up.addr,
                s.fills,
                s.fill_len(),
                30_000 + 1_000 * round as u64,
            )) {
                Ok(b) => b,
                Err(e) => {
                    res.setup_errors
                        .push(format!("fills round {}: push: {e}", round + 1));
                    continue;
                }
            };
            let order = s.order(round);
            say(format!(
                "--- fills round {}/{}: {} blobs of {} MiB pushed; direct, then {:?} ---",
                round + 1,
                s.rounds,
                blobs.len(),
                s.fill_mib,
                order.iter().map(|p| p.name()).collect::<Vec<_>>()
            ));
            let cols = std::iter::once(Col::Direct).chain(order.into_iter().map(Col::Peer));
            for col in cols {
                let f = measure_fills(&rt, col, &t, &s, &up, &blobs, &work, &pgids);
                res.fills_rounds.entry(col).or_default().push(f);
            }
        }
        res.fills = res
            .fills_rounds
            .iter()
            .map(|(c, r)| (*c, merge_fills(r)))
            .collect();
    }
    drop(up);
    res.tls_seen = client.seen.lock().unwrap().iter().cloned().collect();

    let md = report(&s, &t, &res);
    println!("\n{md}");
    let md_path = s.out_dir.join("paths.md");
    fs::write(&md_path, &md).expect("write paths.md");
    let json = serde_json::json!({
        "settings": {
            "blob_mib": s.blob_mib, "cold_samples": s.cold_samples, "cold_clients": s.cold_clients,
            "hit_repeats": s.hit_repeats, "fills": s.fills, "fill_mib": s.fill_mib,
            "rounds": s.rounds, "h2_window": H2_WINDOW, "h2_max_frame_kib": s.h2_frame_kib,
            "phases": s.phases.iter().map(|p| p.name()).collect::<Vec<_>>(),
        },
        "ktls_available_ulp": ktls().0,
        "tls_seen": res.tls_seen,
        "tls_upstream": res.tls_up.iter().map(|(c, f)| (c.name(), f)).collect::<BTreeMap<_, _>>(),
        "tls_upstream_rounds": res.tls_up_rounds.iter().map(|(c, f)| (c.name(), f)).collect::<BTreeMap<_, _>>(),
        "tls_listener": res.listener.iter().map(|(p, m)| (p.name(), m.iter().map(|(proto, f)| (proto.name(), f)).collect::<BTreeMap<_, _>>())).collect::<BTreeMap<_, _>>(),
        "tls_listener_rounds": res.listener_rounds.iter().map(|(p, m)| (p.name(), m.iter().map(|(proto, f)| (proto.name(), f)).collect::<BTreeMap<_, _>>())).collect::<BTreeMap<_, _>>(),
        "fills": res.fills.iter().map(|(c, f)| (c.name(), f)).collect::<BTreeMap<_, _>>(),
        "fills_rounds": res.fills_rounds.iter().map(|(c, f)| (c.name(), f)).collect::<BTreeMap<_, _>>(),
        "targets": res.targets().iter().map(|(w, m, met)| serde_json::json!({"target": w, "measured": m, "met": met})).collect::<Vec<_>>(),
        "errors": res.errors(),
    });
    fs::write(
        s.out_dir.join("paths.json"),
        serde_json::to_vec_pretty(&json).expect("json"),
    )
    .expect("write paths.json");
    say(format!("wrote {} and paths.json", md_path.display()));
    if !s.keep_work {
        let _ = fs::remove_dir_all(&work);
    }
}
