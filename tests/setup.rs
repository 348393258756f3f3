//! `regcache setup` and `regcache doctor` without real clients: every path under a scratch
//! `--root`, client versions from fake binaries first on PATH (`containerd --version` printing
//! a 2.x version), so containerd 2.0/2.1/2.2 and unknown versions are covered here; the real
//! dockerd/containerd/skopeo runs are in tests/e2e_setup.rs. BuildKit (not in Debian here) is
//! covered only here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Held for writing while a fake binary is written, for reading while a process is started:
/// a child forked while another thread holds a script open for writing would make exec of
/// that script fail with ETXTBSY ("Text file busy").
static FORK: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A directory holding fake `containerd`, `buildkitd` and `podman` printing `versions`.
fn fake_bin(dir: &Path, versions: &[(&str, &str)]) -> PathBuf {
    let _writing = FORK.write().unwrap_or_else(|p| p.into_inner());
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, out) in versions {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\necho '{out}'\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// `regcache ARGS` with `bin` first on PATH, in `root`; (exit code, stdout, stderr).
fn regcache(bin: &Path, root: &Path, args: &[&str]) -> (i32, String, String) {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _starting = FORK.read().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .arg("--root")
        .arg(root)
        .arg("--config")
        .arg("/dev/null")
        .env("PATH", path)
        .env_remove("REGCACHE_CONFIG")
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const V1: &str =
    "containerd github.com/containerd/containerd 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da";
const V20: &str = "containerd github.com/containerd/containerd/v2 v2.0.5 fb4c30d4ede3531652d86197bf3fc9515e5276d9";
const V21: &str = "containerd github.com/containerd/containerd/v2 v2.1.3 c787fb98911740dd3ff2d0e45ce88cdf01410486";
const V22: &str = "containerd github.com/containerd/containerd/v2 v2.2.0 1c4457e00facac03ce1d75f7b6777a7a851e5c41";

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn containerd_config_follows_the_version() {
    for (version, want, not) in [
        (
            V1,
            vec![
                "version = 2",
                "[plugins.\"io.containerd.grpc.v1.cri\".registry]",
            ],
            vec!["use_local_image_pull"],
        ),
        (
            V20,
            vec![
                "version = 3",
                "[plugins.\"io.containerd.cri.v1.images\".registry]",
            ],
            vec!["use_local_image_pull"],
        ),
        (
            V21,
            vec!["version = 3", "use_local_image_pull = true"],
            vec![],
        ),
        (
            V22,
            vec!["version = 3", "use_local_image_pull = true"],
            vec![":/etc/docker/certs.d"],
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let bin = fake_bin(d.path(), &[("containerd", version)]);
        let root = d.path().join("root");
        if version == V22 {
            // 2.2's `containerd config default` list (containerd#12636).
            let c = root.join("etc/containerd");
            std::fs::create_dir_all(&c).unwrap();
            std::fs::write(c.join("config.toml"), "version = 3\n# mine\n[plugins]\n  [plugins.'io.containerd.cri.v1.images']\n    [plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n").unwrap();
        }
        let (code, out, err) = regcache(
            &bin,
            &root,
            &["setup", "containerd", "--mirror", "http://127.0.0.1:5000"],
        );
        assert_eq!(code, 0, "{version}: {out}{err}");
        let config = read(root.join("etc/containerd/config.toml"));
        for w in want {
            assert!(config.contains(w), "{version}: {w:?} missing:\n{config}");
        }
        for n in not {
            assert!(!config.contains(n), "{version}: {n:?} present:\n{config}");
        }
        if version == V22 {
            assert!(config.contains("# mine"), "comments kept: {config}");
            let one = format!(
                "config_path = \"{}\"",
                root.join("etc/containerd/certs.d").display()
            );
            assert!(config.contains(&one), "one directory: {config}");
            assert!(out.contains("containerd#12636"), "{out}");
        }
        // (2.2: the config's own first config_path entry, under --root, never the real /etc.)
        let hosts = read(root.join("etc/containerd/certs.d/docker.io/hosts.toml"));
        assert!(
            hosts.contains("[host.\"http://127.0.0.1:5000\"]"),
            "{hosts}"
        );
        assert!(out.contains("systemctl restart containerd"), "{out}");
    }
}

#[test]
fn containerd_version_unknown_or_config_unusable_is_refused_with_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let bin = fake_bin(d.path(), &[("containerd", "something else entirely")]);
    let root = d.path().join("root");
    let (code, _, err) = regcache(&bin, &root, &["setup", "containerd"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot tell its version") && err.contains("printed no version"),
        "{err}"
    );
    assert!(!root.join("etc/containerd").exists(), "nothing written");
    // 2.1 with a version 2 config: use_local_image_pull needs version 3.
    let bin = fake_bin(d.path(), &[("containerd", V21)]);
    let c = root.join("etc/containerd");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("config.toml"), "version = 2\n").unwrap();
    let (code, _, err) = regcache(&bin, &root, &["setup", "containerd"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("containerd config migrate") && err.contains("spegel#1272"),
        "{err}"
    );
    assert_eq!(read(c.join("config.toml")), "version = 2\n", "untouched");
}

#[test]
fn default_host_names_no_server_and_prefix_aliases_reach_podman() {
    let d = tempfile::tempdir().unwrap();
    let bin = fake_bin(
        d.path(),
        &[("containerd", V1), ("podman", "podman version 4.3.1")],
    );
    let root = d.path().join("root");
    let cfg = d.path().join("regcache.toml");
    std::fs::write(&cfg, "[registries.\"registry.internal:5443\"]\nprefix = \"internal\"\n[registries.\"other.lan:5000\"]\n").unwrap();
    let cfg = cfg.display().to_string();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        let _starting = FORK.read().unwrap_or_else(|p| p.into_inner());
        let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args(args)
            .args(["--config", &cfg, "--root"])
            .arg(&root)
            .env("PATH", &path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&[
        "setup",
        "containerd",
        "--default-host",
        "--mirror",
        "http://127.0.0.1:5000",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let def = read(root.join("etc/containerd/certs.d/_default/hosts.toml"));
    assert!(
        !def.contains("server"),
        "_default must not name a server:\n{def}"
    );
    let hub = read(root.join("etc/containerd/certs.d/docker.io/hosts.toml"));
    assert!(
        hub.contains("server = \"https://registry-1.docker.io\""),
        "{hub}"
    );
    let internal = read(root.join("etc/containerd/certs.d/registry.internal:5443/hosts.toml"));
    assert!(
        internal.contains("server = \"https://registry.internal:5443\""),
        "{internal}"
    );
    let (code, out) = run(&["setup", "podman", "--mirror", "http://127.0.0.1:5000"]);
    assert_eq!(code, Some(0), "{out}");
    let drop_in = read(root.join("etc/containers/registries.conf.d/50-regcache.conf"));
    assert!(drop_in.contains("location = \"registry.internal:5443\"\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:5000/internal\""), "{drop_in}");
    assert!(
        drop_in.contains("location = \"127.0.0.1:5000/docker.io\""),
        "{drop_in}"
    );
    assert!(!drop_in.contains("other.lan"), "{drop_in}");
    assert!(
        out.contains("other.lan:5000 left out") && out.contains("prefix = "),
        "{out}"
    );
}

#[test]
fn buildkit_and_docker_writers_keep_what_is_there() {
    let d = tempfile::tempdir().unwrap();
    let bin = fake_bin(
        d.path(),
        &[(
            "buildkitd",
            "buildkitd github.com/moby/buildkit v0.12.5 bf1",
        )],
    );
    let root = d.path().join("root");
    let bk = root.join("etc/buildkit");
    std::fs::create_dir_all(&bk).unwrap();
    std::fs::write(
        bk.join("buildkitd.toml"),
        "# mine\ndebug = true\n[worker.oci]\n  max-parallelism = 4\n",
    )
    .unwrap();
    let (code, dry, err) = regcache(
        &bin,
        &root,
        &[
            "setup",
            "buildkit",
            "--mirror",
            "http://127.0.0.1:5000",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        dry.contains("+mirrors = [\"127.0.0.1:5000\"]") && dry.contains("dry run: nothing written"),
        "{dry}"
    );
    let (code, _, err) = regcache(
        &bin,
        &root,
        &["setup", "buildkit", "--mirror", "http://127.0.0.1:5000"],
    );
    assert_eq!(code, 0, "{err}");
    let text = read(bk.join("buildkitd.toml"));
    assert!(
        text.starts_with("# mine\ndebug = true\n[worker.oci]\n  max-parallelism = 4\n"),
        "{text}"
    );
    assert!(
        text.contains("[registry.\"127.0.0.1:5000\"]\nhttp = true"),
        "{text}"
    );
    // Again: nothing changes, no second backup.
    let (_, again, _) = regcache(
        &bin,
        &root,
        &["setup", "buildkit", "--mirror", "http://127.0.0.1:5000"],
    );
    assert!(again.contains("already set, unchanged"), "{again}");
    // dockerd refuses a plain-HTTP mirror off loopback: setup says so, writes nothing.
    let (code, _, err) = regcache(
        &bin,
        &root,
        &["setup", "docker", "--mirror", "http://10.0.0.5:5000"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("only on a loopback address") && err.contains("regcache certs init"),
        "{err}"
    );
    assert!(!root.join("etc/docker/daemon.json").exists());
    // A malformed daemon.json is named, never overwritten.
    std::fs::create_dir_all(root.join("etc/docker")).unwrap();
    std::fs::write(root.join("etc/docker/daemon.json"), "{ not json").unwrap();
    let (code, _, err) = regcache(
        &bin,
        &root,
        &["setup", "docker", "--mirror", "http://127.0.0.1:5000"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("daemon.json is not JSON"), "{err}");
    assert_eq!(read(root.join("etc/docker/daemon.json")), "{ not json");
}

#[test]
fn doctor_names_what_containerd_2_needs() {
    for (version, config, needle) in [
        (V21, "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n", "use_local_image_pull"),
        (V22, "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\n  use_local_image_pull = true\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n", "containerd#12636"),
        (V1, "version = 2\n", "sets no config_path"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let bin = fake_bin(d.path(), &[("containerd", version)]);
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc/containerd")).unwrap();
        std::fs::write(root.join("etc/containerd/config.toml"), config).unwrap();
        let (code, out, err) = regcache(&bin, &root, &["doctor", "containerd", "--no-pull"]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.starts_with("✘ containerd") && out.contains(needle) && out.contains("— fix: regcache setup containerd"), "{version}: {out}");
    }
    // Not installed: skipped, not a failure.
    let d = tempfile::tempdir().unwrap();
    let out = {
        let _starting = FORK.read().unwrap_or_else(|p| p.into_inner());
        Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args(["doctor", "buildkit", "--json", "--config", "/dev/null"])
            .env("PATH", d.path())
            .output()
            .unwrap()
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["client"], "buildkit");
    assert_eq!(v[0]["skipped"], true);
    assert_eq!(out.status.code(), Some(0));
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `regcache serve ARGS` until dropped, once its admin socket answers.
struct Serve(std::process::Child);

impl Serve {
    fn start(cache: &Path, args: &[&str]) -> Serve {
        let _starting = FORK.read().unwrap_or_else(|p| p.into_inner());
        let child = Command::new(env!("CARGO_BIN_EXE_regcache"))
            .arg("serve")
            .arg("--cache-dir")
            .arg(cache)
            .args(["--upstream", "http://127.0.0.1:1"])
            .args(args)
            .env_remove("REGCACHE_CONFIG")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let s = Serve(child);
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(cache.join("regcache.sock")).is_ok() {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("regcache serve did not start");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn https_mirror_trust_is_written_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let certs = d.path().join("certs");
    let out = {
        let _starting = FORK.read().unwrap_or_else(|p| p.into_inner());
        Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args([
                "certs",
                "init",
                "--hostname",
                "localhost",
                "--ip",
                "127.0.0.1",
                "--out",
            ])
            .arg(&certs)
            .output()
            .unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = certs.join("ca.crt");
    let bin = fake_bin(
        d.path(),
        &[
            ("dockerd", "Docker version 20.10.24+dfsg1, build 5d6db84"),
            ("containerd", V1),
            ("podman", "podman version 4.3.1"),
            (
                "buildkitd",
                "buildkitd github.com/moby/buildkit v0.12.5 bf1",
            ),
            // The CLI: no daemon to ask here.
            ("docker", "Cannot connect to the Docker daemon"),
        ],
    );
    // The fake docker CLI fails, as with no daemon.
    {
        let _writing = FORK.write().unwrap_or_else(|p| p.into_inner());
        std::fs::write(
            bin.join("docker"),
            "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n",
        )
        .unwrap();
    }
    let root = d.path().join("root");
    let port = free_port();
    let mirror = format!("https://127.0.0.1:{port}");
    let (code, out, err) = regcache(
        &bin,
        &root,
        &[
            "setup",
            "all",
            "--mirror",
            &mirror,
            "--ca",
            &ca.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let pem = read(ca.clone());
    assert_eq!(
        read(root.join(format!("etc/docker/certs.d/127.0.0.1:{port}/ca.crt"))),
        pem
    );
    assert_eq!(
        read(root.join(format!("etc/containers/certs.d/127.0.0.1:{port}/ca.crt"))),
        pem
    );
    let hosts = read(root.join("etc/containerd/certs.d/docker.io/hosts.toml"));
    assert!(
        hosts.contains(&format!("ca = \"{}\"", ca.display())),
        "{hosts}"
    );
    let bk = read(root.join("etc/buildkit/buildkitd.toml"));
    assert!(
        bk.contains(&format!("ca = [\"{}\"]", ca.display())) && !bk.contains("http = true"),
        "{bk}"
    );
    let drop_in = read(root.join("etc/containers/registries.conf.d/50-regcache.conf"));
    assert!(!drop_in.contains("insecure"), "{drop_in}");

    // doctor: the HTTPS mirror answers; with the CA in place TLS passes (the next check, the
    // running dockerd, fails here), without it the reason is TLS and the fix names the place.
    let cache = d.path().join("cache");
    let tls_cert = certs.join("regcache.crt").display().to_string();
    let tls_key = certs.join("regcache.key").display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let _serve = Serve::start(
        &cache,
        &[
            "--listen",
            &listen,
            "--tls-cert",
            &tls_cert,
            "--tls-key",
            &tls_key,
        ],
    );
    let cache_s = cache.display().to_string();
    let doctor = |root: &Path| {
        regcache(
            &bin,
            root,
            &[
                "doctor",
                "docker",
                "--no-pull",
                "--cache-dir",
                &cache_s,
                "--listen",
                &listen,
            ],
        )
    };
    let (code, out, _) = doctor(&root);
    assert_eq!(code, 1);
    assert!(
        out.contains("cannot ask dockerd"),
        "TLS passed, dockerd is next: {out}"
    );
    // containerd's config and the mirror are fine, but no containerd runs: the fix says so.
    let (code, out, _) = regcache(
        &bin,
        &root,
        &[
            "doctor",
            "containerd",
            "--cache-dir",
            &cache_s,
            "--listen",
            &listen,
            "--containerd-address",
            "/nonexistent/containerd.sock",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("containerd does not answer at /nonexistent/containerd.sock")
            && out.contains("start containerd"),
        "{out}"
    );
    std::fs::remove_file(root.join(format!("etc/docker/certs.d/127.0.0.1:{port}/ca.crt"))).unwrap();
    let (code, out, _) = doctor(&root);
    assert_eq!(code, 1);
    assert!(
        out.contains("TLS")
            && out.contains(&format!(
                "copy the mirror's ca.crt to {}",
                root.join(format!("etc/docker/certs.d/127.0.0.1:{port}/ca.crt"))
                    .display()
            )),
        "{out}"
    );
}

#[test]
fn doctor_docker_refuses_a_mirror_that_asks_for_credentials() {
    let d = tempfile::tempdir().unwrap();
    let bin = fake_bin(
        d.path(),
        &[("dockerd", "Docker version 20.10.24+dfsg1, build 5d6db84")],
    );
    let root = d.path().join("root");
    let htpasswd = d.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ci:{}\n", bcrypt::hash("secret", 4).unwrap()),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cache = d.path().join("cache");
    let _serve = Serve::start(
        &cache,
        &[
            "--listen",
            &listen,
            "--htpasswd",
            &htpasswd.display().to_string(),
        ],
    );
    std::fs::create_dir_all(root.join("etc/docker")).unwrap();
    std::fs::write(
        root.join("etc/docker/daemon.json"),
        format!("{{\"registry-mirrors\": [\"http://{listen}\"]}}\n"),
    )
    .unwrap();
    let (code, out, err) = regcache(
        &bin,
        &root,
        &[
            "doctor",
            "docker",
            "--no-pull",
            "--cache-dir",
            &cache.display().to_string(),
            "--listen",
            &listen,
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("asks for credentials") && out.contains("dockerd skips such a mirror"),
        "{out}"
    );
}
