//! End-to-end: `regcache setup` and `regcache doctor` on the lab's real dockerd and
//! containerd (and skopeo, the containers/image client, with podman's drop-in), against the
//! lab's own daemon.json, config.toml and hosts directories (never this machine's /etc):
//!
//! 1. docker: doctor ✘ for each seeded mistake (no mirror named, wrong port, plain HTTP on a
//!    non-loopback address); `setup docker --dry-run` prints the diff and writes nothing;
//!    `setup docker` keeps every other key, the mode, leaves a backup; dockerd reloads it;
//!    doctor ✔ (a real `docker pull` seen by the mirror as docker);
//! 2. containerd: doctor ✘ while config.toml has no config_path, ✘ when config_path is
//!    another directory; `setup containerd --dry-run`, then for real (comments and keys kept,
//!    `containerd config dump` still reads it); doctor ✔ (a real ctr fetch through the hosts
//!    directory, seen as containerd);
//! 3. podman: `setup podman` into a scratch registries.conf.d, doctor ✔ through skopeo; a
//!    registry named 127.0.0.1:PORT reached through its `prefix` alias with real skopeo (and
//!    refused by skopeo as `MIRROR/127.0.0.1:PORT`, the reason for the alias);
//! 4. `/metrics` client kinds move on a docker pull (docker) and on a ctr pull (containerd);
//! 5. mirror down: doctor ✘ for docker and containerd with the reason.

mod lab;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lab::{proc, say, Findings, Lab};

fn regcache(args: &[&str]) -> proc::Output {
    let mut c = Command::new(lab::mirror::regcache_bin());
    c.args(args).env_remove("REGCACHE_CONFIG");
    proc::run(&mut c, Duration::from_secs(300))
}

/// `regcache doctor CLIENT` against the lab: its mirror's address and cache directory, its
/// dockerd and containerd sockets, the lab image.
fn doctor(lab: &Lab, client: &str, extra: &[&str]) -> proc::Output {
    let addr = lab.mirror_addr().to_string();
    let cache = lab.mirror().cache_dir.clone().expect("a regcache mirror");
    let cache = cache.display().to_string();
    let host = lab.dockerd().host.clone();
    let csock = lab.containerd().socket.display().to_string();
    let image = lab.images[0].short_ref();
    let mut args = vec![
        "doctor",
        client,
        "--config",
        "/dev/null",
        "--listen",
        &addr,
        "--cache-dir",
        &cache,
        "--docker-host",
        &host,
        "--containerd-address",
        &csock,
        "--image",
        &image,
    ];
    args.extend_from_slice(extra);
    let out = regcache(&args);
    say(format!(
        "regcache {}:\n{}{}",
        args.join(" "),
        out.stdout,
        out.stderr
    ));
    out
}

fn assert_fails_with(out: &proc::Output, client: &str, needle: &str) {
    assert!(!out.ok(), "doctor should fail (exit 1):\n{}", out.stdout);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(&format!("✘ {client}")))
        .unwrap_or_else(|| panic!("no ✘ line for {client}:\n{}", out.stdout));
    assert!(
        line.contains(needle),
        "{client}: expected {needle:?} in: {line}"
    );
    assert!(line.contains("— fix: "), "a fix is named: {line}");
}

fn assert_passes(out: &proc::Output, client: &str) {
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&format!("✔ {client}"))),
        "doctor {client} should pass:\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.ok(), "doctor exit status 0:\n{}", out.stdout);
}

/// `regcache_client_requests_total{client="KIND"}` now.
fn client_requests(lab: &Lab, kind: &str) -> u64 {
    let (_, _, body) =
        proc::http_request(lab.mirror_addr(), "GET", "/metrics", &[]).expect("GET /metrics");
    let text = String::from_utf8_lossy(&body);
    let want = format!("regcache_client_requests_total{{client=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {want} in /metrics:\n{text}"))
}

/// SIGHUP to dockerd and wait until `docker info` shows `want` as its mirrors.
fn reload_dockerd(lab: &Lab, want: &[String]) {
    lab.dockerd().daemon.signal("HUP");
    let started = std::time::Instant::now();
    loop {
        let out = proc::run(
            lab.dockerd()
                .docker()
                .args(["info", "--format", "{{json .RegistryConfig.Mirrors}}"]),
            Duration::from_secs(30),
        );
        let got: Vec<String> = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
        let got: Vec<String> = got
            .iter()
            .map(|m| m.trim_end_matches('/').to_owned())
            .collect();
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "dockerd did not reload: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn backups(p: &Path) -> Vec<PathBuf> {
    let name = p.file_name().unwrap().to_string_lossy().to_string();
    std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|b| {
            b.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.regcache-backup-"))
        })
        .collect()
}

#[test]
fn e2e_setup_and_doctor() {
    let Some(tools) = lab::preflight_regcache("e2e_setup_and_doctor") else {
        return;
    };
    let mut lab = Lab::start(tools);
    let mut f = Findings::new("e2e_setup_and_doctor");
    let addr = lab.mirror_addr();
    let mirror = format!("http://{addr}");
    let daemon_json = lab.root().join("docker/daemon.json");
    let dj = daemon_json.display().to_string();
    say(format!(
        "versions tested for real: {}, {}",
        proc::run(
            Command::new("dockerd").arg("--version"),
            Duration::from_secs(10)
        )
        .stdout
        .trim(),
        proc::run(
            Command::new("containerd").arg("--version"),
            Duration::from_secs(10)
        )
        .stdout
        .trim()
    ));

    // ---- docker: seeded mistakes (the lab's own daemon.json, reloaded each time)
    f.check("docker: no mirror named", || {
        lab.dockerd.as_mut().unwrap().set_registry_mirrors(&[]);
        let out = doctor(&lab, "docker", &["--docker-config", &dj]);
        assert_fails_with(&out, "docker", "names no registry-mirrors");
    });
    f.check("docker: wrong port", || {
        let wrong = format!("http://127.0.0.1:{}", addr.port() + 1);
        lab.dockerd.as_mut().unwrap().set_registry_mirrors(&[wrong]);
        let out = doctor(&lab, "docker", &["--docker-config", &dj]);
        assert_fails_with(
            &out,
            "docker",
            &format!("this mirror listens on port {}", addr.port()),
        );
    });
    f.check("docker: plain HTTP on a non-loopback address", || {
        let lan = format!("http://192.0.2.10:{}", addr.port());
        lab.dockerd.as_mut().unwrap().set_registry_mirrors(&[lan]);
        let out = doctor(&lab, "docker", &["--docker-config", &dj]);
        assert_fails_with(&out, "docker", "plain HTTP on a non-loopback address");
    });
    // ---- docker: setup on a config with other keys
    f.check(
        "docker: setup --dry-run prints the diff, writes nothing",
        || {
            let before = std::fs::read_to_string(&daemon_json).unwrap();
            let out = regcache(&[
                "setup",
                "docker",
                "--config",
                "/dev/null",
                "--mirror",
                &mirror,
                "--docker-config",
                &dj,
                "--dry-run",
            ]);
            assert!(out.ok(), "{}{}", out.stdout, out.stderr);
            assert!(
                out.stdout.contains(&format!("+    \"{mirror}\"")),
                "{}",
                out.stdout
            );
            assert!(
                out.stdout.contains("systemctl reload docker"),
                "{}",
                out.stdout
            );
            assert_eq!(
                std::fs::read_to_string(&daemon_json).unwrap(),
                before,
                "dry run wrote"
            );
        },
    );
    f.check(
        "docker: setup keeps every other key, the mode, a backup; dockerd reloads it",
        || {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&daemon_json, std::fs::Permissions::from_mode(0o600)).unwrap();
            let before: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&daemon_json).unwrap()).unwrap();
            let out = regcache(&[
                "setup",
                "docker",
                "--config",
                "/dev/null",
                "--mirror",
                &mirror,
                "--docker-config",
                &dj,
            ]);
            assert!(out.ok(), "{}{}", out.stdout, out.stderr);
            let after: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&daemon_json).unwrap()).unwrap();
            for (k, v) in before.as_object().unwrap() {
                if k != "registry-mirrors" {
                    assert_eq!(&after[k], v, "key {k} kept");
                }
            }
            assert_eq!(after["registry-mirrors"][0], serde_json::json!(mirror));
            assert_eq!(mode(&daemon_json), 0o600, "mode kept");
            assert_eq!(backups(&daemon_json).len(), 1, "one backup beside it");
            reload_dockerd(
                &lab,
                &[mirror.clone(), format!("http://192.0.2.10:{}", addr.port())],
            );
        },
    );
    f.check(
        "docker: doctor ✔ after setup (a real docker pull seen by the mirror)",
        || {
            let out = doctor(&lab, "docker", &["--docker-config", &dj]);
            assert_passes(&out, "docker");
        },
    );
    f.check("metrics: client=docker moves on a docker pull", || {
        let before = client_requests(&lab, "docker");
        lab::pulls::docker_pull(&lab, &lab.images[0], lab::clients::PULL_TIMEOUT);
        let after = client_requests(&lab, "docker");
        assert!(after > before, "docker requests {before} → {after}");
        say(format!(
            "regcache_client_requests_total{{client=\"docker\"}} {before} → {after}"
        ));
    });

    // ---- containerd: the lab's config.toml (version 2, no config_path), its own sockets
    let cdir = lab.containerd().dir.clone();
    let config = cdir.join("config.toml");
    let cfg = config.display().to_string();
    let hosts = cdir.join("setup-certs.d");
    let hd = hosts.display().to_string();
    f.check(
        "containerd: hosts dir not in config_path (none set)",
        || {
            let out = doctor(
                &lab,
                "containerd",
                &["--containerd-config", &cfg, "--containerd-hosts-dir", &hd],
            );
            assert_fails_with(&out, "containerd", "sets no config_path");
        },
    );
    f.check("containerd: hosts dir not in config_path (another one)", || {
        let text = std::fs::read_to_string(&config).unwrap();
        let other = format!("{text}\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{}\"\n", cdir.join("elsewhere").display());
        let seeded = cdir.join("seeded-config.toml");
        std::fs::write(&seeded, other).unwrap();
        std::fs::create_dir_all(hosts.join("docker.io")).unwrap();
        std::fs::write(hosts.join("docker.io/hosts.toml"), format!("[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")).unwrap();
        let out = doctor(&lab, "containerd", &["--containerd-config", &seeded.display().to_string(), "--containerd-hosts-dir", &hd]);
        assert_fails_with(&out, "containerd", "not in config_path");
        std::fs::remove_dir_all(&hosts).unwrap();
    });
    f.check("containerd: setup --dry-run, then setup (keys and comments kept, containerd still reads it)", || {
        let before = std::fs::read_to_string(&config).unwrap();
        let args = ["setup", "containerd", "--config", "/dev/null", "--mirror", &mirror, "--containerd-config", &cfg, "--containerd-hosts-dir", &hd];
        let mut dry = args.to_vec();
        dry.push("--dry-run");
        let out = regcache(&dry);
        assert!(out.ok(), "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(&format!("+config_path = \"{hd}\"")), "{}", out.stdout);
        assert!(out.stdout.contains(&format!("+[host.\"{mirror}\"]")), "{}", out.stdout);
        assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
        assert!(!hosts.exists(), "dry run wrote the hosts dir");
        let out = regcache(&args);
        assert!(out.ok(), "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("systemctl restart containerd"), "{}", out.stdout);
        let after = std::fs::read_to_string(&config).unwrap();
        assert!(after.starts_with(&before), "the old text kept as it was:\n{after}");
        assert!(after.contains("# CRI is not needed"), "comment kept");
        let hosts_toml = std::fs::read_to_string(hosts.join("docker.io/hosts.toml")).unwrap();
        assert!(hosts_toml.contains(&format!("[host.\"{mirror}\"]")), "{hosts_toml}");
        let dump = proc::run(Command::new("containerd").arg("--config").arg(&config).args(["config", "dump"]), Duration::from_secs(30));
        // (The lab disables CRI, so the dump leaves its section out: that it parses is the point.)
        assert!(dump.ok(), "containerd config dump reads it: {}{}", dump.stdout, dump.stderr);
    });
    f.check(
        "containerd: doctor ✔ after setup (a real ctr fetch seen by the mirror)",
        || {
            let out = doctor(
                &lab,
                "containerd",
                &["--containerd-config", &cfg, "--containerd-hosts-dir", &hd],
            );
            assert_passes(&out, "containerd");
        },
    );
    f.check("metrics: client=containerd moves on a ctr pull", || {
        let before = client_requests(&lab, "containerd");
        let reference = lab.images[0].docker_io_ref();
        let out =
            lab.containerd()
                .try_pull(&hosts, &reference, false, None, lab::clients::PULL_TIMEOUT);
        assert!(out.ok(), "ctr pull: {}{}", out.stdout, out.stderr);
        let after = client_requests(&lab, "containerd");
        assert!(after > before, "containerd requests {before} → {after}");
        say(format!(
            "regcache_client_requests_total{{client=\"containerd\"}} {before} → {after}"
        ));
    });

    // ---- podman's drop-in, proven with skopeo (containers/image)
    if proc::which("podman").is_some() {
        f.check(
            "podman: setup into a scratch registries.conf.d, doctor ✔ through skopeo",
            || {
                let d = lab.fresh_dir("registries.conf.d");
                let dd = d.display().to_string();
                let out = regcache(&[
                    "setup",
                    "podman",
                    "--config",
                    "/dev/null",
                    "--mirror",
                    &mirror,
                    "--registries-conf-d",
                    &dd,
                ]);
                assert!(out.ok(), "{}{}", out.stdout, out.stderr);
                let out = doctor(&lab, "podman", &["--registries-conf-d", &dd]);
                assert_passes(&out, "podman");
            },
        );
    } else if std::env::var("REGCACHE_E2E").as_deref() == Ok("require") {
        f.fail(
            "podman",
            "podman not installed (Debian package podman; REGCACHE_E2E=require)".into(),
        );
    } else {
        say("SKIP podman checks: podman not installed (Debian package podman)");
    }

    // ---- a registry whose name has a port, through skopeo with `setup podman`'s drop-in:
    // a second regcache mirrors the lab's upstream under its own name 127.0.0.1:PORT with
    // prefix = "lab"; skopeo refuses MIRROR/127.0.0.1:PORT/... but takes MIRROR/lab/...
    f.check(
        "podman: a registry with a port, through its prefix alias (real skopeo)",
        || {
            let up = lab.upstream();
            let name = up.registry_addr.to_string();
            let config = lab.root().join("regcache-prefix.toml");
            std::fs::write(
                &config,
                format!(
                "[registries.\"{name}\"]\nurl = \"{}\"\nredirect_hosts = {:?}\nprefix = \"lab\"\n",
                up.mirror_url(),
                up.redirect_hosts
            ),
            )
            .unwrap();
            let mut spec = lab::mirror::RegcacheSpec::new(
                "regcache (prefix alias)",
                lab.root(),
                "prefix-cache",
                "regcache-prefix.log",
            );
            spec.config = Some(config.clone());
            let second = lab::mirror::Mirror::start_regcache(spec);
            let d = lab.fresh_dir("registries-prefix.d");
            let dd = d.display().to_string();
            let out = regcache(&[
                "setup",
                "podman",
                "--config",
                &config.display().to_string(),
                "--mirror",
                &format!("http://{}", second.addr),
                "--registries-conf-d",
                &dd,
            ]);
            assert!(out.ok(), "{}{}", out.stdout, out.stderr);
            let drop_in = std::fs::read_to_string(d.join("50-regcache.conf")).unwrap();
            assert!(
                drop_in.contains(&format!("location = \"{}/lab\"", second.addr)),
                "{drop_in}"
            );
            let img = &lab.images[0];
            let reference = format!("{name}/{}:{}", img.repo, img.tag);
            let out_dir = lab.fresh_dir("skopeo-prefix");
            lab.skopeo.copy_via_registries_conf(
                &d.join("50-regcache.conf"),
                &reference,
                &out_dir,
                img.is_multi(),
            );
            lab::pulls::check_dir_copy(img, &out_dir);
            // Without the alias: containers/image refuses the mirror location itself.
            let bad = lab
                .skopeo
                .write_registries_conf_for(&name, &format!("{}/{name}", second.addr));
            let mut c = lab.skopeo.cmd();
            c.arg("--registries-conf")
                .arg(&bad)
                .args(["inspect", "--raw", "--no-creds"])
                .arg(format!("docker://{reference}"));
            let refused = proc::run(&mut c, Duration::from_secs(60));
            say(format!(
                "skopeo with mirror location {}/{name}: {}",
                second.addr,
                refused.stderr.trim()
            ));
            assert!(
                !refused.ok() && refused.stderr.contains("invalid reference format"),
                "{}",
                refused.stderr
            );
            let seen = second.access_since(0);
            assert!(
                seen.iter().any(|a| a
                    .path
                    .starts_with(&format!("/v2/lab/{}/manifests/", img.repo))
                    && a.status == 200),
                "the second mirror saw /v2/lab/...: {:?}",
                seen.iter().map(|a| a.short()).collect::<Vec<_>>()
            );
        },
    );

    // ---- mirror down
    f.check("mirror down: doctor ✘ for docker and containerd", || {
        lab.mirror_mut().stop();
        let out = doctor(&lab, "docker", &["--docker-config", &dj, "--no-pull"]);
        assert_fails_with(&out, "docker", "does not answer");
        let out = doctor(
            &lab,
            "containerd",
            &[
                "--containerd-config",
                &cfg,
                "--containerd-hosts-dir",
                &hd,
                "--no-pull",
            ],
        );
        assert_fails_with(&out, "containerd", "does not answer");
    });
    f.finish();
}
