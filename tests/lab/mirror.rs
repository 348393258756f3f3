//! The mirror under test: the regcache binary (or, with `REGCACHE_E2E_MIRROR=direct`, no
//! mirror at all: clients talk to the upstream registry directly, which proves the lab).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::proc::{self, Daemon};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorKind {
    Regcache,
    Direct,
}

impl MirrorKind {
    pub fn from_env() -> MirrorKind {
        match std::env::var("REGCACHE_E2E_MIRROR").as_deref() {
            Ok("direct") => MirrorKind::Direct,
            Ok("") | Ok("regcache") | Err(_) => MirrorKind::Regcache,
            Ok(other) => panic!("REGCACHE_E2E_MIRROR={other:?}: expected `regcache` or `direct`"),
        }
    }
}

pub struct Mirror {
    pub kind: MirrorKind,
    pub addr: SocketAddr,
    pub cache_dir: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub daemon: Option<Daemon>,
}

impl Mirror {
    pub fn start(kind: MirrorKind, dir: &Path, upstream: SocketAddr) -> Mirror {
        match kind {
            MirrorKind::Direct => {
                proc::say(format!(
                    "REGCACHE_E2E_MIRROR=direct: clients talk to the upstream registry {upstream} directly"
                ));
                Mirror {
                    kind,
                    addr: upstream,
                    cache_dir: None,
                    log: None,
                    daemon: None,
                }
            }
            MirrorKind::Regcache => {
                let bin = env!("CARGO_BIN_EXE_regcache");
                let port = proc::free_port();
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("mirror addr");
                let cache_dir = dir.join("regcache-cache");
                std::fs::create_dir_all(&cache_dir).expect("create regcache cache dir");
                let log = dir.join("regcache.log");
                let mut daemon = Daemon::spawn(
                    "regcache (mirror)",
                    Command::new(bin)
                        .arg("serve")
                        .arg("--listen")
                        .arg(addr.to_string())
                        .arg("--cache-dir")
                        .arg(&cache_dir)
                        .arg("--upstream")
                        .arg(format!("http://{upstream}"))
                        .arg("--tag-ttl")
                        .arg("0s")
                        .env(
                            "RUST_LOG",
                            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                        ),
                    &log,
                    Duration::from_secs(10),
                );
                daemon.wait_ready(Duration::from_secs(30), || {
                    proc::http_status(addr, "/v2/") == Some(200)
                });
                Mirror {
                    kind,
                    addr,
                    cache_dir: Some(cache_dir),
                    log: Some(log),
                    daemon: Some(daemon),
                }
            }
        }
    }

    pub fn is_regcache(&self) -> bool {
        self.kind == MirrorKind::Regcache
    }

    pub fn assert_alive(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            d.assert_alive();
        }
    }

    /// Last lines of the regcache log (empty in direct mode).
    pub fn log_tail(&self, n: usize) -> String {
        self.log
            .as_deref()
            .map(|l| proc::tail(l, n))
            .unwrap_or_default()
    }
}
