//! podman, skopeo, buildah and CRI-O (containers/image): a drop-in
//! `registries.conf.d/50-regcache.conf` with one `[[registry]]` per mirrored registry and a
//! `[[registry.mirror]]` at `MIRROR/<prefix>` (containers-registries.conf(5), version 2
//! format). The mirror's path prefix is the registry's name, or its `prefix` alias: a name
//! with a port (`registry.internal:5443`) cannot be a path component, containers/image's
//! reference parser refuses `127.0.0.1:5000/registry.internal:5443` ("invalid reference
//! format"), so such a registry needs `prefix = "internal-reg"` in regcache's config.

use url::Url;

use super::doctor::{check_address, or_under, prove, Context, Verdict};
use super::files::{read_optional, Change};
use super::setup::{detect_version, host_port, ClientPaths, Plan, Target};
use super::ClientKind;

/// containers/image's drop-in directory.
pub const REGISTRIES_CONF_D: &str = "/etc/containers/registries.conf.d";
/// The drop-in setup writes (read after lower-numbered ones; later files override entries
/// with the same `location`).
pub const DROP_IN: &str = "50-regcache.conf";

/// The path prefix containers/image clients reach `registry` at on the mirror: its `prefix`
/// alias, else its name when that has no port. `None`: a name with a port and no alias.
pub fn path_prefix(registry: &str, alias: Option<&str>) -> Option<String> {
    match alias {
        Some(a) => Some(a.to_owned()),
        None if registry.contains(':') => None,
        None => Some(registry.to_owned()),
    }
}

/// The drop-in's text: for each registry with a usable prefix, its `[[registry]]` and the
/// mirror (`insecure = true` for a plain-HTTP mirror). Returns the text and the registries
/// left out (a port in the name and no `prefix`).
pub fn drop_in(target: &Target) -> (String, Vec<String>) {
    let mut out = String::from(
        "# Written by `regcache setup podman`: each registry's pulls go to the regcache mirror\n\
         # first, then to the registry itself. See containers-registries.conf(5).\n",
    );
    let mut skipped = Vec::new();
    let insecure = target.mirror.scheme() == "http";
    for (name, _, alias) in &target.registries {
        let Some(prefix) = path_prefix(name, alias.as_deref()) else {
            skipped.push(name.clone());
            continue;
        };
        out.push_str(&format!(
            "\n[[registry]]\nlocation = \"{name}\"\n\n[[registry.mirror]]\nlocation = \"{}/{prefix}\"\n{}",
            host_port(&target.mirror),
            if insecure { "insecure = true\n" } else { "" }
        ));
    }
    (out, skipped)
}

/// `setup podman`: the drop-in.
///
/// Errors: none but an unreadable existing drop-in.
pub fn plan(paths: &ClientPaths, target: &Target) -> Result<Plan, String> {
    let dir = or_under(&paths.registries_conf_d, &paths.root, REGISTRIES_CONF_D);
    let path = dir.join(DROP_IN);
    let version = detect_version("podman", &["--version"])
        .or_else(|_| detect_version("skopeo", &["--version"]))
        .map(|v| v.1);
    let mut notes = Vec::new();
    if let Err(e) = &version {
        notes.push(format!("{e}: registries.conf.d drop-ins with [[registry.mirror]] are read by every containers/image since v5 (podman 2+, CRI-O 1.17+)"));
    }
    let (new, skipped) = drop_in(target);
    for s in skipped {
        notes.push(format!("{s} left out: its name has a port, which cannot be a path prefix (containers/image refuses \"MIRROR/{s}/...\"); give it prefix = \"<alias>\" in [registries.\"{s}\"] of regcache's config and run setup again"));
    }
    let old = read_optional(&path).map_err(|e| format!("podman: {e}"))?;
    let mut changes = vec![Change {
        path,
        old,
        new,
        new_mode: 0o644,
    }];
    let ca_path = super::files::under(
        &paths.root,
        &format!(
            "/etc/containers/certs.d/{}/ca.crt",
            host_port(&target.mirror)
        ),
    );
    if let (Some((_, pem)), "https") = (&target.ca, target.mirror.scheme()) {
        let old = read_optional(&ca_path).map_err(|e| format!("podman: {e}"))?;
        changes.push(Change {
            path: ca_path.clone(),
            old,
            new: pem.clone(),
            new_mode: 0o644,
        });
    }
    notes.extend(target.trust_note("containers/image", &ca_path.display().to_string()));
    Ok(Plan {
        client: "podman",
        version: version.ok(),
        changes,
        restart: "nothing for podman/skopeo (read at each run); systemctl restart crio for CRI-O"
            .into(),
        notes,
    })
}

/// The mirror locations (`host:port/prefix`, insecure) the drop-ins give docker.io.
fn docker_io_mirrors(text: &str) -> Vec<(String, bool)> {
    let Ok(doc) = text.parse::<toml_edit::DocumentMut>() else {
        return Vec::new();
    };
    let Some(regs) = doc.get("registry").and_then(|r| r.as_array_of_tables()) else {
        return Vec::new();
    };
    regs.iter()
        .filter(|r| {
            let loc = r
                .get("location")
                .or(r.get("prefix"))
                .and_then(|l| l.as_str());
            matches!(loc, Some("docker.io") | Some("registry-1.docker.io"))
        })
        .flat_map(|r| {
            r.get("mirror")
                .and_then(|m| m.as_array_of_tables())
                .map(|ms| {
                    ms.iter()
                        .filter_map(|m| {
                            let loc = m.get("location")?.as_str()?.to_owned();
                            let insecure =
                                m.get("insecure").and_then(|i| i.as_bool()).unwrap_or(false);
                            Some((loc, insecure))
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// `doctor` for podman: a drop-in gives docker.io a mirror at this mirror's address (plain
/// HTTP only with `insecure = true`), the mirror answers, and `skopeo inspect` of the probe
/// image through that configuration reaches it.
pub fn doctor(ctx: &Context) -> Verdict {
    let args = &ctx.args;
    let version = match detect_version("podman", &["--version"])
        .or_else(|_| detect_version("skopeo", &["--version"]))
    {
        Ok(v) => Some(v.1),
        Err(e) => return Verdict::skip("podman", format!("not installed here ({e})")),
    };
    let v = version.clone();
    let fail = |r: String, f: String| Verdict::fail("podman", v.clone(), r, f);
    let dir = or_under(
        &args.paths.registries_conf_d,
        &args.paths.root,
        REGISTRIES_CONF_D,
    );
    let setup_cmd = format!(
        "regcache setup podman --mirror {} --registries-conf-d {}",
        ctx.mirror_url(),
        dir.display()
    );
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    // The last drop-in naming docker.io wins.
    let found = files.iter().rev().find_map(|f| {
        let text = read_optional(f).ok().flatten()?;
        let m = docker_io_mirrors(&text);
        (!m.is_empty()).then(|| (f.clone(), text, m))
    });
    let Some((file, text, mirrors)) = found else {
        return fail(
            format!("no drop-in in {} gives docker.io a mirror", dir.display()),
            setup_cmd,
        );
    };
    let parse = |(loc, insecure): &(String, bool)| {
        let (hp, _) = loc.split_once('/').unwrap_or((loc, ""));
        let scheme = if *insecure { "http" } else { "https" };
        Url::parse(&format!("{scheme}://{hp}"))
            .ok()
            .map(|u| (u, *insecure, loc.clone()))
    };
    let cands: Vec<_> = mirrors.iter().filter_map(parse).collect();
    let Some((url, _, loc)) = cands
        .iter()
        .find(|(u, _, _)| ctx.names(u) == super::doctor::Named::Yes)
        .or(cands.first())
        .cloned()
    else {
        return fail(
            format!("{}: no usable mirror location", file.display()),
            setup_cmd,
        );
    };
    let ca: Vec<_> = [super::files::under(
        &args.paths.root,
        &format!("/etc/containers/certs.d/{}/ca.crt", host_port(&url)),
    )]
    .into_iter()
    .filter(|p| p.exists())
    .collect();
    if let Err((r, f)) = check_address(ctx, &url, &ca, &setup_cmd) {
        let r = if r.contains("TLS") && ctx.listeners.iter().all(|(s, _)| s == "http") {
            format!("{r} (the mirror serves plain HTTP: the drop-in needs insecure = true)")
        } else {
            r
        };
        return fail(format!("{}: mirror {loc}: {r}", file.display()), f);
    }
    if args.no_pull {
        return Verdict::pass(
            "podman",
            version,
            format!(
                "{} mirrors docker.io at {loc} (no pull: --no-pull)",
                file.display()
            ),
        );
    }
    // skopeo reads one registries.conf here: the drop-in found, as its whole configuration.
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return fail(
                format!("cannot make a scratch directory: {e}"),
                "free /tmp".into(),
            )
        }
    };
    let conf = scratch.path().join("registries.conf");
    if let Err(e) = std::fs::write(&conf, &text) {
        return fail(
            format!("cannot write {}: {e}", conf.display()),
            "free /tmp".into(),
        );
    }
    let image = format!("docker.io/{}", args.image.trim_start_matches("docker.io/"));
    let mut cmd = std::process::Command::new("skopeo");
    cmd.arg("--registries-conf")
        .arg(&conf)
        .args(["inspect", "--raw", "--no-creds"])
        .arg(format!("docker://{image}"))
        .env("REGISTRY_AUTH_FILE", scratch.path().join("auth.json"));
    match prove(
        ctx,
        ClientKind::Podman,
        &format!("skopeo inspect --raw docker://{image}"),
        &mut cmd,
        "check the mirror's log for the request",
    ) {
        Ok(seen) => Verdict::pass(
            "podman",
            version,
            format!(
                "{} mirrors docker.io at {loc}; skopeo reached it ({} {} → {})",
                file.display(),
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
    fn drop_in_uses_prefix_aliases() {
        let t = Target {
            mirror: Url::parse("http://127.0.0.1:5000").unwrap(),
            registries: vec![
                (
                    "docker.io".into(),
                    Url::parse("https://registry-1.docker.io").unwrap(),
                    None,
                ),
                (
                    "registry.internal:5443".into(),
                    Url::parse("https://registry.internal:5443").unwrap(),
                    Some("internal".into()),
                ),
                (
                    "other:5000".into(),
                    Url::parse("https://other:5000").unwrap(),
                    None,
                ),
            ],
            ca: None,
        };
        let (text, skipped) = drop_in(&t);
        assert!(
            text.contains("location = \"127.0.0.1:5000/docker.io\"\ninsecure = true"),
            "{text}"
        );
        assert!(text.contains("location = \"registry.internal:5443\"\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:5000/internal\""), "{text}");
        assert_eq!(skipped, ["other:5000"]);
        assert_eq!(
            docker_io_mirrors(&text),
            [("127.0.0.1:5000/docker.io".to_owned(), true)]
        );
    }
}
