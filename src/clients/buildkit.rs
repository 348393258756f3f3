//! BuildKit's buildkitd: `buildkitd.toml` `[registry."docker.io"] mirrors = ["host:port"]`, and
//! `http = true` there for a plain-HTTP mirror (BuildKit docs `buildkitd.toml.md`). buildkitd
//! ignores dockerd's `registry-mirrors` (docker/setup-buildx-action#430). Its mirror entries
//! are `host[:port]` without a scheme; the `[registry."<mirror host:port>"]` table says how to
//! reach the mirror.

use toml_edit::{value, Array, DocumentMut, Item, Table};

use super::doctor::{or_under, Context, Verdict};
use super::files::{read_optional, Change};
use super::setup::{detect_version, host_port, ClientPaths, Plan, Target};

/// buildkitd's config file (rootful).
pub const BUILDKITD_TOML: &str = "/etc/buildkit/buildkitd.toml";

/// buildkitd.toml with the mirror first in `[registry."docker.io"] mirrors`, and
/// `[registry."<mirror>"] http = true` for a plain-HTTP mirror; comments and other keys kept.
///
/// Errors: the file is not TOML, or `mirrors` is not a list of strings.
pub fn merge(old: Option<&str>, target: &Target) -> Result<String, String> {
    let mut doc: DocumentMut = match old {
        Some(t) if !t.trim().is_empty() => t
            .parse()
            .map_err(|e| format!("is not TOML ({e}); fix it by hand first"))?,
        _ => DocumentMut::new(),
    };
    let hp = host_port(&target.mirror);
    let registry = doc
        .entry("registry")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or("[registry] is not a table")?;
    registry.set_implicit(true);
    let hub = registry
        .entry("docker.io")
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or("[registry.\"docker.io\"] is not a table")?;
    let mut list: Vec<String> = match hub.get("mirrors") {
        None => Vec::new(),
        Some(m) => m
            .as_array()
            .ok_or("[registry.\"docker.io\"] mirrors is not a list")?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or("mirrors holds something other than strings")
            })
            .collect::<Result<_, _>>()?,
    };
    list.retain(|m| m != &hp);
    list.insert(0, hp.clone());
    if hub
        .get("mirrors")
        .and_then(Item::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
        != Some(list.iter().map(String::as_str).collect())
    {
        let mut a = Array::new();
        for m in &list {
            a.push(m.as_str());
        }
        hub["mirrors"] = value(a);
    }
    if let (Some((ca, _)), "https") = (&target.ca, target.mirror.scheme()) {
        let t = registry
            .entry(&hp)
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("[registry.\"{hp}\"] is not a table"))?;
        let ca = ca.display().to_string();
        let has = t
            .get("ca")
            .and_then(Item::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(ca.as_str())));
        if !has {
            let mut a = t
                .get("ca")
                .and_then(Item::as_array)
                .cloned()
                .unwrap_or_default();
            a.push(ca);
            t["ca"] = value(a);
        }
    }
    if target.mirror.scheme() == "http" {
        let t = registry
            .entry(&hp)
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("[registry.\"{hp}\"] is not a table"))?;
        if t.get("http").and_then(Item::as_bool) != Some(true) {
            t["http"] = value(true);
        }
    }
    Ok(doc.to_string())
}

/// `setup buildkit`: buildkitd.toml.
///
/// Errors: a malformed existing buildkitd.toml.
pub fn plan(paths: &ClientPaths, target: &Target) -> Result<Plan, String> {
    let path = or_under(&paths.buildkitd_config, &paths.root, BUILDKITD_TOML);
    let version = detect_version("buildkitd", &["--version"]).map(|v| v.1);
    let mut notes = Vec::new();
    if let Err(e) = &version {
        notes.push(format!("{e}: [registry.\"docker.io\"] mirrors is read by every buildkitd since v0.6; written anyway"));
    }
    notes.extend(target.trust_note(
        "buildkitd",
        "[registry.\"HOST:PORT\"] ca = [\"/path/ca.crt\"]",
    ));
    notes.push("docker buildx with the docker-container driver: pass this file (docker buildx create --config FILE)".into());
    let old = read_optional(&path).map_err(|e| format!("buildkit: {e}"))?;
    let new =
        merge(old.as_deref(), target).map_err(|e| format!("buildkit: {} {e}", path.display()))?;
    Ok(Plan {
        client: "buildkit",
        version: version.ok(),
        changes: vec![Change {
            path,
            old,
            new,
            new_mode: 0o644,
        }],
        restart: "systemctl restart buildkit (or recreate the buildx builder)".into(),
        notes,
    })
}

/// `doctor` for buildkitd: installed or not; with it, the config names this mirror. (No
/// end-to-end pull: that needs a build; left to `buildctl`.)
pub fn doctor(ctx: &Context) -> Verdict {
    let args = &ctx.args;
    let version = match detect_version("buildkitd", &["--version"]) {
        Ok(v) => Some(v.1),
        Err(e) => return Verdict::skip("buildkit", format!("not installed here ({e})")),
    };
    let path = or_under(
        &args.paths.buildkitd_config,
        &args.paths.root,
        BUILDKITD_TOML,
    );
    let setup_cmd = format!(
        "regcache setup buildkit --mirror {} --buildkitd-config {}",
        ctx.mirror_url(),
        path.display()
    );
    let text = read_optional(&path).ok().flatten().unwrap_or_default();
    let doc: DocumentMut = text.parse().unwrap_or_default();
    let mirrors: Vec<String> = doc
        .get("registry")
        .and_then(|r| r.get("docker.io"))
        .and_then(|h| h.get("mirrors"))
        .and_then(Item::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let named = mirrors.iter().find(|m| {
        let http = doc
            .get("registry")
            .and_then(|r| r.get(m.as_str()))
            .and_then(|t| t.get("http"))
            .and_then(Item::as_bool)
            == Some(true);
        let scheme = if http { "http" } else { "https" };
        url::Url::parse(&format!("{scheme}://{m}"))
            .is_ok_and(|u| ctx.names(&u) == super::doctor::Named::Yes)
    });
    match named {
        Some(m) => Verdict::pass(
            "buildkit",
            version,
            format!(
                "{} mirrors docker.io at {m} (config checked only: no build run)",
                path.display()
            ),
        ),
        None => Verdict::fail(
            "buildkit",
            version,
            format!(
                "{} gives docker.io no mirror at this mirror ({mirrors:?})",
                path.display()
            ),
            setup_cmd,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_and_adds() {
        let t = Target {
            mirror: url::Url::parse("http://127.0.0.1:5000").unwrap(),
            registries: vec![],
            ca: None,
        };
        let new = merge(None, &t).unwrap();
        assert!(
            new.contains("[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000\"]"),
            "{new}"
        );
        assert!(
            new.contains("[registry.\"127.0.0.1:5000\"]\nhttp = true"),
            "{new}"
        );
        let theirs =
            "# mine\ndebug = true\n[registry.\"docker.io\"]\n  mirrors = [\"mirror.gcr.io\"]\n";
        let out = merge(Some(theirs), &t).unwrap();
        assert!(out.starts_with("# mine\ndebug = true\n"), "{out}");
        assert!(
            out.contains("mirrors = [\"127.0.0.1:5000\", \"mirror.gcr.io\"]"),
            "{out}"
        );
        assert_eq!(merge(Some(&out), &t).unwrap(), out);
    }
}
