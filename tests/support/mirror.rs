//! A regcache started in-process on `127.0.0.1:0`, and waiting for what it does in the
//! background.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

/// A regcache running in-process on a free port.
pub struct Mirror {
    pub addr: SocketAddr,
    pub app: Arc<regcache::mirror::Mirror>,
    pub dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Mirror {
    /// A mirror of the fake upstream `up` (its CDN allowed as a redirect target).
    pub async fn start(up: &super::FakeUpstream, tag_ttl: Duration) -> Mirror {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(up, tag_ttl, dir).await
    }

    /// [`Mirror::start`] with the cache in `dir`.
    pub async fn start_in(
        up: &super::FakeUpstream,
        tag_ttl: Duration,
        dir: tempfile::TempDir,
    ) -> Mirror {
        let args = regcache::config::ServeArgs {
            redirect_host: up.redirect_hosts(),
            ..Self::args_in(&up.url(), tag_ttl, &dir)
        };
        Self::start_with(args, dir).await
    }

    /// A mirror of the upstream at `url` (no redirect targets allowed beyond the default rule).
    pub async fn start_url(url: &str, tag_ttl: Duration) -> Mirror {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = Self::args_in(url, tag_ttl, &dir);
        Self::start_with(args, dir).await
    }

    fn args_in(
        url: &str,
        tag_ttl: Duration,
        dir: &tempfile::TempDir,
    ) -> regcache::config::ServeArgs {
        regcache::config::ServeArgs {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            cache_dir: Some(dir.path().to_path_buf()),
            upstream: Some(url.to_string()),
            tag_ttl: Some(tag_ttl),
            ..Default::default()
        }
    }

    /// Starts with a TOML config file (written into the cache dir's sibling) plus a cache dir.
    pub async fn start_with_config(toml: &str) -> Mirror {
        Self::start_with_config_env(toml, &[]).await
    }

    /// Starts with explicit flags (cache dir defaults to a fresh temp dir's `cache/`).
    pub async fn start_args(mut args: regcache::config::ServeArgs) -> Mirror {
        let dir = tempfile::tempdir().expect("tempdir");
        if args.cache_dir.is_none() {
            args.cache_dir = Some(dir.path().join("cache"));
        }
        Self::start_with(args, dir).await
    }

    /// [`Mirror::start_with_config`] with the proxy variables (`HTTPS_PROXY`, `NO_PROXY`, ...)
    /// read from `env` (the other starts see none, whatever the test machine has).
    pub async fn start_with_config_env(toml: &str, env: &[(&str, &str)]) -> Mirror {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("regcache.toml");
        std::fs::write(&cfg, toml).unwrap();
        let args = regcache::config::ServeArgs {
            config: Some(cfg),
            cache_dir: Some(dir.path().join("cache")),
            ..Default::default()
        };
        Self::start_env(args, dir, env).await
    }

    async fn start_with(args: regcache::config::ServeArgs, dir: tempfile::TempDir) -> Mirror {
        Self::start_env(args, dir, &[]).await
    }

    async fn start_env(
        mut args: regcache::config::ServeArgs,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Mirror {
        // Tests that stop a mirror with connections open wait this long at most.
        args.shutdown_grace.get_or_insert(Duration::from_secs(10));
        let lookup = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let config = regcache::config::Config::load_with_env(&args, &lookup).expect("config");
        let app = Arc::new(regcache::mirror::Mirror::new(config).expect("mirror"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mirror");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let a = app.clone();
        let task = tokio::spawn(async move {
            let _ = regcache::http::server::run(listener, a, async {
                let _ = rx.await;
            })
            .await;
        });
        Mirror {
            addr,
            app,
            dir,
            task,
            stop: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Whether the blob file is committed in the cache directory.
    pub fn has_blob(&self, digest: &str) -> bool {
        let d: regcache::reference::Digest = digest.parse().unwrap();
        self.store().has_blob(&d)
    }

    /// The mirror's store (files and index).
    pub fn store(&self) -> &regcache::cache::store::Store {
        self.app.cache().store()
    }

    /// GETs each blob of `digests` through the mirror (in repository `repo`), checks its
    /// digest, and waits until all are committed.
    pub async fn fill_blobs(&self, repo: &str, digests: &[String]) {
        for d in digests {
            let r = super::get(&self.url(&format!("/v2/{repo}/blobs/{d}"))).await;
            assert_eq!(super::sha256(r.bytes()), *d, "GET {repo} blob {d}");
        }
        eventually("blobs committed", || {
            digests.iter().all(|d| self.has_blob(d))
        })
        .await;
    }

    /// Whether no fill is in progress.
    pub fn fills_idle(&self) -> bool {
        self.app.cache().fills_in_progress() == 0
    }

    /// Files under the cache's tmp/ directory.
    pub fn temp_files(&self) -> usize {
        std::fs::read_dir(self.store().root().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Stops the server and returns the cache directory (for a restart).
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

/// Waits (bounded) until `cond` holds; panics with `what` otherwise.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] with an async condition.
pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A runtime with two workers and only `threads` blocking-pool threads (for tests that a slow
/// fill holds no pool thread).
pub fn small_blocking_pool(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// `regcache serve` as a child process on a free loopback port, mirroring a fake upstream;
/// killed when dropped (a failing test leaves nothing running).
pub struct ServeProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl ServeProcess {
    /// Starts `regcache serve` for `up` (its CDN allowed) with its cache in `cache` and the
    /// `extra` flags, logging at info to `log` (or nowhere), and waits until it accepts
    /// connections.
    pub async fn start(
        up: &super::FakeUpstream,
        cache: &std::path::Path,
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> ServeProcess {
        Self::start_env(up, cache, extra, log, &[]).await
    }

    /// [`ServeProcess::start`] with `env` set in the child (`REGCACHE_LOG` may be among them)
    /// and every proxy variable of the test's own environment removed.
    pub async fn start_env(
        up: &super::FakeUpstream,
        cache: &std::path::Path,
        extra: &[&str],
        log: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> ServeProcess {
        let (url, cdn) = (up.url(), up.cdn.to_string());
        let cache = cache.to_str().expect("utf-8 cache path");
        let mut args = vec![
            "--upstream",
            &url,
            "--redirect-host",
            &cdn,
            "--cache-dir",
            cache,
        ];
        args.extend_from_slice(extra);
        Self::spawn(&args, log, env).await
    }

    /// `regcache serve --listen 127.0.0.1:<free port> <args>` with `env` set (after
    /// `REGCACHE_LOG=info` and every proxy variable emptied, so the test machine's own proxy
    /// settings never leak in), stderr to `log`; waits until it accepts connections.
    pub async fn spawn(
        args: &[&str],
        log: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> ServeProcess {
        let port = super::proc::free_port();
        let stderr = match log {
            Some(p) => std::process::Stdio::from(std::fs::File::create(p).expect("log file")),
            None => std::process::Stdio::null(),
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("REGCACHE_LOG", "info")
            .env_remove("REQUEST_METHOD")
            .envs(regcache::upstream::proxy::PROXY_ENV.map(|k| (k, "")))
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start regcache");
        let p = ServeProcess { child, port };
        super::eventually_async("regcache accepts connections", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        p
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it now (SIGKILL: nothing is cleaned up, as after a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `regcache check-config` on `toml` (written to a temp file; cache in a temp dir): whether it
/// passed, and what it wrote to stderr (problems, warnings).
pub fn check_config(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("regcache.toml");
    std::fs::write(&cfg, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("check-config")
        .arg("--config")
        .arg(&cfg)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env_remove("REGCACHE_CONFIG")
        .output()
        .expect("run regcache check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
