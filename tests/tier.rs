//! A node of a site tier (hermetic; the tier itself, behind HAProxy, is `tests/e2e_tier.rs`):
//! `node_name` names the node in a response header and in `/metrics` labels, off by default;
//! a sidecar whose upstream is a tier listener with `client_ca` pulls through it with
//! `client_cert` / `client_key`, and without them gets nothing.

mod support;

use std::time::Duration;

use support::https::{tls_client, tls_get, TestCa};
use support::*;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// With `node_name`, every answer (pulls, errors, `/v2/`, health) carries `X-Regcache-Node`
/// and every `/metrics` sample `node="<name>"`; without it, neither appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_name_names_the_node_in_a_header_and_in_metrics_only_when_set() {
    let up = FakeUpstream::start(300).await;
    let (d, data) = up.add_random_blob(50_000, 3);
    let blob = format!("/v2/library/tier/blobs/{d}");
    let named = Mirror::start_with_config(&format!(
        "node_name = \"site-b.2\"\n[upstream]\nurl = \"{}\"\nredirect_hosts = {:?}\n",
        up.url(),
        up.redirect_hosts()
    ))
    .await;
    for path in [
        blob.as_str(),
        blob.as_str(),
        "/v2/",
        "/readyz",
        "/v2/library/tier/manifests/none",
    ] {
        let g = get(&named.url(path)).await;
        assert_eq!(
            g.header("x-regcache-node"),
            "site-b.2",
            "{path}: {}",
            g.status
        );
    }
    assert_eq!(get(&named.url(&blob)).await.bytes().as_ref(), &data[..]);
    // The fill commits (rename, sync) just after the last byte reaches its clients, so a
    // loaded machine may answer /metrics before the object is counted: wait for it.
    let committed = "regcache_cache_objects{node=\"site-b.2\"} 1";
    let metrics_text =
        || async { String::from_utf8(get(&named.url("/metrics")).await.bytes().to_vec()).unwrap() };
    eventually_async("the fill's commit counted in /metrics", || async {
        metrics_text().await.contains(committed)
    })
    .await;
    let metrics = metrics_text().await;
    assert!(metrics.contains(committed), "{metrics}");
    assert!(
        metrics.contains("regcache_requests_total{node=\"site-b.2\",cache=\"hit\"} "),
        "{metrics}"
    );
    let samples = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty());
    for l in samples {
        assert!(l.contains("node=\"site-b.2\""), "unlabelled sample {l}");
    }

    let plain = Mirror::start(&up, Duration::ZERO).await;
    let g = get(&plain.url(&blob)).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.header("x-regcache-node"), "", "off by default");
    let metrics = String::from_utf8(get(&plain.url("/metrics")).await.bytes().to_vec()).unwrap();
    assert!(!metrics.contains("node="), "{metrics}");
}

/// A bad `node_name` is refused with the key and what to write (never sent as a header).
#[test]
fn bad_node_names_are_refused() {
    for bad in ["", "has space", "a\"b", "é", &"x".repeat(64)] {
        let file: regcache::config::FileConfig =
            toml::from_str(&format!("node_name = {bad:?}\n")).unwrap();
        let e = regcache::config::Config::resolve(
            file,
            &Default::default(),
            std::path::Path::new("/tmp/c"),
            |_| Ok(String::new()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("node_name") && e.contains("letters, digits"),
            "{bad:?}: {e}"
        );
    }
    let e = regcache::config::parse_node_name("n1").unwrap();
    assert_eq!(e, "n1");
}

/// A sidecar regcache whose upstream is an HTTPS tier listener with `client_ca`: with
/// `client_cert` / `client_key` (a certificate of that CA) it pulls; without, or with another
/// CA's certificate, the handshake fails and nothing is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_pulls_from_a_tier_that_wants_client_certificates() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/app", "v1", 80_000, 11);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("site CA");
    let (cert, key) = ca
        .server(&["localhost", "127.0.0.1"])
        .write(dir.path(), "tier");
    let ca_file = write(dir.path(), "ca.crt", &ca.pem());
    let tier = Mirror::start_with_config(&format!(
        "node_name = \"tier-1\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{ca_file}\"\n[upstream]\nurl = \"{}\"\nredirect_hosts = {:?}\n",
        cert.display(),
        key.display(),
        up.url(),
        up.redirect_hosts()
    ))
    .await;
    let tier_url = format!("https://127.0.0.1:{}", tier.addr.port());
    let (ccert, ckey) = ca.client("docker-host-7").write(dir.path(), "sidecar");
    let sidecar = Mirror::start_with_config(&format!(
        "[upstream]\nurl = \"{tier_url}\"\nca_file = \"{ca_file}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        ccert.display(),
        ckey.display()
    ))
    .await;
    let m = get(&sidecar.url("/v2/library/app/manifests/v1")).await;
    assert_eq!(m.status, 200, "{:?}", m.bytes());
    assert_eq!(m.bytes().as_ref(), &img.manifest[..]);
    let b = get(&sidecar.url(&format!("/v2/library/app/blobs/{}", img.layer_digest))).await;
    assert_eq!(
        (b.status.as_u16(), b.bytes().as_ref() == &img.layer[..]),
        (200, true)
    );
    // The tier saw the sidecar's certificate.
    let direct = tls_get(
        tier.addr.port(),
        "localhost",
        tls_client(&ca.pem(), Some(&ca.client("probe"))),
        &format!("/v2/library/app/blobs/{}", img.layer_digest),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(direct.status, 200);
    assert_eq!(direct.header("x-regcache-node").as_deref(), Some("tier-1"));

    // No client certificate, or one of another CA: nothing.
    let other = TestCa::new("another CA");
    let (ocert, okey) = other.client("docker-host-7").write(dir.path(), "stranger");
    let without = Mirror::start_with_config(&format!(
        "revalidate_timeout = \"2s\"\n[upstream]\nurl = \"{tier_url}\"\nca_file = \"{ca_file}\"\n"
    ))
    .await;
    let stranger = Mirror::start_with_config(&format!(
        "revalidate_timeout = \"2s\"\n[upstream]\nurl = \"{tier_url}\"\nca_file = \"{ca_file}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        ocert.display(),
        okey.display()
    ))
    .await;
    for m in [&without, &stranger] {
        let g = get(&m.url(&format!("/v2/library/app/blobs/{}", img.layer_digest))).await;
        assert!(g.status.as_u16() >= 500, "{}: {:?}", g.status, g.bytes());
        assert_ne!(g.bytes().as_ref(), &img.layer[..]);
        // When the refusal arrives (TLS 1.3 sends it after the handshake; a write may hit the
        // closed socket first), the answer names the fix.
        let said = String::from_utf8_lossy(g.bytes()).into_owned();
        if std::ptr::eq(m, &without) && said.contains("CertificateRequired") {
            assert!(
                said.contains("asks for a TLS client certificate: set client_cert and client_key in [registries."),
                "the fix is named: {said}"
            );
        }
    }
}

/// `client_cert` without `client_key` (or the reverse), an unreadable or non-PEM file, or a
/// plain-http url: refused with the key named.
#[test]
fn client_certificate_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("site CA");
    let (cert, key) = ca.client("c").write(dir.path(), "c");
    let not_pem = write(dir.path(), "junk", "junk");
    let (_, other_key) = ca.client("d").write(dir.path(), "d");
    let cases = [
        (
            format!(
                "url = \"https://t:5443\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
                cert.display(),
                other_key.display()
            ),
            "client_key",
        ),
        (
            format!(
                "url = \"https://t:5443\"\nclient_cert = \"{}\"\n",
                cert.display()
            ),
            "client_key",
        ),
        (
            format!(
                "url = \"https://t:5443\"\nclient_key = \"{}\"\n",
                key.display()
            ),
            "client_cert",
        ),
        (
            format!(
                "url = \"https://t:5443\"\nclient_cert = \"{not_pem}\"\nclient_key = \"{}\"\n",
                key.display()
            ),
            "client_cert",
        ),
        (
            format!(
                "url = \"https://t:5443\"\nclient_cert = \"{}\"\nclient_key = \"{not_pem}\"\n",
                cert.display()
            ),
            "client_key",
        ),
        (
            format!(
                "url = \"https://t:5443\"\nclient_cert = \"/none/c.crt\"\nclient_key = \"{}\"\n",
                key.display()
            ),
            "client_cert",
        ),
        (
            format!(
                "url = \"http://t:5000\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            "client_cert",
        ),
    ];
    for (table, key_named) in cases {
        let file: regcache::config::FileConfig =
            toml::from_str(&format!("[upstream]\n{table}")).unwrap();
        let e = regcache::config::Config::resolve(
            file,
            &Default::default(),
            std::path::Path::new("/tmp/c"),
            |p| std::fs::read_to_string(p),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with(key_named), "{table}: {e}");
        if table.contains(&*other_key.to_string_lossy()) {
            assert!(e.contains("is not the private key of client_cert"), "{e}");
        }
    }
    let file: regcache::config::FileConfig = toml::from_str(&format!(
        "[upstream]\nurl = \"https://t:5443\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        cert.display(),
        key.display()
    ))
    .unwrap();
    let c = regcache::config::Config::resolve(
        file,
        &Default::default(),
        std::path::Path::new("/tmp/c"),
        |p| std::fs::read_to_string(p),
    )
    .unwrap();
    let id = c.registries[0].client_identity.as_ref().unwrap();
    assert!(
        !format!("{id:?}").contains("PRIVATE KEY"),
        "Debug hides the key"
    );
}
