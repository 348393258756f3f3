//! What the .deb ships beside the binary (`[package.metadata.deb]` in Cargo.toml): the
//! committed man page and shell completions must be what the binary prints today, and the
//! commented default config must be a config `check-config` accepts. `scripts/check-package`
//! builds, installs and checks the package itself.

use std::path::Path;
use std::process::Command;

fn regcache() -> Command {
    Command::new(env!("CARGO_BIN_EXE_regcache"))
}

/// `regcache <args>`'s stdout; the command must succeed.
fn output_of(args: &[&str]) -> Vec<u8> {
    let out = regcache().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "regcache {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Fails when the committed `file` is not what `regcache <args>` prints, naming the command
/// that brings it up to date.
fn assert_committed_output(file: &str, args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let committed = std::fs::read(&path).unwrap_or_default();
    let current = output_of(args);
    assert!(
        committed == current,
        "{file} is not what `regcache {}` prints ({} bytes committed, {} printed); regenerate it:\n  \
         cargo run -q -- {} > {file}",
        args.join(" "),
        committed.len(),
        current.len(),
        args.join(" ")
    );
}

#[test]
fn committed_man_page_is_current() {
    assert_committed_output("doc/regcache.1", &["man"]);
}

#[test]
fn committed_shell_completions_are_current() {
    assert_committed_output("doc/completions/regcache.bash", &["completions", "bash"]);
    assert_committed_output("doc/completions/_regcache", &["completions", "zsh"]);
    assert_committed_output("doc/completions/regcache.fish", &["completions", "fish"]);
}

/// The shipped /etc/regcache/regcache.toml means "the embedded defaults": check-config accepts
/// it and reports the default listener and registry.
#[test]
fn shipped_config_passes_check_config() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/regcache.toml");
    let cache = tempfile::tempdir().unwrap();
    let out = regcache()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .arg("--cache-dir")
        .arg(cache.path())
        .env_remove("REGCACHE_CONFIG")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "check-config refused {}:\n{all}",
        file.display()
    );
    assert!(all.contains(": OK"), "{all}");
    assert!(all.contains("listeners http://127.0.0.1:5000"), "{all}");
    assert!(
        all.contains("docker.io = https://registry-1.docker.io"),
        "{all}"
    );
}

/// Every line of the shipped config is a comment or blank: nothing in it overrides a default,
/// so a changed default reaches installed systems whose admin never edited the file.
#[test]
fn shipped_config_sets_nothing() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/regcache.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        assert!(
            t.is_empty() || t.starts_with('#'),
            "packaging/regcache.toml line {}: {line:?} is not commented out",
            n + 1
        );
    }
}

/// The shipped config with every setting uncommented: settings are written `#key = value` (no
/// space after `#`), explanations `# text`, so this is the file an admin gets by uncommenting
/// lines.
fn shipped_config_uncommented() -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/regcache.toml");
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with([' ', '#']) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Uncommented, the shipped config is valid TOML with each key where it belongs (a top-level
/// key written below a `[table]` line would land in that table).
#[test]
fn shipped_config_uncommented_is_toml_in_place() {
    let table: toml::Table = toml::from_str(&shipped_config_uncommented())
        .unwrap_or_else(|e| panic!("packaging/regcache.toml uncommented:\n{e}"));
    let top = [
        "listen",
        "tls_cert",
        "tls_key",
        "max_connections",
        "header_read_timeout",
        "client_idle_timeout",
        "shutdown_grace",
        "cache_dir",
        "max_size",
        "min_free",
        "tag_ttl",
        "max_manifest_size",
        "offline",
        "revalidate_timeout",
        "idle_timeout",
        "min_fill_rate",
        "outage_backoff",
        "outage_probe_interval",
        "max_upstream_bandwidth",
        "default_registry",
        "log_format",
        "node_name",
        "listeners",
        "upstream",
        "registries",
    ];
    for key in top {
        assert!(
            table.contains_key(key),
            "no top-level {key} in packaging/regcache.toml uncommented"
        );
    }
    let listeners = table["listeners"].as_array().unwrap();
    let lan = listeners.last().unwrap().as_table().unwrap();
    for key in [
        "name",
        "address",
        "tls_cert",
        "tls_key",
        "htpasswd",
        "client_ca",
        "allow_anonymous",
    ] {
        assert!(
            lan.contains_key(key),
            "no [[listeners]] {key} in packaging/regcache.toml"
        );
    }
    let upstream = table["upstream"].as_table().unwrap();
    for key in [
        "url",
        "username",
        "password_file",
        "ca_file",
        "redirect_hosts",
        "proxy",
        "client_cert",
        "client_key",
    ] {
        assert!(
            upstream.contains_key(key),
            "no [upstream] {key} in packaging/regcache.toml"
        );
    }
}

/// Uncommented, every key of the shipped config is one `FileConfig` knows, with a value of the
/// right form.
#[test]
fn shipped_config_uncommented_has_known_keys_and_good_values() {
    let text = shipped_config_uncommented();
    if let Err(e) = toml::from_str::<regcache::config::FileConfig>(&text) {
        panic!("packaging/regcache.toml uncommented:\n{e}\n{text}");
    }
}
