//! containerd: one `<hosts dir>/<registry>/hosts.toml` per mirrored registry (containerd docs
//! `docs/hosts.md`; `_default` for registries without their own directory, naming no server),
//! and the CRI plugin's `config_path` in config.toml pointing at that hosts directory:
//!
//! - config `version = 2` (containerd 1.x, 2.0): `[plugins."io.containerd.grpc.v1.cri".registry]`;
//! - `version = 3` (containerd 2.x): `[plugins."io.containerd.cri.v1.images".registry]`, and from
//!   2.1 `use_local_image_pull = true` there: 2.1 sends CRI pulls through the transfer service,
//!   which does not read `config_path` (spegel#1272);
//! - 2.2's default `config_path` is a `:`-separated list, with which mirrors are ignored
//!   (containerd#12636): setup writes one directory;
//! - inline `registry.mirrors` cannot be set with `config_path` (containerd#12612).
//!
//! `ctr` reads no config.toml: it takes `--hosts-dir`.

use std::path::{Path, PathBuf};

use toml_edit::{value, Array, DocumentMut, Item, Table};
use url::Url;

use super::doctor::{check_address, or_under, prove, Context, Verdict};
use super::files::{read_optional, Change};
use super::setup::{detect_version, origin, ClientPaths, Plan, Target};
use super::ClientKind;

/// containerd's config file.
pub const CONFIG_TOML: &str = "/etc/containerd/config.toml";
/// containerd's usual hosts directory.
pub const HOSTS_DIR: &str = "/etc/containerd/certs.d";

/// A containerd version, `(major, minor, patch)`.
pub type Version = (u64, u64, u64);

/// The config.toml table holding `config_path` for config `schema` (2 or 3).
fn registry_table_path(schema: i64) -> [&'static str; 3] {
    match schema {
        3 => ["plugins", "io.containerd.cri.v1.images", "registry"],
        _ => ["plugins", "io.containerd.grpc.v1.cri", "registry"],
    }
}

/// The table at `keys` below `t`, created (implicit, so no empty headers) where missing.
fn table_at<'a>(t: &'a mut Table, keys: &[&str]) -> Result<&'a mut Table, String> {
    let mut cur = t;
    for k in keys {
        let item = cur.entry(k).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        cur = match item {
            Item::Table(t) => t,
            other => {
                let as_table = other
                    .as_table_like_mut()
                    .ok_or_else(|| format!("{k} is not a table"))?;
                // A dotted-key or inline table: keep it, as a real table for editing.
                let _ = as_table;
                let taken = std::mem::take(other);
                let t = match taken {
                    Item::Value(toml_edit::Value::InlineTable(it)) => it.into_table(),
                    i => i.into_table().map_err(|_| format!("{k} is not a table"))?,
                };
                *other = Item::Table(t);
                other.as_table_mut().expect("just made a table")
            }
        };
    }
    Ok(cur)
}

/// The value at `keys` in a parsed config, if present.
fn get<'a>(doc: &'a DocumentMut, keys: &[&str]) -> Option<&'a Item> {
    let mut cur: &Item = doc.as_item();
    for k in keys {
        cur = cur.as_table_like()?.get(k)?;
    }
    Some(cur)
}

/// The config's schema version (`version = N`; absent: 1, containerd's own reading).
fn schema(doc: &DocumentMut) -> i64 {
    doc.get("version").and_then(Item::as_integer).unwrap_or(1)
}

/// config.toml merged so that the CRI plugin reads `hosts_dir` (and, from 2.1, pulls without
/// the transfer service), comments and every other key kept.
///
/// Errors: a config schema this version does not read (version 1; 3 on 1.x), containerd 2.1+
/// with a version-2 config (its `use_local_image_pull` exists only in version 3), inline
/// `registry.mirrors` (containerd#12612), malformed TOML — each with the fix.
pub fn merge_config(
    old: Option<&str>,
    version: Version,
    hosts_dir: &Path,
) -> Result<String, String> {
    let fresh = old.is_none_or(|t| t.trim().is_empty());
    let mut doc: DocumentMut = match old {
        Some(t) if !fresh => t
            .parse()
            .map_err(|e| format!("is not TOML ({e}); fix it by hand first"))?,
        _ => DocumentMut::new(),
    };
    if fresh {
        doc["version"] = value(if version.0 >= 2 { 3 } else { 2 });
    }
    let schema = schema(&doc);
    match (schema, version.0) {
        (1, _) => return Err("has no `version = 2` or `3` (a version 1 config, which has no config_path): migrate it first (containerd 2.x: containerd config migrate; 1.x: add version = 2 and rename plugins.cri to plugins.\"io.containerd.grpc.v1.cri\")".into()),
        (3, 1) => return Err("is a version 3 config, which containerd 1.x does not read: use version = 2".into()),
        (2, 2..) if version.1 >= 1 || version.0 > 2 => return Err(format!(
            "is a version 2 config, but containerd {}.{} pulls through its transfer service unless use_local_image_pull = true, which only a version 3 config has (spegel#1272): run `containerd config migrate > config.toml.new`, review it, move it over config.toml, then run setup again",
            version.0, version.1
        )),
        (2 | 3, _) => {}
        (n, _) => return Err(format!("has version = {n}, which containerd {}.{} does not read", version.0, version.1)),
    }
    let path = registry_table_path(schema);
    let reg = table_at(doc.as_table_mut(), &path)?;
    if reg.contains_key("mirrors") {
        return Err(format!(
            "sets [{}.mirrors], which containerd refuses beside config_path (containerd#12612): move each mirror into {}/<registry>/hosts.toml, delete the mirrors table, then run setup again",
            path.join("."), hosts_dir.display()
        ));
    }
    let dir = hosts_dir.display().to_string();
    if reg.get("config_path").and_then(Item::as_str) != Some(dir.as_str()) {
        // One directory, never 2.2's `a:b` list (containerd#12636).
        reg["config_path"] = value(dir);
    }
    if schema == 3 && (version.0 > 2 || (version.0 == 2 && version.1 >= 1)) {
        let images = table_at(doc.as_table_mut(), &path[..2])?;
        if images.get("use_local_image_pull").and_then(Item::as_bool) != Some(true) {
            images["use_local_image_pull"] = value(true);
        }
    }
    Ok(doc.to_string())
}

/// A hosts.toml sending `registry` to `mirror` first: an existing file keeps its other hosts
/// (after the mirror), its `server` and its comments; a new one names `server` (the registry
/// itself, where containerd falls back) unless `server` is `None` (`_default`).
///
/// Errors: the existing file is not TOML.
pub fn merge_hosts_toml(
    old: Option<&str>,
    mirror: &Url,
    server: Option<&str>,
    ca: Option<&Path>,
) -> Result<String, String> {
    let mut doc: DocumentMut = match old {
        Some(t) if !t.trim().is_empty() => t
            .parse()
            .map_err(|e| format!("is not TOML ({e}); fix it by hand first"))?,
        _ => {
            let mut d = DocumentMut::new();
            if let Some(s) = server {
                d["server"] = value(s);
            }
            d
        }
    };
    let key = origin(mirror);
    let hosts = table_at(doc.as_table_mut(), &["host"])?;
    // The mirror first: containerd tries hosts in file order.
    let mut others: Vec<(String, Item)> = Vec::new();
    let mut ours = None;
    let keys: Vec<String> = hosts.iter().map(|(k, _)| k.to_owned()).collect();
    for k in keys {
        let item = hosts.remove(&k).expect("listed");
        if k.trim_end_matches('/') == key {
            ours = Some(item);
        } else {
            others.push((k, item));
        }
    }
    let mut t = match ours {
        Some(Item::Table(t)) => t,
        _ => Table::new(),
    };
    let mut caps = Array::new();
    caps.push("pull");
    caps.push("resolve");
    let current: Option<Vec<&str>> = t
        .get("capabilities")
        .and_then(Item::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect());
    if current != Some(vec!["pull", "resolve"]) {
        t["capabilities"] = value(caps);
    }
    if let Some(ca) = ca {
        let ca = ca.display().to_string();
        if t.get("ca").and_then(Item::as_str) != Some(ca.as_str()) {
            t["ca"] = value(ca);
        }
    }
    if old.is_none_or(|o| o.trim().is_empty()) {
        t.decor_mut()
            .set_prefix("\n# regcache setup: this mirror first.\n");
    }
    hosts.insert(&key, Item::Table(t));
    for (k, v) in others {
        hosts.insert(&k, v);
    }
    // Render order follows each table's position: ours before the others.
    let mut pos = 0;
    for (_, v) in hosts.iter_mut() {
        if let Some(t) = v.as_table_mut() {
            t.set_position(1000 + pos);
            pos += 1;
        }
    }
    Ok(doc.to_string())
}

/// The hosts directory: `--containerd-hosts-dir`, else the config's current `config_path` (its
/// first entry), else `<root>/etc/containerd/certs.d`.
fn hosts_dir(paths: &ClientPaths, existing: Option<&DocumentMut>) -> PathBuf {
    if let Some(d) = &paths.containerd_hosts_dir {
        return d.clone();
    }
    if let Some(doc) = existing {
        if let Some(first) = config_path(doc).into_iter().next() {
            return super::files::reroot(&paths.root, &first);
        }
    }
    super::files::under(&paths.root, HOSTS_DIR)
}

/// The CRI `config_path` directories of a parsed config (2.2's `a:b` list split).
pub fn config_path(doc: &DocumentMut) -> Vec<PathBuf> {
    let keys = registry_table_path(schema(doc));
    let path: Vec<&str> = keys.iter().copied().chain(["config_path"]).collect();
    get(doc, &path)
        .and_then(Item::as_str)
        .map(|s| {
            s.split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `setup containerd`: config.toml and one hosts.toml per configured registry (and `_default`
/// with `default_host`).
///
/// Errors: containerd's version cannot be told (no guess), or config.toml cannot be merged.
pub fn plan(paths: &ClientPaths, target: &Target, default_host: bool) -> Result<Plan, String> {
    let (version, text) = detect_version("containerd", &["--version"]).map_err(|e| {
        format!("containerd: cannot tell its version, which decides what config.toml needs: {e}. Install containerd (or put it on PATH) and run setup again")
    })?;
    let config = or_under(&paths.containerd_config, &paths.root, CONFIG_TOML);
    let old = read_optional(&config).map_err(|e| format!("containerd: {e}"))?;
    let parsed: Option<DocumentMut> = old.as_deref().and_then(|t| t.parse().ok());
    let dir = hosts_dir(paths, parsed.as_ref());
    let new = merge_config(old.as_deref(), version, &dir)
        .map_err(|e| format!("containerd: {} {e}", config.display()))?;
    let mut changes = vec![Change {
        path: config.clone(),
        old,
        new,
        new_mode: 0o644,
    }];
    let mut entries: Vec<(String, Option<String>)> = target
        .registries
        .iter()
        .map(|(name, url, _)| {
            let server = if name == crate::reference::DOCKER_HUB
                && url.host_str() == Some("registry-1.docker.io")
            {
                "https://registry-1.docker.io".to_owned()
            } else {
                origin(url)
            };
            (name.clone(), Some(server))
        })
        .collect();
    if default_host {
        entries.push(("_default".into(), None));
    }
    for (name, server) in entries {
        let path = dir.join(&name).join("hosts.toml");
        let old = read_optional(&path).map_err(|e| format!("containerd: {e}"))?;
        let ca = target
            .ca
            .as_ref()
            .filter(|_| target.mirror.scheme() == "https")
            .map(|c| c.0.as_path());
        let new = merge_hosts_toml(old.as_deref(), &target.mirror, server.as_deref(), ca)
            .map_err(|e| format!("containerd: {} {e}", path.display()))?;
        changes.push(Change {
            path,
            old,
            new,
            new_mode: 0o644,
        });
    }
    let mut notes = vec![format!(
        "containerd {text}: CRI reads {} through config_path",
        dir.display()
    )];
    notes.extend(target.trust_note("containerd", "hosts.toml ca = \"/path/ca.crt\""));
    if version.0 >= 2 && version.1 >= 1 || version.0 > 2 {
        notes.push("containerd 2.1+: use_local_image_pull = true, so CRI pulls read the hosts directory (spegel#1272)".into());
    }
    if version.0 == 2 && version.1 >= 2 || version.0 > 2 {
        notes.push("containerd 2.2+: config_path is one directory, not the default list (containerd#12636)".into());
    }
    notes.push(format!(
        "ctr reads no config.toml: ctr images pull --hosts-dir {} ...",
        dir.display()
    ));
    Ok(Plan {
        client: "containerd",
        version: Some(text),
        changes,
        restart: "systemctl restart containerd".into(),
        notes,
    })
}

/// `doctor` for containerd: config.toml's CRI `config_path` is a hosts directory whose
/// docker.io (or `_default`) hosts.toml names this mirror, in the form this version honours;
/// the mirror answers there; `ctr content fetch --metadata-only` through that directory
/// reaches it.
pub fn doctor(ctx: &Context) -> Verdict {
    let args = &ctx.args;
    let (version, text) = match detect_version("containerd", &["--version"]) {
        Ok(v) => v,
        Err(e) => return Verdict::skip("containerd", format!("not installed here ({e})")),
    };
    let v = Some(text.clone());
    let fail = |r: String, f: String| Verdict::fail("containerd", v.clone(), r, f);
    let config = or_under(&args.paths.containerd_config, &args.paths.root, CONFIG_TOML);
    let setup_cmd = format!(
        "regcache setup containerd --mirror {} --containerd-config {}{} && systemctl restart containerd",
        ctx.mirror_url(),
        config.display(),
        args.paths.containerd_hosts_dir.as_ref().map_or(String::new(), |d| format!(" --containerd-hosts-dir {}", d.display()))
    );
    let doc: DocumentMut = match read_optional(&config) {
        Ok(Some(t)) => match t.parse() {
            Ok(d) => d,
            Err(e) => {
                return fail(
                    format!("{} is not TOML ({e})", config.display()),
                    format!("fix {} by hand", config.display()),
                )
            }
        },
        Ok(None) => DocumentMut::new(),
        Err(e) => return fail(e.to_string(), "run doctor as root".into()),
    };
    let schema = schema(&doc);
    let dirs: Vec<PathBuf> = config_path(&doc)
        .iter()
        .map(|d| super::files::reroot(&args.paths.root, d))
        .collect();
    let want_dir = args
        .paths
        .containerd_hosts_dir
        .clone()
        .unwrap_or_else(|| super::files::under(&args.paths.root, HOSTS_DIR));
    let table = registry_table_path(schema).join(".");
    if dirs.is_empty() {
        return fail(
            format!(
                "{} sets no config_path in [{table}]: CRI pulls ignore {}",
                config.display(),
                want_dir.display()
            ),
            setup_cmd,
        );
    }
    if (version.0 == 2 && version.1 >= 2 || version.0 > 2) && dirs.len() > 1 {
        return fail(
            format!("config_path is a list ({}): containerd {}.{} then ignores the mirror (containerd#12636)", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":"), version.0, version.1),
            setup_cmd,
        );
    }
    if version.0 == 2 && version.1 >= 1 || version.0 > 2 {
        let local = get(
            &doc,
            &[
                "plugins",
                "io.containerd.cri.v1.images",
                "use_local_image_pull",
            ],
        )
        .and_then(Item::as_bool);
        if schema != 3 || local != Some(true) {
            return fail(
                format!("containerd {}.{} pulls through the transfer service, which ignores config_path, unless [plugins.\"io.containerd.cri.v1.images\"] use_local_image_pull = true (version 3 config; spegel#1272)", version.0, version.1),
                setup_cmd,
            );
        }
    }
    // The hosts.toml the CRI plugin reads for docker.io.
    let found = dirs.iter().find_map(|d| {
        ["docker.io", "_default"].iter().find_map(|r| {
            let p = d.join(r).join("hosts.toml");
            p.exists().then_some((d.clone(), r.to_string(), p))
        })
    });
    let Some((dir, registry, hosts_path)) = found else {
        let hint = if want_dir.join("docker.io/hosts.toml").exists() && !dirs.contains(&want_dir) {
            format!(
                "; {} has one, but that directory is not in config_path",
                want_dir.display()
            )
        } else {
            String::new()
        };
        return fail(
            format!(
                "config_path {} has no docker.io or _default hosts.toml{hint}",
                dirs[0].display()
            ),
            setup_cmd,
        );
    };
    if !dirs.contains(&want_dir) && args.paths.containerd_hosts_dir.is_some() {
        return fail(
            format!(
                "the hosts directory {} is not in config_path ({}): CRI pulls ignore it",
                want_dir.display(),
                dirs[0].display()
            ),
            setup_cmd,
        );
    }
    let hosts: DocumentMut =
        match std::fs::read_to_string(&hosts_path).map(|t| t.parse::<DocumentMut>()) {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                return fail(
                    format!("{} is not TOML ({e})", hosts_path.display()),
                    setup_cmd,
                )
            }
            Err(e) => {
                return fail(
                    format!("cannot read {}: {e}", hosts_path.display()),
                    "run doctor as root".into(),
                )
            }
        };
    if registry == "_default" && hosts.get("server").is_some() {
        return fail(
            format!(
                "{} names a server: every registry's fallback would go there",
                hosts_path.display()
            ),
            format!("delete the server line from {}", hosts_path.display()),
        );
    }
    let named: Vec<(Url, Option<PathBuf>)> = hosts
        .get("host")
        .and_then(Item::as_table_like)
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| {
                    let u = Url::parse(k).ok()?;
                    let ca = v
                        .as_table_like()
                        .and_then(|t| t.get("ca"))
                        .and_then(Item::as_str)
                        .map(PathBuf::from);
                    Some((u, ca))
                })
                .collect()
        })
        .unwrap_or_default();
    let Some((url, ca)) = named
        .iter()
        .find(|(u, _)| ctx.names(u) == super::doctor::Named::Yes)
        .or(named.first())
        .cloned()
    else {
        return fail(
            format!(
                "{} names no [host.\"...\"]: pulls go to the registry itself",
                hosts_path.display()
            ),
            setup_cmd,
        );
    };
    let ca: Vec<PathBuf> = ca.into_iter().collect();
    if let Err((r, f)) = check_address(ctx, &url, &ca, &setup_cmd) {
        return fail(format!("{}: {r}", hosts_path.display()), f);
    }
    if args.no_pull {
        return Verdict::pass(
            "containerd",
            v,
            format!(
                "config_path {} → {} names {} (no pull: --no-pull)",
                dir.display(),
                registry,
                origin(&url)
            ),
        );
    }
    let address = args
        .containerd_address
        .to_string_lossy()
        .trim_start_matches("unix://")
        .to_owned();
    if let Err(e) = std::os::unix::net::UnixStream::connect(&address) {
        return fail(
            format!("containerd does not answer at {address}: {e}"),
            "start containerd (systemctl start containerd), or pass --containerd-address /path/to/containerd.sock".into(),
        );
    }
    let image = format!("docker.io/{}", args.image.trim_start_matches("docker.io/"));
    let mut cmd = std::process::Command::new("ctr");
    cmd.arg("-a")
        .arg(&args.containerd_address)
        .args([
            "-n",
            "regcache-doctor",
            "content",
            "fetch",
            "--metadata-only",
            "--hosts-dir",
        ])
        .arg(&dir)
        .arg(&image);
    match prove(
        ctx,
        ClientKind::Containerd,
        &format!(
            "ctr content fetch --metadata-only --hosts-dir {} {image}",
            dir.display()
        ),
        &mut cmd,
        "check the mirror's log for the request, and containerd's (journalctl -u containerd)",
    ) {
        Ok(seen) => Verdict::pass(
            "containerd",
            v,
            format!(
                "config_path {} → {registry}/hosts.toml names {}; ctr reached it ({} {} → {})",
                dir.display(),
                origin(&url),
                seen.method,
                seen.path,
                seen.status
            ),
        ),
        Err((r, f)) => fail(r, f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_for_each_version() {
        let dir = Path::new("/etc/containerd/certs.d");
        let v1 = merge_config(None, (1, 6, 20), dir).unwrap();
        assert!(v1.contains("version = 2"), "{v1}");
        assert!(
            v1.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry]"),
            "{v1}"
        );
        assert!(
            v1.contains("config_path = \"/etc/containerd/certs.d\""),
            "{v1}"
        );
        let v21 = merge_config(None, (2, 1, 0), dir).unwrap();
        assert!(
            v21.contains("version = 3") && v21.contains("use_local_image_pull = true"),
            "{v21}"
        );
        assert!(
            v21.contains("[plugins.\"io.containerd.cri.v1.images\".registry]"),
            "{v21}"
        );
        let v20 = merge_config(None, (2, 0, 5), dir).unwrap();
        assert!(!v20.contains("use_local_image_pull"), "{v20}");
        // 2.2's default list becomes one directory.
        let listed = "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n";
        let v22 = merge_config(Some(listed), (2, 2, 0), dir).unwrap();
        assert!(
            v22.contains("config_path = \"/etc/containerd/certs.d\"")
                && !v22.contains("docker/certs.d"),
            "{v22}"
        );
        // Comments and other keys kept.
        let mine = "# mine\nversion = 2\nroot = \"/srv/c\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\" # keep\n";
        let out = merge_config(Some(mine), (1, 7, 0), dir).unwrap();
        assert!(
            out.starts_with("# mine\nversion = 2\nroot = \"/srv/c\"\n"),
            "{out}"
        );
        assert!(out.contains("snapshotter = \"overlayfs\" # keep"), "{out}");
        assert_eq!(
            merge_config(Some(&out), (1, 7, 0), dir).unwrap(),
            out,
            "idempotent"
        );
        assert!(merge_config(Some("root = \"/x\"\n"), (1, 6, 0), dir)
            .unwrap_err()
            .contains("version"));
        assert!(merge_config(Some("version = 2\n"), (2, 1, 0), dir)
            .unwrap_err()
            .contains("migrate"));
        let mirrors = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://x\"]\n";
        assert!(merge_config(Some(mirrors), (1, 6, 0), dir)
            .unwrap_err()
            .contains("12612"));
    }

    #[test]
    fn hosts_toml() {
        let m = Url::parse("http://127.0.0.1:5000").unwrap();
        let new = merge_hosts_toml(None, &m, Some("https://registry-1.docker.io"), None).unwrap();
        assert!(
            new.starts_with("server = \"https://registry-1.docker.io\"\n"),
            "{new}"
        );
        assert!(
            new.contains(
                "[host.\"http://127.0.0.1:5000\"]\ncapabilities = [\"pull\", \"resolve\"]"
            ),
            "{new}"
        );
        let def = merge_hosts_toml(None, &m, None, None).unwrap();
        assert!(!def.contains("server"), "_default names no server: {def}");
        let theirs = "server = \"https://registry-1.docker.io\"\n# their mirror\n[host.\"https://mirror.gcr.io\"]\n  capabilities = [\"pull\"]\n";
        let out = merge_hosts_toml(Some(theirs), &m, None, None).unwrap();
        let ours = out.find("127.0.0.1:5000").unwrap();
        let gcr = out.find("mirror.gcr.io").unwrap();
        assert!(ours < gcr, "ours first: {out}");
        assert!(out.contains("# their mirror"), "{out}");
        assert_eq!(
            merge_hosts_toml(Some(&out), &m, None, None).unwrap(),
            out,
            "idempotent"
        );
    }
}
