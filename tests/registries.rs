//! Many registries through one mirror: `ns=` routing, path prefixes, per-registry credentials,
//! shared blobs, and regcache chained behind regcache.

mod support;

use std::time::Duration;

use support::*;

async fn two_registries() -> (FakeUpstream, FakeUpstream, Mirror) {
    let hub = FakeUpstream::start(300).await;
    let ghcr = FakeUpstream::start(300).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "ghcr-password\n").unwrap();
    let (_, secret_path) = secret.keep().unwrap();
    let toml = format!(
        "tag_ttl = \"1h\"\n[registries.\"docker.io\"]\nurl = \"{}\"\nredirect_hosts = [\"{}\"]\n[registries.\"ghcr.io\"]\nurl = \"{}\"\nredirect_hosts = [\"{}\"]\nusername = \"bot\"\npassword_file = \"{}\"\n",
        hub.url(),
        hub.cdn,
        ghcr.url(),
        ghcr.cdn,
        secret_path.display()
    );
    let m = Mirror::start_with_config(&toml).await;
    (hub, ghcr, m)
}

#[tokio::test]
async fn ns_and_path_prefix_select_the_upstream() {
    let (hub, ghcr, m) = two_registries().await;
    let a = hub.add_image("library/app", "v1", 1000, 1);
    let b = ghcr.add_image("org/app", "v1", 1000, 2);
    let r = get(&m.url("/v2/library/app/manifests/v1?ns=docker.io")).await;
    assert_eq!(r.header("docker-content-digest"), a.manifest_digest);
    let r = get(&m.url("/v2/library/app/manifests/v1")).await;
    assert_eq!(
        r.header("docker-content-digest"),
        a.manifest_digest,
        "no ns: default registry"
    );
    let r = get(&m.url("/v2/org/app/manifests/v1?ns=ghcr.io")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), b.manifest_digest);
    let r = get(&m.url(&format!("/v2/org/app/blobs/{}?ns=ghcr.io", b.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), b.layer_digest);
    // Path prefixes (registries.conf mirrors with a path): same answers, same cache entries.
    let before = (n(&hub.counters.total), n(&ghcr.counters.total));
    let r = get(&m.url("/v2/ghcr.io/org/app/manifests/v1")).await;
    assert_eq!(r.header("docker-content-digest"), b.manifest_digest);
    let r = get(&m.url("/v2/docker.io/library/app/manifests/v1")).await;
    assert_eq!(r.header("docker-content-digest"), a.manifest_digest);
    let r = get(&m.url("/v2/docker.io/app/manifests/v1")).await;
    assert_eq!(
        r.header("docker-content-digest"),
        a.manifest_digest,
        "bare docker.io name gets library/"
    );
    assert_eq!(get(&m.url("/v2/ghcr.io/")).await.status, 200);
    assert_eq!((n(&hub.counters.total), n(&ghcr.counters.total)), before);
    // Prefix and ns that disagree are refused.
    assert_eq!(
        get(&m.url("/v2/ghcr.io/org/app/manifests/v1?ns=docker.io"))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn unknown_registries_cause_no_outbound_connection() {
    let (hub, ghcr, m) = two_registries().await;
    for path in [
        "/v2/library/app/manifests/v1?ns=evil.example",
        "/v2/library/app/manifests/v1?ns=127.0.0.1%3A1",
        &format!("/v2/library/app/manifests/v1?ns={}", hub.registry),
    ] {
        let r = get(&m.url(path)).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["errors"][0]["code"], "NAME_UNKNOWN", "{path}");
    }
    // A path prefix naming an unconfigured registry is refused too, not sent to Docker Hub.
    for path in ["/v2/quay.io/org/app/manifests/v1", "/v2/localhost:5000/app/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"] {
        let r = get(&m.url(path)).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["errors"][0]["code"], "NAME_UNKNOWN", "{path}");
    }
    assert_eq!(n(&hub.counters.total) + n(&ghcr.counters.total), 0);
}

#[tokio::test]
async fn blobs_are_shared_across_registries_and_tags_are_not() {
    let (hub, ghcr, m) = two_registries().await;
    // Same repository name and tag in both registries, different images, one shared layer.
    let a = hub.add_image("team/app", "v1", 5000, 3);
    let b = ghcr.add_image("team/app", "v1", 6000, 4);
    let shared = random_bytes(7000, 5);
    let d = hub.add_blob(shared.clone());
    ghcr.add_blob(shared);
    let ra = get(&m.url("/v2/team/app/manifests/v1?ns=docker.io")).await;
    let rb = get(&m.url("/v2/team/app/manifests/v1?ns=ghcr.io")).await;
    assert_eq!(ra.header("docker-content-digest"), a.manifest_digest);
    assert_eq!(rb.header("docker-content-digest"), b.manifest_digest);
    assert_eq!(
        sha256(
            get(&m.url(&format!("/v2/team/app/blobs/{d}?ns=docker.io")))
                .await
                .bytes()
        ),
        d
    );
    assert_eq!(
        sha256(
            get(&m.url(&format!("/v2/team/app/blobs/{d}?ns=ghcr.io")))
                .await
                .bytes()
        ),
        d
    );
    assert_eq!(
        n(&ghcr.counters.blob_get),
        0,
        "the shared blob is stored once"
    );
}

#[tokio::test]
async fn credentials_go_only_to_their_registry() {
    let (hub, ghcr, m) = two_registries().await;
    hub.add_image("library/x", "v1", 100, 6);
    let g = ghcr.add_image("org/x", "v1", 100, 7);
    assert_eq!(
        get(&m.url("/v2/library/x/manifests/v1?ns=docker.io"))
            .await
            .status,
        200
    );
    let r = get(&m.url(&format!("/v2/org/x/blobs/{}?ns=ghcr.io", g.layer_digest))).await;
    assert_eq!(r.status, 200);
    let hub_auth = hub.counters.token_auth.lock().unwrap().clone();
    let ghcr_auth = ghcr.counters.token_auth.lock().unwrap().clone();
    assert!(
        hub_auth.iter().all(Option::is_none),
        "anonymous registry got {hub_auth:?}"
    );
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bot:ghcr-password")
    );
    assert!(
        !ghcr_auth.is_empty()
            && ghcr_auth
                .iter()
                .all(|a| a.as_deref() == Some(basic.as_str()))
    );
    assert_eq!(n(&ghcr.counters.cdn_auth_leaks), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regcache_chained_behind_regcache() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/tier", "v1", 3_000_000, 8);
    up.set_faults(Faults {
        throttle: Some((200_000, Duration::from_millis(10))),
        ..Default::default()
    });
    let middle = Mirror::start(&up, Duration::ZERO).await;
    let edge = Mirror::start_url(&format!("http://{}", middle.addr), Duration::ZERO).await;
    // HEAD of a blob neither tier has: the right length, without filling.
    let h = request(
        "HEAD",
        &edge.url(&format!("/v2/library/tier/blobs/{}", img.layer_digest)),
        &[],
    )
    .await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), "3000000");
    // A pull through both tiers, ten clients at once on the big layer.
    let r = get(&edge.url("/v2/library/tier/manifests/v1")).await;
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    let url = edge.url(&format!("/v2/library/tier/blobs/{}", img.layer_digest));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { get(&url).await }
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(sha256(t.await.unwrap().bytes()), img.layer_digest);
    }
    assert_eq!(
        n(&up.counters.cdn_get),
        1,
        "one fetch at the top of the chain"
    );
    // Tags revalidate through the chain.
    let moved = up.add_image("library/tier", "v1", 10, 9);
    let r = get(&edge.url("/v2/library/tier/manifests/v1")).await;
    assert_eq!(r.header("docker-content-digest"), moved.manifest_digest);
}

/// A registry whose name has a port gets a `prefix` alias: podman/skopeo reach it as
/// `MIRROR/internal/...`, which their reference parser accepts (`MIRROR/host:port/...` it
/// refuses); the alias selects the same registry and cache entries as `ns=`.
#[tokio::test]
async fn prefix_alias_selects_a_registry_with_a_port() {
    let hub = FakeUpstream::start(300).await;
    let internal = FakeUpstream::start(300).await;
    let toml = format!(
        "[registries.\"docker.io\"]\nurl = \"{}\"\nredirect_hosts = [\"{}\"]\n[registries.\"registry.internal:5443\"]\nurl = \"{}\"\nredirect_hosts = [\"{}\"]\nprefix = \"internal\"\n",
        hub.url(),
        hub.cdn,
        internal.url(),
        internal.cdn,
    );
    let m = Mirror::start_with_config(&toml).await;
    let img = internal.add_image("team/app", "v1", 1000, 7);
    let r = get(&m.url("/v2/internal/team/app/manifests/v1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    let r = get(&m.url(&format!("/v2/internal/team/app/blobs/{}", img.layer_digest))).await;
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    let r = get(&m.url("/v2/team/app/manifests/v1?ns=registry.internal:5443")).await;
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    assert_eq!(n(&hub.counters.total), 0, "nothing went to the Hub");
    // With ns= the alias is not applied: Docker Hub's own internal/app, as containerd asks.
    let hub_img = hub.add_image("internal/app", "v1", 1000, 8);
    let r = get(&m.url("/v2/internal/app/manifests/v1?ns=docker.io")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), hub_img.manifest_digest);
}

/// An alias that is Docker Hub's `library` is refused; one that a Docker Hub namespace could
/// be gets a warning naming the clash and the fix.
#[test]
fn prefix_aliases_that_hide_docker_hub_namespaces_are_refused_or_warned() {
    let check = |prefix: &str| {
        check_config(&format!(
            "[registries.\"registry.internal:5443\"]\nprefix = \"{prefix}\"\n"
        ))
    };
    let (ok, e) = check("library");
    assert!(
        !ok && e.contains("Docker Hub's namespace of official images"),
        "{e}"
    );
    let (ok, e) = check("internal");
    assert!(ok, "{e}");
    assert!(e.contains("warning: [registries.\"registry.internal:5443\"] prefix = \"internal\" can also be a Docker Hub namespace"), "{e}");
    let (ok, e) = check("internal-reg");
    assert!(ok && !e.contains("warning"), "{e}");
}
