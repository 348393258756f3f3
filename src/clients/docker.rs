//! dockerd: `daemon.json` `registry-mirrors` (dockerd uses mirrors for Docker Hub only, and a
//! plain-HTTP mirror only on a loopback address or one in `insecure-registries`; Docker docs
//! "Registry as a pull through cache", moby `registry.ValidateMirror`). dockerd reloads
//! `registry-mirrors` on SIGHUP (`systemctl reload docker`).

use serde_json::Value;
use url::Url;

use super::doctor::{check_address, or_under, prove, Context, Verdict};
use super::files::{read_optional, Change};
use super::setup::{detect_version, origin, ClientPaths, Plan, Target};
use super::ClientKind;

/// dockerd's config file.
pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// `daemon.json` with `mirror` first in `registry-mirrors` (an equal entry, with or without a
/// trailing slash, moves to the front), every other key kept in its order.
///
/// Errors: the file is not a JSON object, or `registry-mirrors` is not a list of strings
/// (the message names the file's problem; nothing is written).
pub fn merge_daemon_json(old: Option<&str>, mirror: &Url) -> Result<String, String> {
    let mut doc: Value = match old.map(str::trim) {
        None | Some("") => Value::Object(Default::default()),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| format!("is not JSON ({e}); fix it by hand first"))?,
    };
    let obj = doc
        .as_object_mut()
        .ok_or("is not a JSON object ({...}); fix it by hand first")?;
    let want = origin(mirror);
    let list = obj
        .entry("registry-mirrors")
        .or_insert_with(|| Value::Array(Vec::new()));
    let arr = list
        .as_array_mut()
        .ok_or("\"registry-mirrors\" is not a list; make it [\"https://...\"] first")?;
    if arr.iter().any(|v| !v.is_string()) {
        return Err("\"registry-mirrors\" holds something other than URLs".into());
    }
    arr.retain(|v| v.as_str().map(|s| s.trim_end_matches('/')) != Some(want.as_str()));
    arr.insert(0, Value::String(want));
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    text.push('\n');
    Ok(text)
}

/// `setup docker`: the change to daemon.json.
///
/// Errors: a plain-HTTP mirror off loopback (dockerd would ignore it), an unreadable or
/// malformed daemon.json.
pub fn plan(paths: &ClientPaths, target: &Target) -> Result<Plan, String> {
    let path = or_under(&paths.docker_config, &paths.root, DAEMON_JSON);
    if target.mirror.scheme() == "http" && !super::doctor::is_loopback(&target.mirror) {
        return Err(format!(
            "docker: dockerd uses a plain-HTTP mirror only on a loopback address, not {}: serve HTTPS (regcache certs init, then tls_cert/tls_key) and pass --mirror https://..., or run setup with --mirror http://127.0.0.1:PORT on the mirror's host",
            origin(&target.mirror)
        ));
    }
    let version = detect_version("dockerd", &["--version"]).map(|v| v.1);
    let mut notes = Vec::new();
    if let Err(e) = &version {
        notes.push(format!("{e}; registry-mirrors is read the same by every dockerd version, so it is written anyway"));
    }
    if target
        .registries
        .iter()
        .any(|(r, _, _)| r != crate::reference::DOCKER_HUB)
    {
        notes.push("dockerd mirrors Docker Hub only: pull other registries as MIRROR/<registry>/... or through containerd".into());
    }
    let old = read_optional(&path).map_err(|e| format!("docker: {e}"))?;
    let new = merge_daemon_json(old.as_deref(), &target.mirror)
        .map_err(|e| format!("docker: {} {e}", path.display()))?;
    let mut changes = vec![Change {
        path,
        old,
        new,
        new_mode: 0o644,
    }];
    let ca_path = super::files::under(
        &paths.root,
        &format!(
            "/etc/docker/certs.d/{}/ca.crt",
            super::setup::host_port(&target.mirror)
        ),
    );
    if let (Some((_, pem)), "https") = (&target.ca, target.mirror.scheme()) {
        let old = read_optional(&ca_path).map_err(|e| format!("docker: {e}"))?;
        changes.push(Change {
            path: ca_path.clone(),
            old,
            new: pem.clone(),
            new_mode: 0o644,
        });
    }
    notes.extend(target.trust_note("dockerd", &ca_path.display().to_string()));
    Ok(Plan {
        client: "docker",
        version: version.ok(),
        changes,
        restart: "systemctl reload docker (dockerd rereads registry-mirrors on SIGHUP)".into(),
        notes,
    })
}

/// `doctor` for dockerd: daemon.json names this mirror (scheme usable by dockerd), the running
/// dockerd has loaded it (`docker info`), the mirror answers there, and a `docker pull` of the
/// probe image reaches it.
pub fn doctor(ctx: &Context) -> Verdict {
    let args = &ctx.args;
    let version = match detect_version("dockerd", &["--version"]) {
        Ok(v) => Some(v.1),
        Err(e) => return Verdict::skip("docker", format!("not installed here ({e})")),
    };
    let v = version.clone();
    let fail = |r: String, f: String| Verdict::fail("docker", v.clone(), r, f);
    let path = or_under(&args.paths.docker_config, &args.paths.root, DAEMON_JSON);
    let setup_cmd = format!(
        "regcache setup docker --mirror {} --docker-config {} && systemctl reload docker",
        ctx.mirror_url(),
        path.display()
    );
    let text = match read_optional(&path) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return fail(
                format!("{} does not exist: no registry mirror", path.display()),
                setup_cmd,
            )
        }
        Err(e) => return fail(e.to_string(), "run doctor as root".into()),
    };
    let doc: Value = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => {
            return fail(
                format!(
                    "{} is not JSON ({e}): dockerd will not start",
                    path.display()
                ),
                format!("fix {} by hand", path.display()),
            )
        }
    };
    let mirrors: Vec<String> = doc["registry-mirrors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let insecure: Vec<String> = doc["insecure-registries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if mirrors.is_empty() {
        return fail(
            format!(
                "{} names no registry-mirrors: pulls go to Docker Hub",
                path.display()
            ),
            setup_cmd,
        );
    }
    // The first entry naming this mirror, else the first problem of the first entry.
    let urls: Vec<Url> = mirrors.iter().filter_map(|m| Url::parse(m).ok()).collect();
    let Some(url) = urls
        .iter()
        .find(|u| ctx.names(u) == super::doctor::Named::Yes)
        .or(urls.first())
    else {
        return fail(
            format!("registry-mirrors {mirrors:?} holds no URL"),
            setup_cmd,
        );
    };
    if url.scheme() == "http"
        && !super::doctor::is_loopback(url)
        && !insecure.iter().any(|i| {
            i.trim_end_matches('/') == super::setup::host_port(url)
                || i.trim_end_matches('/') == origin(url)
        })
    {
        return fail(
            format!("registry-mirrors names {} over plain HTTP on a non-loopback address: dockerd will not use it (only loopback, or insecure-registries)", origin(url)),
            "serve HTTPS there (regcache certs init, tls_cert/tls_key) and name https://..., or name http://127.0.0.1:PORT on the mirror's own host".into(),
        );
    }
    let host_port = super::setup::host_port(url);
    let ca = vec![super::files::under(
        &args.paths.root,
        &format!("/etc/docker/certs.d/{host_port}/ca.crt"),
    )];
    let ca: Vec<_> = ca
        .into_iter()
        .filter(|p| url.scheme() == "https" && p.exists())
        .collect();
    let ca_hint = if ca.is_empty() && url.scheme() == "https" {
        vec![super::files::under(
            &args.paths.root,
            &format!("/etc/docker/certs.d/{host_port}/ca.crt"),
        )]
    } else {
        ca.clone()
    };
    let answered = check_address(ctx, url, &ca, &setup_cmd);
    if answered == Ok(401) {
        // dockerd sends a mirror no credentials of its own and moves on to the Hub
        // (nora PR#660).
        return fail(
            format!("{} asks for credentials (401 on /v2/): dockerd skips such a mirror and pulls from Docker Hub", origin(url)),
            format!("name a listener dockerd may use without a password: one without htpasswd on loopback, or one with client_ca and the client certificate in /etc/docker/certs.d/{host_port}/client.cert and client.key (regcache certs client)"),
        );
    }
    if let Err((r, f)) = answered {
        let f = if r.contains("TLS") {
            format!("copy the mirror's ca.crt to {}", ca_hint[0].display())
        } else {
            f
        };
        return fail(format!("{}: {r}", path.display()), f);
    }
    let docker = || {
        let mut c = std::process::Command::new("docker");
        if let Some(h) = &args.docker_host {
            c.env("DOCKER_HOST", h);
        }
        c.env("DOCKER_CLI_HINTS", "false");
        c
    };
    // The running dockerd's own view: a file not yet reloaded is not in force.
    match super::doctor::run(
        docker().args(["info", "--format", "{{json .RegistryConfig.Mirrors}}"]),
        std::time::Duration::from_secs(20),
    ) {
        Ok(out) => {
            let live: Vec<String> = serde_json::from_str(out.trim()).unwrap_or_default();
            let want = origin(url);
            if !live.iter().any(|m| m.trim_end_matches('/') == want) {
                return fail(
                    format!(
                        "{} names {want} but the running dockerd uses {live:?}",
                        path.display()
                    ),
                    "systemctl reload docker (or restart it)".into(),
                );
            }
        }
        Err(e) => {
            return fail(
                format!("cannot ask dockerd (docker info): {e}"),
                "start dockerd, or pass --docker-host unix:///path/to/docker.sock".into(),
            )
        }
    }
    if args.no_pull {
        return Verdict::pass(
            "docker",
            version,
            format!(
                "{} names {} and dockerd has loaded it (no pull: --no-pull)",
                path.display(),
                origin(url)
            ),
        );
    }
    let image = args.image.trim_start_matches("docker.io/").to_owned();
    match prove(
        ctx,
        ClientKind::Docker,
        &format!("docker pull {image}"),
        docker().args(["pull", "-q", &image]),
        "check the mirror's log for the request and dockerd's (journalctl -u docker): dockerd skips a mirror that answers an error or an auth challenge",
    ) {
        Ok(seen) => Verdict::pass(
            "docker",
            version,
            format!("names {}; `docker pull {image}` reached it ({} {} → {})", origin(url), seen.method, seen.path, seen.status),
        ),
        Err((r, f)) => fail(r, f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_other_keys_in_order() {
        let old = "{\n  \"log-level\": \"warn\",\n  \"registry-mirrors\": [\"https://mirror.gcr.io/\", \"http://127.0.0.1:5000/\"],\n  \"bip\": \"10.0.0.1/24\"\n}\n";
        let m = Url::parse("http://127.0.0.1:5000").unwrap();
        let new = merge_daemon_json(Some(old), &m).unwrap();
        let v: Value = serde_json::from_str(&new).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["log-level", "registry-mirrors", "bip"]);
        assert_eq!(
            v["registry-mirrors"],
            serde_json::json!(["http://127.0.0.1:5000", "https://mirror.gcr.io/"])
        );
        assert_eq!(
            merge_daemon_json(Some(&new), &m).unwrap(),
            new,
            "idempotent"
        );
        assert!(merge_daemon_json(Some("[1]"), &m).is_err());
        assert!(merge_daemon_json(Some("{\"registry-mirrors\": \"x\"}"), &m).is_err());
        assert!(merge_daemon_json(None, &m)
            .unwrap()
            .contains("127.0.0.1:5000"));
    }
}
