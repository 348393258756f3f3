//! The end-to-end test lab: a Docker-Hub-like upstream (distribution 2.8 with token auth and
//! CDN redirects), test images pushed to it, the mirror under test, and real clients
//! (dockerd, containerd/ctr, skopeo), all on loopback, all started and stopped by the test.
//!
//! Environment:
//! - `REGCACHE_E2E=require`: a missing tool (or not being root) fails instead of skipping.
//! - `REGCACHE_E2E=skip`: skip the e2e tests.
//! - `REGCACHE_E2E_MIRROR=direct`: point the clients at the upstream registry (lab check).
//! - `REGCACHE_E2E_KEEP=1`: keep the lab directory (logs, configs, caches) after the run.

#![allow(dead_code)]

pub mod clients;
pub mod images;
pub mod mirror;
pub mod proc;
pub mod token;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use proc::say;

use clients::{Containerd, Dockerd, Skopeo};
use images::TestImage;
use mirror::{Mirror, MirrorKind};
use token::TokenServer;
use upstream::{Mark, Upstream};

/// Token lifetime handed out by the token server: short on purpose, so that pulls outlive
/// their tokens and every client of the upstream (the mirror) has to refresh.
pub const TOKEN_TTL_SECS: u64 = 5;

/// Paths of the external programs the lab runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub registry: PathBuf,
    pub nginx: PathBuf,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub dockerd: PathBuf,
    pub docker: PathBuf,
    pub skopeo: PathBuf,
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the effective uid of the process.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Checks that the lab can run here. Returns the tools, or None after printing why the
/// test is skipped. With `REGCACHE_E2E=require` a missing prerequisite panics instead.
pub fn preflight(test: &str) -> Option<Tools> {
    let mode = std::env::var("REGCACHE_E2E").unwrap_or_default();
    let required = mode == "require";
    if matches!(mode.as_str(), "skip" | "off" | "0") {
        say(format!("SKIP {test}: REGCACHE_E2E={mode}"));
        return None;
    }
    let skip = |reason: String| -> Option<Tools> {
        if required {
            panic!("{test}: {reason} (REGCACHE_E2E=require, so this is a failure)");
        }
        say(format!("SKIP {test}: {reason}"));
        None
    };
    if !cfg!(target_os = "linux") {
        return skip("the lab needs Linux".into());
    }
    if !is_root() {
        return skip(
            "not running as root (dockerd and containerd need it); run `sudo scripts/test-all`"
                .into(),
        );
    }
    let find = |bin: &str, package: &str| -> Result<PathBuf, String> {
        proc::which(bin).ok_or_else(|| {
            format!("{bin} not found (Debian package {package}); run `sudo scripts/test-all` to install it")
        })
    };
    // Prefer Debian's docker CLI, which matches Debian's dockerd, over any other on PATH.
    let docker = if Path::new("/usr/bin/docker").exists() {
        Ok(PathBuf::from("/usr/bin/docker"))
    } else {
        find("docker", "docker.io")
    };
    let tools = (|| {
        Ok::<_, String>(Tools {
            registry: find("docker-registry", "docker-registry")?,
            nginx: find("nginx", "nginx-light")?,
            containerd: find("containerd", "containerd")?,
            ctr: find("ctr", "containerd")?,
            dockerd: find("dockerd", "docker.io")?,
            docker: docker?,
            skopeo: find("skopeo", "skopeo")?,
        })
    })();
    match tools {
        Ok(t) => Some(t),
        Err(reason) => skip(reason),
    }
}

/// Runs a named step, printing its wall time.
pub fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    say(format!("--- {name}"));
    let started = Instant::now();
    let out = f();
    say(format!(
        "--- {name}: ok in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    out
}

/// Everything the e2e scenarios need, started once. Dropping it stops every process
/// (clients first, then the mirror, then the upstream), unmounts anything left below the lab
/// directory and removes it (unless `REGCACHE_E2E_KEEP` is set).
pub struct Lab {
    pub tools: Tools,
    pub images: Vec<TestImage>,
    pub push_creds: String,
    /// Upstream log position right after the test images were pushed.
    pub after_push: Mark,
    pub dockerd: Option<Dockerd>,
    pub containerd: Option<Containerd>,
    pub mirror: Option<Mirror>,
    pub upstream: Option<Upstream>,
    pub tokens: Option<TokenServer>,
    pub skopeo: Skopeo,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    started: Instant,
}

impl Lab {
    pub fn start(tools: Tools) -> Lab {
        let started = Instant::now();
        let kind = MirrorKind::from_env();
        let dir = tempfile::Builder::new()
            .prefix("regcache-e2e.")
            .tempdir()
            .expect("create lab temp dir");
        let root = dir.path().to_owned();
        say(format!("lab directory {}", root.display()));
        // Build the images while the daemons start (a few seconds in a debug build).
        let images_thread = {
            let root = root.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let imgs = images::build_test_images(&root);
                say(format!(
                    "built test images in {:.1}s: {}",
                    t.elapsed().as_secs_f64(),
                    imgs.iter()
                        .map(|i| format!(
                            "{}:{} {} ({} blobs, {:.1} MiB)",
                            i.repo,
                            i.tag,
                            i.digest(),
                            i.all_blobs().len(),
                            i.total_bytes() as f64 / 1048576.0
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                imgs
            })
        };
        let mut lab = Lab {
            skopeo: Skopeo::new(&root, &tools),
            tools,
            images: Vec::new(),
            push_creds: String::new(),
            after_push: Mark::default(),
            dockerd: None,
            containerd: None,
            mirror: None,
            upstream: None,
            tokens: None,
            dir: Some(dir),
            root,
            started,
        };
        // Against regcache the registry enforces the 5 s lifetime; dockerd and containerd
        // talking to it directly (direct mode) assume tokens live at least 60 s.
        let tokens = TokenServer::start(&lab.root, TOKEN_TTL_SECS, kind == MirrorKind::Regcache);
        lab.push_creds = format!("{}:{}", token::PUSHER, tokens.pusher_password);
        let upstream = Upstream::start(&lab.root, &lab.tools.registry, &lab.tools.nginx, &tokens);
        let registry = upstream.registry_addr;
        lab.tokens = Some(tokens);
        lab.upstream = Some(upstream);

        let mirror = Mirror::start(kind, &lab.root, registry);
        let mirror_addr = mirror.addr;
        lab.mirror = Some(mirror);
        let containerd = Containerd::start(&lab.root, &lab.tools, mirror_addr);
        let socket = containerd.socket.clone();
        lab.containerd = Some(containerd);
        lab.dockerd = Some(Dockerd::start(&lab.root, &lab.tools, &socket, mirror_addr));

        lab.images = images_thread.join().expect("image build thread panicked");
        step("push test images upstream with skopeo", || {
            lab.push_images()
        });
        lab.check_token_expiry();
        lab.after_push = lab.upstream().mark();
        say(format!(
            "lab up in {:.1}s",
            lab.started.elapsed().as_secs_f64()
        ));
        lab
    }

    fn push_images(&self) {
        let registry = self.upstream().registry_addr;
        for img in &self.images {
            let dest = format!("{registry}/{}:{}", img.repo, img.tag);
            self.skopeo.push_layout(
                &img.layout,
                &img.tag,
                &dest,
                &self.push_creds,
                img.is_multi(),
            );
            let raw = self.skopeo.inspect_raw(&dest);
            let got = images::sha256_digest(&raw);
            assert_eq!(
                got,
                img.digest(),
                "upstream manifest digest of {dest} differs from the one built"
            );
            say(format!("pushed {dest} = {got}"));
        }
    }

    /// Proves that the registry enforces the token lifetime the token server advertises:
    /// a token inside its `expires_in` works, one past it gets 401.
    fn check_token_expiry(&self) {
        let registry = self.upstream().registry_addr;
        let img = &self.images[0];
        let path = format!("/v2/{}/manifests/{}", img.repo, img.tag);
        let head = |token: &str| {
            let auth = format!("Bearer {token}");
            proc::http_request(
                registry,
                "HEAD",
                &path,
                &[("Authorization", &auth), ("Accept", images::OCI_MANIFEST)],
            )
            .expect("HEAD manifest on the upstream registry")
            .0
        };
        let tokens = self.tokens();
        let fresh = head(&tokens.mint_pull_token(&img.repo, TOKEN_TTL_SECS as i64));
        let stale = head(&tokens.mint_pull_token(&img.repo, -2));
        assert_eq!(
            (fresh, stale),
            (200, 401),
            "registry token check: a live token must work and an expired one must get 401 \
             (see token::REGISTRY_LEEWAY_SECS); registry log:\n{}",
            proc::tail(&self.upstream().registry_log, 20)
        );
        say(if tokens.enforce_ttl {
            format!("registry token check ok: issued tokens die {TOKEN_TTL_SECS}s after issue (expires_in {TOKEN_TTL_SECS})")
        } else {
            format!(
                "registry token check ok: issued tokens say expires_in {TOKEN_TTL_SECS} but live {}s (direct mode)",
                TOKEN_TTL_SECS as i64 + token::REGISTRY_LEEWAY_SECS
            )
        });
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn upstream(&self) -> &Upstream {
        self.upstream.as_ref().expect("upstream running")
    }

    pub fn mirror(&self) -> &Mirror {
        self.mirror.as_ref().expect("mirror running")
    }

    pub fn mirror_addr(&self) -> SocketAddr {
        self.mirror().addr
    }

    pub fn dockerd(&self) -> &Dockerd {
        self.dockerd.as_ref().expect("dockerd running")
    }

    pub fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd running")
    }

    pub fn tokens(&self) -> &TokenServer {
        self.tokens.as_ref().expect("token server running")
    }

    pub fn image(&self, repo: &str) -> &TestImage {
        self.images
            .iter()
            .find(|i| i.repo == repo)
            .unwrap_or_else(|| panic!("no test image {repo}"))
    }

    /// Fails early, with logs, if any daemon died.
    pub fn assert_alive(&mut self) {
        if let Some(u) = self.upstream.as_mut() {
            u.assert_alive();
        }
        if let Some(m) = self.mirror.as_mut() {
            m.assert_alive();
        }
        if let Some(c) = self.containerd.as_mut() {
            c.daemon.assert_alive();
        }
        if let Some(d) = self.dockerd.as_mut() {
            d.daemon.assert_alive();
        }
    }

    /// A fresh directory inside the lab.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        if p.exists() {
            std::fs::remove_dir_all(&p).expect("remove old scratch dir");
        }
        std::fs::create_dir_all(&p).expect("create scratch dir");
        p
    }

    fn logs(&self) -> Vec<(String, PathBuf)> {
        let mut v = Vec::new();
        if let Some(m) = &self.mirror {
            if let Some(l) = &m.log {
                v.push(("regcache".to_owned(), l.clone()));
            }
        }
        if let Some(u) = &self.upstream {
            v.push(("registry".to_owned(), u.registry_log.clone()));
            v.push(("nginx access".to_owned(), u.cdn_access_log.clone()));
            v.push(("nginx error".to_owned(), u.cdn_error_log.clone()));
        }
        v.push(("token server".to_owned(), self.root.join("token.log")));
        if let Some(c) = &self.containerd {
            v.push(("containerd".to_owned(), c.daemon.log.clone()));
        }
        if let Some(d) = &self.dockerd {
            v.push(("dockerd".to_owned(), d.daemon.log.clone()));
        }
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            for (name, path) in self.logs() {
                say(format!(
                    "==== last lines of the {name} log ({}):\n{}",
                    path.display(),
                    proc::tail(&path, 40)
                ));
            }
        }
        // Clients first, then the mirror, then the upstream.
        drop(self.dockerd.take());
        drop(self.containerd.take());
        drop(self.mirror.take());
        drop(self.upstream.take());
        drop(self.tokens.take());
        proc::unmount_below(&self.root);
        let keep = std::env::var_os("REGCACHE_E2E_KEEP").is_some_and(|v| !v.is_empty());
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                say(format!(
                    "REGCACHE_E2E_KEEP: lab directory kept at {}",
                    path.display()
                ));
            } else if let Err(e) = dir.close() {
                say(format!(
                    "could not remove lab directory {}: {e}",
                    self.root.display()
                ));
            }
        }
        say(format!(
            "lab stopped after {:.1}s{}",
            self.started.elapsed().as_secs_f64(),
            if panicking { " (test failed)" } else { "" }
        ));
    }
}
