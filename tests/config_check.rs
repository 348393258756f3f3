//! `regcache check-config`: one table of bad configs and the message each must give (key,
//! line, fix); every problem of a file reported, not only the first; `serve` refuses the same
//! configs with the same messages.

use std::path::Path;
use std::process::Command;

fn regcache() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_regcache"));
    // The test machine's own proxy settings must not change the answers.
    c.envs(regcache::upstream::proxy::PROXY_ENV.map(|k| (k, "")));
    c
}

/// Runs `check-config --config <file with text>`; returns (exit code, stdout + stderr).
fn check(dir: &Path, name: &str, text: &str) -> (i32, String) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let out = regcache()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), all)
}

#[test]
fn bad_configs_get_messages_that_name_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("cache");
    let cache_line = format!("cache_dir = {:?}\n", cache.display().to_string());
    let not_a_dir = d.join("a-file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let gen = |sub: &str| {
        let out = regcache()
            .args(["gen-cert", "--hostname", "localhost", "--out-dir"])
            .arg(d.join(sub))
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            d.join(sub).join("regcache.crt"),
            d.join(sub).join("regcache.key"),
        )
    };
    let (cert_a, _) = gen("a");
    let (_, key_b) = gen("b");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("bare-duration", "tag_ttl = 300\n".into(), vec!["line 1", "tag_ttl", "\"300s\""]),
        ("bare-rate", "min_fill_rate = 5\n".into(), vec!["min_fill_rate", "\"5KiB/s\""]),
        ("bad-duration", "revalidate_timeout = \"soon\"\n".into(), vec!["revalidate_timeout", "not a duration", "\"30s\""]),
        ("bad-size", "max_size = \"big\"\n".into(), vec!["max_size", "not a size", "\"20GiB\""]),
        ("bad-percent", "min_free = \"150%\"\n".into(), vec!["min_free", "below 100"]),
        ("no-address", "listen = \":5000\"\n".into(), vec!["listen", "has no address", "0.0.0.0:5000"]),
        ("no-port", "listen = \"127.0.0.1\"\n".into(), vec!["listen", "has no port"]),
        ("typo", "tag_tll = \"5m\"\n".into(), vec!["line 1", "unknown field `tag_tll`", "did you mean `tag_ttl`?"]),
        ("zero-size", "max_size = 0\n".into(), vec!["max_size", "could hold nothing", "line 1"]),
        ("empty-dir", "cache_dir = \"\"\n".into(), vec!["cache_dir", "is empty"]),
        (
            "port-range",
            "[upstream]\nredirect_hosts = [\"minio.internal:99999\"]\n".into(),
            vec!["redirect_hosts", "not host or host:port", "line 2"],
        ),
        ("wrong-type", "offline = \"yes\"\n".into(), vec!["offline", "invalid type"]),
        (
            "bad-prefix",
            "[registries.\"registry.internal:5443\"]\nprefix = \"a/b\"\n".into(),
            vec!["prefix", "not one path component", "prefix = \"internal-reg\"", "line 2"],
        ),
        (
            "prefix-clash",
            "[registries.\"ghcr.io\"]\n[registries.\"registry.internal:5443\"]\nprefix = \"ghcr.io\"\n".into(),
            vec!["prefix", "also [ghcr.io]'s name", "its own"],
        ),
        ("syntax", "tag_ttl = \"5m\nmax_size = \"1GiB\"\n".into(), vec!["line 1"]),
        (
            "all-reported",
            "tag_ttl = 300\nmax_size = \"big\"\nbogus = 1\n".into(),
            vec!["line 1", "\"300s\"", "line 2", "not a size", "line 3", "unknown field `bogus`"],
        ),
        ("bad-url", "[upstream]\nurl = \"ftp://x\"\n".into(), vec!["url", "http:// or https://", "line 2"]),
        (
            "every-value",
            "revalidate_timeout = \"0s\"\nidle_timeout = \"0s\"\nmax_connections = 0\n".into(),
            vec!["revalidate_timeout", "line 1", "idle_timeout", "line 2", "max_connections", "line 3"],
        ),
        ("zero-timeout", "tag_ttl = \"1m\"\nrevalidate_timeout = \"0s\"\n".into(), vec!["revalidate_timeout", "longer than 0s", "line 2"]),
        (
            "every-registry",
            "[registries.\"ghcr.io\"]\nurl = \"ftp://x\"\n[registries.\"quay.io\"]\nusername = \"u\"\n".into(),
            vec!["[ghcr.io]", "http:// or https://", "[quay.io]", "username and password_file"],
        ),
        ("url-with-path", "[upstream]\nurl = \"https://x/v2\"\n".into(), vec!["url", "scheme://host[:port]"]),
        (
            "password-missing",
            format!("[upstream]\nusername = \"u\"\npassword_file = {:?}\n", d.join("nope").display().to_string()),
            vec!["password_file", "cannot read", "nope"],
        ),
        ("half-credentials", "[upstream]\nusername = \"u\"\n".into(), vec!["username and password_file", "line 2"]),
        (
            "both-defaults",
            "[upstream]\nurl = \"https://a.example\"\n[registries.\"docker.io\"]\nurl = \"https://b.example\"\n".into(),
            vec!["keep one"],
        ),
        ("bad-registry", "[registries.\"Not A Host\"]\n".into(), vec!["registries", "not a registry name"]),
        (
            "bad-redirect-host",
            "[upstream]\nredirect_hosts = [\"not a host!\"]\n".into(),
            vec!["redirect_hosts", "not host or host:port"],
        ),
        ("registry-typo", "[registries.\"ghcr.io\"]\nusrname = \"x\"\n".into(), vec!["unknown field `usrname`", "did you mean `username`?"]),
        (
            "cert-missing",
            format!("{cache_line}tls_cert = {:?}\ntls_key = {:?}\n", d.join("no.crt").display().to_string(), key_b.display().to_string()),
            vec!["tls_cert", "no.crt"],
        ),
        (
            "cert-key-mismatch",
            format!("{cache_line}tls_cert = {:?}\ntls_key = {:?}\n", cert_a.display().to_string(), key_b.display().to_string()),
            vec!["tls_key", "does not match tls_cert", "certs init --force"],
        ),
        (
            "socks-proxy",
            "[upstream]\nproxy = \"socks5://proxy.corp:1080\"\n".into(),
            vec!["registries.<name>.proxy", "[docker.io]", "SOCKS proxies are not supported", "http://host:port", "line 2"],
        ),
        (
            "https-proxy",
            "[registries.\"ghcr.io\"]\nproxy = \"https://proxy.corp:443\"\n".into(),
            vec!["proxy", "[ghcr.io]", "https:// proxies", "http:// address", "line 2"],
        ),
        (
            "garbage-proxy",
            "[upstream]\nproxy = \"http://bob:hunter2@proxy corp:3128\"\n".into(),
            vec!["proxy", "not a proxy URL", "http://user:password@host:port", "line 2"],
        ),
        ("proxy-no-port", "[upstream]\nproxy = \"http://proxy.corp\"\n".into(), vec!["proxy", "has no port", "http://proxy.corp:3128"]),
        ("empty-proxy", "[upstream]\nproxy = \"\"\n".into(), vec!["proxy", "is empty", "\"none\""]),
        (
            "cache-under-a-file",
            format!("cache_dir = {:?}\n", not_a_dir.join("cache").display().to_string()),
            vec!["cache_dir", "not a directory"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, _, _) in cases.iter().filter(|c| c.0.contains("proxy")) {
        let (_, out) = check(d, name, &cases.iter().find(|c| c.0 == *name).unwrap().1);
        assert!(
            !out.contains("hunter2"),
            "{name}: the password is shown: {out}"
        );
    }
    for (name, text, wants) in &cases {
        let (code, out) = check(d, name, text);
        if code != 2 || !wants.iter().all(|w| out.contains(w)) {
            failures.push(format!("{name}: exit {code}, wanted {wants:?} in:\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    // A good config passes (a host name is accepted as the listen address).
    let (code, out) = check(
        d,
        "good",
        &format!("listen = \"localhost:5000\"\ntag_ttl = \"5m\"\nmax_size = 1048576\n{cache_line}"),
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("OK") && out.contains("127.0.0.1:5000"),
        "{out}"
    );
}

/// A malformed proxy variable stops `check-config` (and `serve`) with the variable named; the
/// OK line shows each registry's proxy, its password redacted.
#[test]
fn proxy_environment_is_checked_and_shown_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("r.toml");
    let cache = dir.path().join("cache");
    std::fs::write(
        &cfg,
        format!(
            "cache_dir = {:?}\n[registries.\"ghcr.io\"]\n[registries.\"quay.io\"]\nproxy = \"none\"\n[registries.\"registry.corp\"]\n",
            cache.display().to_string()
        ),
    )
    .unwrap();
    let run = |cmd: &str, env: &[(&str, &str)]| {
        let out = regcache()
            .args([cmd, "--config"])
            .arg(&cfg)
            .args(if cmd == "serve" {
                vec!["--listen", "127.0.0.1:0"]
            } else {
                vec![]
            })
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    };
    for cmd in ["check-config", "serve"] {
        let (code, out) = run(cmd, &[("HTTPS_PROXY", "socks5://bob:hunter2@s:1080")]);
        assert_eq!(code, 2, "{cmd}: {out}");
        assert!(
            out.contains("HTTPS_PROXY") && out.contains("SOCKS") && out.contains("unset it"),
            "{cmd}: {out}"
        );
        assert!(!out.contains("hunter2"), "{out}");
    }
    let (code, out) = run(
        "check-config",
        &[
            ("https_proxy", "http://bob:hunter2@proxy.corp:3128"),
            ("NO_PROXY", ".corp"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "ghcr.io = https://ghcr.io/ (via http://bob:***@proxy.corp:3128 (https_proxy))"
        ),
        "{out}"
    );
    assert!(
        out.contains("quay.io = https://quay.io/ (direct (proxy = \"none\"))"),
        "{out}"
    );
    assert!(
        out.contains("registry.corp = https://registry.corp/ (direct (NO_PROXY))"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
}

/// `serve` refuses a bad config with the message `check-config` gives, before binding.
#[test]
fn serve_refuses_what_check_config_refuses() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, want) in [
        ("ttl", "tag_ttl = 300\nbogus = 1\n".to_owned(), "\"300s\""),
        (
            "cache",
            format!("cache_dir = {:?}\n", "/dev/null/cache"),
            "not a directory",
        ),
    ] {
        let (code, checked) = check(dir.path(), name, &text);
        assert_eq!(code, 2, "{checked}");
        let out = regcache()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(dir.path().join(format!("{name}.toml")))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let served = String::from_utf8_lossy(&out.stderr);
        assert!(
            served.contains(want) && checked.contains(want),
            "{served}\n{checked}"
        );
        if name == "ttl" {
            assert!(
                served.contains("bogus"),
                "every problem, in serve too: {served}"
            );
        }
    }
}

/// Every subcommand's `--help` has an example; `regcache man` renders a page per command and
/// `regcache completions SHELL` a completion script.
#[test]
fn help_teaches_and_man_and_completions_render() {
    for sub in [
        "serve",
        "status",
        "verify",
        "prefetch",
        "gen-cert",
        "check-config",
        "gc",
        "completions",
        "man",
    ] {
        let out = regcache().args([sub, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Example"),
            "{sub}: {text}"
        );
    }
    let man = regcache().arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.matches(".TH").count() >= 8, "a page per command");
    assert!(page.contains("check\\-config"), "{page}");
    for (shell, mark) in [
        ("bash", "_regcache"),
        ("zsh", "#compdef regcache"),
        ("fish", "complete -c regcache"),
    ] {
        let out = regcache().args(["completions", shell]).output().unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(mark),
            "{shell}"
        );
    }
}

/// `REGCACHE_CONFIG` names the config file for every command (status reads its cache_dir).
#[test]
fn regcache_config_names_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("from-env");
    let cfg = dir.path().join("regcache.toml");
    std::fs::write(
        &cfg,
        format!("cache_dir = {:?}\n", cache.display().to_string()),
    )
    .unwrap();
    let out = regcache()
        .arg("status")
        .env("REGCACHE_CONFIG", &cfg)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("from-env"), "{text}");
    std::fs::write(&cfg, "tag_ttl = 300\n").unwrap();
    let out = regcache()
        .arg("check-config")
        .env("REGCACHE_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"300s\""));
}
