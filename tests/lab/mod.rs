//! The end-to-end test lab: a Docker-Hub-like upstream (distribution 2.8 with token auth and
//! CDN redirects), test images pushed to it, the mirror under test, and real clients
//! (dockerd, containerd/ctr, skopeo), all on loopback, all started and stopped by the test.
//!
//! Environment:
//! - `REGCACHE_E2E=require`: a missing tool (or not being root) fails instead of skipping.
//! - `REGCACHE_E2E=skip`: skip the e2e tests.
//! - `REGCACHE_E2E_MIRROR=direct`: point the clients at the upstream registry (lab check).
//! - `REGCACHE_E2E_KEEP=1`: keep the lab directory (logs, configs, caches) after the run.
//!
//! [`LabOptions`] add, for the scenarios of `tests/e2e_*.rs`: fault proxies between regcache
//! and the upstream ([`faults`]), a second (private) registry standing in for ghcr.io, a
//! middle regcache tier, and protected HTTPS listeners on the mirror ([`protected`]). Those need
//! regcache (not direct mode).

#![allow(dead_code)]

pub mod clients;
pub mod faults;
pub mod http;
pub mod images;
pub mod mirror;
pub mod proc;
pub mod protected;
pub mod pulls;
pub mod tier;
pub mod token;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use proc::say;

use clients::{Containerd, Dockerd, Skopeo};
use images::TestImage;
use mirror::{Mirror, MirrorKind, RegcacheSpec};
use protected::Protected;
use token::{TokenOptions, TokenServer};
use upstream::{Mark, Upstream};

/// Token lifetime handed out by the token server: short on purpose, so that pulls outlive
/// their tokens and every client of the upstream (the mirror) has to refresh.
pub const TOKEN_TTL_SECS: u64 = 5;

/// The registry name clients use for the second upstream (the ghcr.io stand-in).
pub const SECOND_REGISTRY: &str = "ghcr.io";
/// Its token service.
pub const SECOND_SERVICE: &str = "ghcr.e2e.test";
/// The user regcache authenticates as at the second registry's token server.
pub const SECOND_PULLER: &str = "ghcr-puller";

/// What to start besides the standard lab (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// Fault proxies in front of the registry and the CDN: regcache's upstream URL is the
    /// registry's proxy and the registry redirects blob GETs to the CDN's proxy.
    pub fault_proxies: bool,
    /// A second registry ([`SECOND_REGISTRY`]) holding `org/e2e-other:v1`, private: its token
    /// server issues pull tokens only for Basic credentials, which the mirror gets from its
    /// config file (`[registries."ghcr.io"]` with `username` and `password_file`).
    pub second_registry: bool,
    /// A middle regcache between the mirror and the registry (two tiers): the mirror's
    /// default upstream is the middle one.
    pub chain: bool,
    /// More `regcache serve` flags for the mirror the clients use.
    pub mirror_args: Vec<String>,
    /// `--tag-ttl` of the mirror the clients use (default `0s`).
    pub mirror_tag_ttl: Option<String>,
    /// `REGCACHE_LOG` of every regcache in the lab (default `info`).
    pub log_filter: Option<String>,
    /// Protected HTTPS listeners on the mirror besides its plain one ([`protected`]): client
    /// certificates, Basic credentials, either; two more on the host's non-loopback address
    /// for dockerd. The mirror's config file gets `[[listeners]]`.
    pub protected_listeners: bool,
    /// Only the upstream (token server, registry, CDN) with the test images pushed: no mirror,
    /// no dockerd, no containerd. For scenarios that start their own regcaches (the site tier
    /// of `tests/e2e_tier.rs`).
    pub upstream_only: bool,
}

impl LabOptions {
    fn needs_regcache(&self) -> bool {
        self.fault_proxies
            || self.second_registry
            || self.chain
            || !self.mirror_args.is_empty()
            || self.mirror_tag_ttl.is_some()
            || self.protected_listeners
            || self.upstream_only
    }
}

/// The second, private registry (ghcr.io stand-in).
pub struct SecondRegistry {
    pub upstream: Upstream,
    pub tokens: TokenServer,
    pub puller_password: String,
    pub push_creds: String,
    pub images: Vec<TestImage>,
    /// Upstream log position right after its images were pushed.
    pub after_push: Mark,
}

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

/// Checks that the lab can run here. Returns the tools, or None after printing why the
/// test is skipped. With `REGCACHE_E2E=require` a missing prerequisite panics instead.
pub fn preflight(test: &str) -> Option<Tools> {
    preflight_inner(test, false)
}

/// [`preflight`] for tests about regcache itself: also skipped (with a message, even under
/// `REGCACHE_E2E=require`) in `REGCACHE_E2E_MIRROR=direct` mode, which has no mirror.
pub fn preflight_regcache(test: &str) -> Option<Tools> {
    preflight_inner(test, true)
}

fn preflight_inner(test: &str, needs_regcache: bool) -> Option<Tools> {
    let mode = std::env::var("REGCACHE_E2E").unwrap_or_default();
    let required = mode == "require";
    if matches!(mode.as_str(), "skip" | "off" | "0") {
        say(format!("SKIP {test}: REGCACHE_E2E={mode}"));
        return None;
    }
    if needs_regcache && MirrorKind::from_env() == MirrorKind::Direct {
        say(format!(
            "SKIP {test}: REGCACHE_E2E_MIRROR=direct (this test is about regcache itself)"
        ));
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
    if !proc::is_root() {
        return skip(
            "not running as root (dockerd and containerd need it); run `scripts/test-all` as root"
                .into(),
        );
    }
    let find = |bin: &str, package: &str| -> Result<PathBuf, String> {
        proc::which(bin).ok_or_else(|| {
            format!("{bin} not found (Debian package {package}); run `scripts/test-all` as root to install it")
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
    /// The second registry ([`LabOptions::second_registry`]).
    pub second: Option<SecondRegistry>,
    /// The middle regcache tier ([`LabOptions::chain`]).
    pub middle: Option<Mirror>,
    /// The mirror's protected listeners ([`LabOptions::protected_listeners`]).
    pub protected: Option<Protected>,
    pub options: LabOptions,
    pub skopeo: Skopeo,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    started: Instant,
}

impl Lab {
    pub fn start(tools: Tools) -> Lab {
        Lab::start_with(tools, LabOptions::default())
    }

    pub fn start_with(tools: Tools, options: LabOptions) -> Lab {
        let started = Instant::now();
        let kind = MirrorKind::from_env();
        assert!(
            kind == MirrorKind::Regcache || !options.needs_regcache(),
            "these lab options need regcache (use lab::preflight_regcache)"
        );
        let dir = tempfile::Builder::new()
            .prefix("regcache-e2e.")
            .tempdir()
            .expect("create lab temp dir");
        let root = dir.path().to_owned();
        say(format!("lab directory {}", root.display()));
        // Build the images while the daemons start (a few seconds in a debug build).
        let images_thread = {
            let root = root.clone();
            let second = options.second_registry;
            std::thread::spawn(move || {
                let t = Instant::now();
                let mut imgs = images::build_test_images(&root);
                if second {
                    imgs.push(images::build_other_image(&root));
                }
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
            second: None,
            middle: None,
            protected: None,
            options: options.clone(),
            dir: Some(dir),
            root,
            started,
        };
        // Against regcache the registry enforces the 5 s lifetime; dockerd and containerd
        // talking to it directly (direct mode) assume tokens live at least 60 s.
        let tokens = TokenServer::start(&lab.root, TOKEN_TTL_SECS, kind == MirrorKind::Regcache);
        lab.push_creds = format!("{}:{}", token::PUSHER, tokens.pusher_password);
        let upstream = Upstream::start_with(
            &lab.root,
            &lab.tools.registry,
            &lab.tools.nginx,
            &tokens,
            options.fault_proxies,
        );
        let registry = upstream.registry_addr;
        let upstream_url = upstream.mirror_url();
        let redirect_hosts = upstream.redirect_hosts.clone();
        lab.tokens = Some(tokens);
        lab.upstream = Some(upstream);

        if options.second_registry {
            lab.second = Some(lab.start_second_registry());
        }
        if options.chain {
            let mut spec = lab.regcache_spec("middle tier", "regcache-middle", &options);
            spec.upstream = Some(upstream_url.clone());
            spec.redirect_hosts = redirect_hosts.clone();
            lab.middle = Some(Mirror::start_regcache(spec));
        }

        let mirror = if options.upstream_only {
            None
        } else if kind == MirrorKind::Direct {
            Some(Mirror::start(kind, &lab.root, registry))
        } else {
            Some(lab.start_mirror(&options, upstream_url, redirect_hosts))
        };
        if let Some(mirror) = mirror {
            let mirror_addr = mirror.addr;
            lab.mirror = Some(mirror);
            let containerd = Containerd::start(&lab.root, &lab.tools, mirror_addr);
            let socket = containerd.socket.clone();
            lab.containerd = Some(containerd);
            lab.dockerd = Some(Dockerd::start(&lab.root, &lab.tools, &socket, mirror_addr));
        }
        lab.finish_start(images_thread)
    }

    /// The mirror the clients use (regcache), as `options` say.
    fn start_mirror(
        &mut self,
        options: &LabOptions,
        upstream_url: String,
        redirect_hosts: Vec<String>,
    ) -> Mirror {
        let lab = self;
        {
            let mut spec = lab.regcache_spec("mirror", "regcache", options);
            spec.upstream = Some(match &lab.middle {
                Some(m) => format!("http://{}", m.addr),
                None => upstream_url,
            });
            if lab.middle.is_none() {
                spec.redirect_hosts = redirect_hosts;
            }
            if let Some(ttl) = &options.mirror_tag_ttl {
                spec.tag_ttl = ttl.clone();
            }
            spec.extra_args = options.mirror_args.clone();
            let mut config = Vec::new();
            if let Some(second) = &lab.second {
                config.push(lab.second_registry_config(second));
            }
            if options.protected_listeners {
                let p = Protected::create(&lab.root);
                config.push(p.listeners_toml(spec.addr));
                spec.listen_in_config = true;
                lab.protected = Some(p);
            }
            if !config.is_empty() {
                spec.config = Some(lab.write_mirror_config(&config));
            }
            Mirror::start_regcache(spec)
        }
    }

    /// Waits for the test images, pushes them (and the second registry's), checks the token
    /// lifetime, marks the upstream logs.
    fn finish_start(mut self, images_thread: std::thread::JoinHandle<Vec<TestImage>>) -> Lab {
        let lab = &mut self;
        let (second_imgs, imgs): (Vec<TestImage>, Vec<TestImage>) = images_thread
            .join()
            .expect("image build thread panicked")
            .into_iter()
            .partition(|i| i.repo == images::OTHER_REPO);
        if let Some(second) = lab.second.as_mut() {
            second.images = second_imgs;
        }
        lab.images = imgs;
        step("push test images upstream with skopeo", || {
            lab.push_images()
        });
        if lab.second.is_some() {
            step("push the second registry's images with skopeo", || {
                lab.push_second_images()
            });
        }
        lab.check_token_expiry();
        lab.after_push = lab.upstream().mark();
        say(format!(
            "lab up in {:.1}s",
            lab.started.elapsed().as_secs_f64()
        ));
        self
    }

    /// A regcache of the lab, "regcache (<role>)", with its cache in `<stem>-cache` and its log
    /// in `<stem>.log` under the lab's root, logging at the options' filter.
    fn regcache_spec(&self, role: &str, stem: &str, options: &LabOptions) -> RegcacheSpec {
        let mut spec = RegcacheSpec::new(
            &format!("regcache ({role})"),
            &self.root,
            &format!("{stem}-cache"),
            &format!("{stem}.log"),
        );
        spec.log_filter = options.log_filter.clone();
        spec
    }

    /// Starts the ghcr.io stand-in: its own token server (pull needs credentials), registry
    /// and CDN, under `<lab>/ghcr`.
    fn start_second_registry(&self) -> SecondRegistry {
        let dir = self.root.join("ghcr");
        std::fs::create_dir_all(&dir).expect("create second registry dir");
        let puller_password = format!("ghcr-pw-{}", std::process::id());
        let tokens = TokenServer::start_with(
            &dir,
            TOKEN_TTL_SECS,
            true,
            TokenOptions {
                service: SECOND_SERVICE.to_owned(),
                puller: Some((SECOND_PULLER.to_owned(), puller_password.clone())),
            },
        );
        let upstream = Upstream::start_with(
            &dir,
            &self.tools.registry,
            &self.tools.nginx,
            &tokens,
            false,
        );
        SecondRegistry {
            push_creds: format!("{}:{}", token::PUSHER, tokens.pusher_password),
            upstream,
            tokens,
            puller_password,
            images: Vec::new(),
            after_push: Mark::default(),
        }
    }

    /// The mirror's config file `regcache.toml`, of `parts`.
    fn write_mirror_config(&self, parts: &[String]) -> PathBuf {
        let path = self.root.join("regcache.toml");
        let text = parts.join("\n");
        std::fs::write(&path, &text).expect("write regcache.toml");
        say(format!("regcache config {}:\n{text}", path.display()));
        path
    }

    /// The mirror's config for the second registry: per-registry URL and credentials (its
    /// password file is written now).
    fn second_registry_config(&self, second: &SecondRegistry) -> String {
        use std::os::unix::fs::PermissionsExt;
        let password_file = self.root.join("ghcr-password");
        std::fs::write(&password_file, format!("{}\n", second.puller_password))
            .expect("write ghcr password file");
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod ghcr password file");
        format!(
            "# regcache e2e: a second registry with its own credentials\n\
             [registries.\"{SECOND_REGISTRY}\"]\n\
             url = \"http://{}\"\n\
             redirect_hosts = {:?}\n\
             username = \"{SECOND_PULLER}\"\n\
             password_file = \"{}\"\n",
            second.upstream.registry_addr,
            second.upstream.redirect_hosts,
            password_file.display()
        )
    }

    fn push_second_images(&mut self) {
        let second = self.second.as_ref().expect("second registry");
        let registry = second.upstream.registry_addr;
        for img in &second.images {
            let dest = format!("{registry}/{}:{}", img.repo, img.tag);
            self.skopeo.push_layout(
                &img.layout,
                &img.tag,
                &dest,
                &second.push_creds,
                img.is_multi(),
            );
            let raw = self
                .skopeo
                .inspect_raw_creds(&dest, Some(&second.push_creds));
            assert_eq!(
                images::sha256_digest(&raw),
                img.digest(),
                "upstream manifest digest of {dest} differs from the one built"
            );
            say(format!("pushed {dest} = {}", img.digest()));
        }
        let mark = second.upstream.mark();
        self.second.as_mut().expect("second registry").after_push = mark;
    }

    pub fn second(&self) -> &SecondRegistry {
        self.second
            .as_ref()
            .expect("lab started with a second registry")
    }

    pub fn middle(&self) -> &Mirror {
        self.middle
            .as_ref()
            .expect("lab started with a middle tier")
    }

    pub fn protected(&self) -> &Protected {
        self.protected
            .as_ref()
            .expect("lab started with protected listeners")
    }

    pub fn mirror_mut(&mut self) -> &mut Mirror {
        self.mirror.as_mut().expect("mirror running")
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
            .chain(self.second.iter().flat_map(|s| s.images.iter()))
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
        if let Some(m) = self.middle.as_mut() {
            m.assert_alive();
        }
        if let Some(s) = self.second.as_mut() {
            s.upstream.assert_alive();
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
        if let Some(m) = &self.middle {
            if let Some(l) = &m.log {
                v.push(("regcache middle tier".to_owned(), l.clone()));
            }
        }
        if let Some(u) = &self.upstream {
            v.push(("registry".to_owned(), u.registry_log.clone()));
            v.push(("nginx access".to_owned(), u.cdn_access_log.clone()));
            v.push(("nginx error".to_owned(), u.cdn_error_log.clone()));
            for p in u.registry_front.iter().chain(u.cdn_front.iter()) {
                v.push((format!("fault proxy {}", p.name), p.log.clone()));
            }
        }
        v.push(("token server".to_owned(), self.root.join("token.log")));
        if let Some(s) = &self.second {
            v.push((
                "ghcr.io registry".to_owned(),
                s.upstream.registry_log.clone(),
            ));
            v.push((
                "ghcr.io nginx access".to_owned(),
                s.upstream.cdn_access_log.clone(),
            ));
            v.push(("ghcr.io token server".to_owned(), s.tokens.log_path.clone()));
        }
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
        drop(self.middle.take());
        drop(self.upstream.take());
        drop(self.second.take());
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

/// The message of a caught panic.
pub fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic".to_owned())
}

/// Runs a scenario's checks one after the other, each to its end even when an earlier one
/// failed, and reports them all: [`Findings::finish`] fails the test if any failed.
pub struct Findings {
    test: String,
    results: Vec<(String, Result<f64, String>)>,
}

impl Findings {
    pub fn new(test: &str) -> Findings {
        Findings {
            test: test.to_owned(),
            results: Vec::new(),
        }
    }

    /// Runs `f` as a named check; a panic inside is recorded as this check's failure.
    pub fn check<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> Option<T> {
        say(format!("--- {name}"));
        let started = Instant::now();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let secs = started.elapsed().as_secs_f64();
        match out {
            Ok(v) => {
                say(format!("--- {name}: ok in {secs:.1}s"));
                self.results.push((name.to_owned(), Ok(secs)));
                Some(v)
            }
            Err(e) => {
                let msg = panic_message(&*e);
                say(format!("--- {name}: FAILED after {secs:.1}s: {msg}"));
                self.results.push((name.to_owned(), Err(msg)));
                None
            }
        }
    }

    /// Records a failure found without a panic.
    pub fn fail(&mut self, name: &str, message: String) {
        say(format!("--- {name}: FAILED: {message}"));
        self.results.push((name.to_owned(), Err(message)));
    }

    pub fn failed(&self) -> usize {
        self.results.iter().filter(|(_, r)| r.is_err()).count()
    }

    /// Prints the summary; panics (failing the test) if any check failed.
    pub fn finish(self) {
        let mut summary = format!("{} summary:\n", self.test);
        for (name, r) in &self.results {
            match r {
                Ok(secs) => summary.push_str(&format!("  ok     {secs:6.1}s  {name}\n")),
                Err(_) => summary.push_str(&format!("  FAILED          {name}\n")),
            }
        }
        say(&summary);
        let failures: Vec<String> = self
            .results
            .iter()
            .filter_map(|(name, r)| r.as_ref().err().map(|m| format!("=== {name}:\n{m}")))
            .collect();
        if !failures.is_empty() {
            panic!(
                "{}: {} of {} checks failed:\n{}",
                self.test,
                failures.len(),
                self.results.len(),
                failures.join("\n")
            );
        }
    }
}
