//! Real clients: containerd + ctr, dockerd + docker CLI (on that containerd), skopeo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::proc::{self, Daemon};
use super::Tools;

pub const PULL_TIMEOUT: Duration = Duration::from_secs(240);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- containerd / ctr

pub struct Containerd {
    pub socket: PathBuf,
    /// Holds `docker.io/hosts.toml` pointing at the mirror.
    pub hosts_dir: PathBuf,
    /// containerd's own directory (config, root, state, hosts dirs).
    pub dir: PathBuf,
    pub namespace: String,
    ctr: PathBuf,
    pub daemon: Daemon,
}

impl Containerd {
    /// Starts containerd with its own root, state and socket under `dir`, and writes a
    /// `hosts_dir/docker.io/hosts.toml` that sends docker.io pulls to `mirror`.
    pub fn start(dir: &Path, tools: &Tools, mirror: SocketAddr) -> Containerd {
        let dir = dir.join("containerd");
        for sub in ["root", "state", "opt"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create containerd dirs");
        }
        let socket = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
# CRI is not needed for ctr/dockerd and wants CNI and more.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            opt = dir.join("opt").display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config.toml");

        let hosts_dir = dir.join("certs.d");
        std::fs::create_dir_all(hosts_dir.join("docker.io")).expect("create hosts dir");
        std::fs::write(
            hosts_dir.join("docker.io/hosts.toml"),
            format!(
                "server = \"https://registry-1.docker.io\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .expect("write hosts.toml");

        let mut daemon = Daemon::spawn(
            "containerd",
            Command::new(&tools.containerd)
                .arg("--config")
                .arg(&config_path),
            &dir.join("containerd.log"),
            Duration::from_secs(15),
        );
        let ctr = tools.ctr.clone();
        let sock = socket.clone();
        daemon.wait_ready(Duration::from_secs(30), || {
            sock.exists()
                && proc::run(
                    Command::new(&ctr).arg("-a").arg(&sock).arg("version"),
                    Duration::from_secs(10),
                )
                .ok()
        });
        Containerd {
            socket,
            hosts_dir,
            dir,
            namespace: "test".into(),
            ctr: tools.ctr.clone(),
            daemon,
        }
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new(&self.ctr);
        c.arg("-a").arg(&self.socket).arg("-n").arg(&self.namespace);
        c
    }

    /// `ctr images pull --hosts-dir DIR [--all-platforms] REF`.
    pub fn pull(&self, reference: &str, all_platforms: bool) -> proc::Output {
        let mut c = self.ctr();
        c.args(["images", "pull", "--hosts-dir"])
            .arg(&self.hosts_dir);
        if all_platforms {
            c.arg("--all-platforms");
        }
        c.arg(reference);
        proc::run_ok(&mut c, PULL_TIMEOUT)
    }

    /// Writes another hosts directory, `<containerd dir>/<name>/<registry>/hosts.toml` for
    /// each `(registry, mirror)` (registry `_default` applies to every registry without its
    /// own directory), and returns it.
    pub fn write_hosts_dir(&self, name: &str, entries: &[(&str, SocketAddr)]) -> PathBuf {
        let dir = self.dir.join(name);
        for (registry, mirror) in entries {
            std::fs::create_dir_all(dir.join(registry)).expect("create hosts dir");
            std::fs::write(
                dir.join(registry).join("hosts.toml"),
                format!("[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
            )
            .expect("write hosts.toml");
        }
        dir
    }

    /// Writes `<containerd dir>/<name>/<registry>/hosts.toml` with `text` and returns the
    /// hosts directory `<containerd dir>/<name>`.
    pub fn write_hosts_toml(&self, name: &str, registry: &str, text: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(dir.join(registry)).expect("create hosts dir");
        std::fs::write(dir.join(registry).join("hosts.toml"), text).expect("write hosts.toml");
        dir
    }

    /// `ctr images pull --hosts-dir DIR [--all-platforms | --platform P] REF` with a deadline;
    /// the caller checks the outcome.
    pub fn try_pull(
        &self,
        hosts_dir: &Path,
        reference: &str,
        all_platforms: bool,
        platform: Option<&str>,
        timeout: Duration,
    ) -> proc::Output {
        let mut c = self.ctr();
        c.args(["images", "pull", "--hosts-dir"]).arg(hosts_dir);
        if all_platforms {
            c.arg("--all-platforms");
        }
        if let Some(p) = platform {
            c.args(["--platform", p]);
        }
        c.arg(reference);
        proc::run(&mut c, timeout)
    }

    /// Removes every image and all content (so the next pull fetches everything again).
    pub fn remove_everything(&self) {
        let refs = proc::run_ok(self.ctr().args(["images", "ls", "-q"]), CMD_TIMEOUT);
        let refs: Vec<&str> = refs.stdout.split_whitespace().collect();
        if !refs.is_empty() {
            proc::run_ok(
                self.ctr().args(["images", "rm", "--sync"]).args(&refs),
                CMD_TIMEOUT,
            );
        }
        let left = proc::run_ok(self.ctr().args(["content", "ls", "-q"]), CMD_TIMEOUT);
        let left: Vec<&str> = left.stdout.split_whitespace().collect();
        if !left.is_empty() {
            proc::run_ok(self.ctr().args(["content", "rm"]).args(&left), CMD_TIMEOUT);
        }
    }

    /// Target digest of an image, from `ctr images ls`.
    pub fn image_digest(&self, reference: &str) -> Option<String> {
        let out = proc::run_ok(self.ctr().args(["images", "ls"]), CMD_TIMEOUT);
        out.stdout.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&reference))
                .then(|| cols.get(2).map(|d| (*d).to_owned()))
                .flatten()
        })
    }

    /// Removes the images and garbage-collects their content and snapshots, so that the next
    /// pull has to fetch every blob again.
    pub fn remove_all(&self, references: &[String]) {
        let mut c = self.ctr();
        c.args(["images", "rm", "--sync"]).args(references);
        proc::run_ok(&mut c, CMD_TIMEOUT);
        let left = proc::run_ok(self.ctr().args(["content", "ls", "-q"]), CMD_TIMEOUT);
        let left: Vec<&str> = left.stdout.split_whitespace().collect();
        if !left.is_empty() {
            proc::say(format!(
                "ctr: {} content blobs survived image removal; removing them",
                left.len()
            ));
            proc::run_ok(self.ctr().args(["content", "rm"]).args(&left), CMD_TIMEOUT);
        }
        let left = proc::run_ok(self.ctr().args(["content", "ls", "-q"]), CMD_TIMEOUT);
        assert!(
            left.stdout.trim().is_empty(),
            "containerd content store not empty after cleanup:\n{}",
            left.stdout
        );
    }
}

// ---------------------------------------------------------------- dockerd / docker

pub struct Dockerd {
    pub host: String,
    docker: PathBuf,
    /// The CLI's `DOCKER_CONFIG` directory (its `config.json` holds `docker login` entries).
    pub cli_config: PathBuf,
    /// daemon.json, as written.
    config_path: PathBuf,
    config: serde_json::Value,
    pub daemon: Daemon,
}

impl Dockerd {
    /// Starts dockerd beside `containerd` with `registry-mirrors: [mirror]`.
    pub fn start(dir: &Path, tools: &Tools, containerd: &Path, mirror: SocketAddr) -> Dockerd {
        let dir = dir.join("docker");
        for sub in ["data", "exec", "cli"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create docker dirs");
        }
        let socket = dir.join("docker.sock");
        let host = format!("unix://{}", socket.display());
        let config = serde_json::json!({
            "registry-mirrors": [format!("http://{mirror}")],
            "iptables": false,
            "ip6tables": false,
            "bridge": "none",
            "storage-driver": "vfs",
            "data-root": dir.join("data"),
            "exec-root": dir.join("exec"),
            "pidfile": dir.join("docker.pid"),
            "hosts": [host],
            "containerd": containerd,
            // Keeps dockerd 20.10 from writing /etc/docker/key.json.
            "deprecated-key-path": dir.join("key.json"),
            "log-level": "debug",
            // One layer at a time: with the CDN's rate limit the pull of e2e-single outlives
            // the upstream token, so a mirror must refresh it in the middle of a pull.
            "max-concurrent-downloads": 1,
        });
        let config_path = dir.join("daemon.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).expect("serialize daemon.json"),
        )
        .expect("write daemon.json");
        let mut daemon = Daemon::spawn(
            "dockerd",
            Command::new(&tools.dockerd)
                .arg("--config-file")
                .arg(&config_path),
            &dir.join("dockerd.log"),
            Duration::from_secs(20),
        );
        let cli_config = dir.join("cli");
        let docker = tools.docker.clone();
        daemon.wait_ready(Duration::from_secs(60), || {
            socket.exists()
                && proc::run(
                    docker_command(&docker, &host, &cli_config).arg("version"),
                    Duration::from_secs(10),
                )
                .ok()
        });
        Dockerd {
            host,
            docker,
            cli_config,
            config_path,
            config,
            daemon,
        }
    }

    /// Rewrites daemon.json with `registry-mirrors: mirrors` and reloads dockerd (SIGHUP;
    /// dockerd reloads its registry mirrors live), waiting until `docker info` shows them.
    pub fn set_registry_mirrors(&mut self, mirrors: &[String]) {
        self.config["registry-mirrors"] = serde_json::json!(mirrors);
        std::fs::write(
            &self.config_path,
            serde_json::to_vec_pretty(&self.config).expect("serialize daemon.json"),
        )
        .expect("write daemon.json");
        self.daemon.signal("HUP");
        // `docker info` prints each mirror with a trailing slash.
        let want: Vec<String> = mirrors
            .iter()
            .map(|m| format!("{}/", m.trim_end_matches('/')))
            .collect();
        let started = std::time::Instant::now();
        loop {
            let out = proc::run(
                self.docker()
                    .args(["info", "--format", "{{json .RegistryConfig.Mirrors}}"]),
                CMD_TIMEOUT,
            );
            let got: Vec<String> = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
            if got == want {
                proc::say(format!("dockerd registry-mirrors now {got:?}"));
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "dockerd did not reload registry-mirrors {want:?} (docker info: {}); log:\n{}",
                out.stdout.trim(),
                proc::tail(&self.daemon.log, 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn docker(&self) -> Command {
        docker_command(&self.docker, &self.host, &self.cli_config)
    }

    /// `docker pull REF` with a deadline; the caller checks the outcome.
    pub fn try_pull(&self, reference: &str, timeout: Duration) -> proc::Output {
        let mut cmd = self.docker();
        cmd.arg("pull").arg(reference);
        proc::run(&mut cmd, timeout)
    }

    /// `docker rmi -f` of every image there is.
    pub fn remove_everything(&self) {
        let ids = proc::run_ok(self.docker().args(["images", "-aq"]), CMD_TIMEOUT);
        let mut ids: Vec<&str> = ids.stdout.split_whitespace().collect();
        ids.sort();
        ids.dedup();
        if !ids.is_empty() {
            proc::run_ok(self.docker().args(["rmi", "-f"]).args(&ids), CMD_TIMEOUT);
        }
    }

    pub fn pull(&self, reference: &str) -> proc::Output {
        let mut cmd = self.docker();
        cmd.arg("pull").arg(reference);
        let out = proc::run(&mut cmd, PULL_TIMEOUT);
        assert!(
            out.ok(),
            "`docker pull {reference}` failed ({}).\nNote: when the mirror answers with an error, \
             dockerd falls back to registry-1.docker.io, so the message below may be about \
             that host; the mirror's log (printed below) has the failed request.\n\
             stdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out
    }

    /// `docker images --digests`: (repository, tag, digest) rows.
    pub fn images_digests(&self) -> Vec<(String, String, String)> {
        let out = proc::run_ok(
            self.docker().args([
                "images",
                "--digests",
                "--format",
                "{{.Repository}} {{.Tag}} {{.Digest}}",
            ]),
            CMD_TIMEOUT,
        );
        out.stdout
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((
                    it.next()?.to_owned(),
                    it.next()?.to_owned(),
                    it.next()?.to_owned(),
                ))
            })
            .collect()
    }

    pub fn rmi(&self, references: &[String]) {
        proc::run_ok(self.docker().arg("rmi").args(references), CMD_TIMEOUT);
        let left = proc::run_ok(self.docker().args(["images", "-aq"]), CMD_TIMEOUT);
        assert!(
            left.stdout.trim().is_empty(),
            "docker still has images after rmi: {}",
            left.stdout
        );
    }
}

fn docker_command(docker: &Path, host: &str, cli_config: &Path) -> Command {
    let mut c = Command::new(docker);
    c.env("DOCKER_HOST", host)
        .env("DOCKER_CONFIG", cli_config)
        .env("DOCKER_CLI_HINTS", "false");
    c
}

// ---------------------------------------------------------------- skopeo

pub struct Skopeo {
    bin: PathBuf,
    tmp: PathBuf,
}

impl Skopeo {
    pub fn new(dir: &Path, tools: &Tools) -> Skopeo {
        let tmp = dir.join("skopeo-tmp");
        std::fs::create_dir_all(&tmp).expect("create skopeo tmpdir");
        Skopeo {
            bin: tools.skopeo.clone(),
            tmp,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        // No policy.json or auth files from the machine: accept anything, no stored creds.
        c.arg("--insecure-policy")
            .arg("--tmpdir")
            .arg(&self.tmp)
            .env("REGISTRY_AUTH_FILE", self.tmp.join("auth.json"));
        c
    }

    /// Pushes an OCI layout to `registry` with push credentials, preserving digests.
    pub fn push_layout(&self, layout: &Path, tag: &str, dest: &str, creds: &str, all: bool) {
        let mut c = self.cmd();
        c.args(["copy", "--preserve-digests", "--retry-times", "2"]);
        if all {
            c.arg("--all");
        }
        c.args(["--dest-tls-verify=false", "--dest-creds", creds])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}"));
        proc::run_ok(&mut c, PULL_TIMEOUT);
    }

    /// `skopeo inspect --raw` of a remote reference: the manifest bytes as served.
    pub fn inspect_raw(&self, reference: &str) -> Vec<u8> {
        self.inspect_raw_creds(reference, None)
    }

    /// `skopeo inspect --raw` with `--creds U:P` (or `--no-creds`).
    pub fn inspect_raw_creds(&self, reference: &str, creds: Option<&str>) -> Vec<u8> {
        let mut c = self.cmd();
        c.args(["inspect", "--raw", "--tls-verify=false"]);
        match creds {
            Some(cr) => c.args(["--creds", cr]),
            None => c.arg("--no-creds"),
        };
        c.arg(format!("docker://{reference}"));
        let out = proc::run_ok(&mut c, CMD_TIMEOUT);
        out.stdout.into_bytes()
    }

    /// Writes a registries.conf that mirrors docker.io to `mirror_location` (e.g.
    /// `127.0.0.1:PORT/docker.io`, the path-prefix style podman/CRI-O/skopeo users configure)
    /// and returns its path.
    pub fn write_registries_conf(&self, mirror_location: &str) -> PathBuf {
        let path = self.tmp.join("registries.conf");
        std::fs::write(
            &path,
            format!(
                "unqualified-search-registries = []\n\n[[registry]]\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"{mirror_location}\"\ninsecure = true\n"
            ),
        )
        .expect("write registries.conf");
        path
    }

    /// Like [`Skopeo::write_registries_conf`] for another registry (e.g. `ghcr.io` mirrored to
    /// `127.0.0.1:PORT/ghcr.io`); the file is `registries-<registry>.conf`.
    pub fn write_registries_conf_for(&self, registry: &str, mirror_location: &str) -> PathBuf {
        let path = self.tmp.join(format!("registries-{registry}.conf"));
        std::fs::write(
            &path,
            format!(
                "unqualified-search-registries = []\n\n[[registry]]\nlocation = \"{registry}\"\n\n[[registry.mirror]]\nlocation = \"{mirror_location}\"\ninsecure = true\n"
            ),
        )
        .expect("write registries.conf");
        path
    }

    /// `skopeo --registries-conf CONF copy [--all] docker://docker.io/NAME:TAG dir:OUT`: skopeo
    /// resolves docker.io through the mirror configured there (no `ns`, maybe a path prefix).
    pub fn copy_via_registries_conf(
        &self,
        conf: &Path,
        reference: &str,
        out: &Path,
        all: bool,
    ) -> proc::Output {
        let mut c = Command::new(&self.bin);
        c.arg("--insecure-policy")
            .arg("--tmpdir")
            .arg(&self.tmp)
            .arg("--registries-conf")
            .arg(conf)
            .env("REGISTRY_AUTH_FILE", self.tmp.join("auth.json"))
            .arg("copy");
        if all {
            c.arg("--all");
        }
        c.arg("--src-no-creds")
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", out.display()));
        proc::run_ok(&mut c, PULL_TIMEOUT)
    }

    /// `skopeo copy --src-tls-verify=false docker://REF dir:OUT` with a deadline; the caller
    /// checks the outcome.
    pub fn try_copy_to_dir(&self, reference: &str, out: &Path, timeout: Duration) -> proc::Output {
        let mut c = self.cmd();
        c.arg("copy")
            .args(["--src-tls-verify=false", "--src-no-creds"])
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", out.display()));
        proc::run(&mut c, timeout)
    }

    /// `skopeo copy [--all] SRC_FLAGS... docker://REF dir:OUT` with a deadline (the flags say
    /// how to reach and authenticate to the source, e.g. `--src-cert-dir DIR`); the caller
    /// checks the outcome.
    pub fn try_copy_with(
        &self,
        src_flags: &[String],
        reference: &str,
        out: &Path,
        all: bool,
        timeout: Duration,
    ) -> proc::Output {
        let mut c = self.cmd();
        c.arg("copy");
        if all {
            c.arg("--all");
        }
        c.args(src_flags)
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", out.display()));
        proc::run(&mut c, timeout)
    }

    /// `skopeo copy [--all] --src-tls-verify=false docker://REF dir:OUT`.
    pub fn copy_to_dir(&self, reference: &str, out: &Path, all: bool) -> proc::Output {
        let mut c = self.cmd();
        c.arg("copy");
        if all {
            c.arg("--all");
        }
        c.args(["--src-tls-verify=false", "--src-no-creds"])
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", out.display()));
        proc::run_ok(&mut c, PULL_TIMEOUT)
    }
}
