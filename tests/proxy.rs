//! Upstream connections through an HTTP `CONNECT` proxy: the `proxy` key, `HTTPS_PROXY` /
//! `HTTP_PROXY` / `NO_PROXY` from the environment, TLS end to end inside the tunnel, proxy
//! credentials (sent, never logged), and a refusing proxy.

mod support;

use std::time::Duration;

use regcache::config::ServeArgs;
use support::*;

/// A name that resolves nowhere: the upstream so named is reachable only through the proxy.
const HIDDEN: &str = "registry.only-via-proxy.invalid";

/// `bob:s3cret-pw` as `Proxy-Authorization` carries it.
const BOB: &str = "Basic Ym9iOnMzY3JldC1wdw==";

/// A fake upstream known as `HIDDEN:<port>` (its token realm too), and a proxy that maps that
/// name to it.
async fn hidden_upstream(mut rules: ProxyRules) -> (FakeUpstream, ConnectProxy, String) {
    let up = FakeUpstream::start(300).await;
    let name = format!("{HIDDEN}:{}", up.registry.port());
    up.set_faults(Faults {
        realm: Some(format!("http://{name}/token")),
        ..Default::default()
    });
    rules.aliases.insert(name.clone(), up.registry);
    (up, ConnectProxy::start(rules).await, name)
}

#[tokio::test]
async fn a_pull_goes_through_the_proxy_key_with_its_redirects() {
    let (up, proxy, name) = hidden_upstream(ProxyRules::default()).await;
    let img = up.add_image("library/app", "v1", 50_000, 1);
    let toml = format!(
        "[upstream]\nurl = \"http://{name}\"\nredirect_hosts = [\"{}\"]\nproxy = \"{}\"\n",
        up.cdn,
        proxy.url()
    );
    // The machine's environment says otherwise: the key wins.
    let m = Mirror::start_with_config_env(&toml, &[("HTTP_PROXY", "http://127.0.0.1:1")]).await;
    let r = get(&m.url("/v2/library/app/manifests/v1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    let r = get(&m.url(&format!("/v2/library/app/blobs/{}", img.layer_digest))).await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    let targets = proxy.targets();
    assert!(targets.contains(&name), "{targets:?}");
    // The CDN the registry redirects to goes through the same proxy.
    assert!(targets.contains(&up.cdn.to_string()), "{targets:?}");
    // Without the proxy the name does not even resolve.
    let direct = toml.replace(&format!("proxy = \"{}\"", proxy.url()), "proxy = \"none\"");
    let m2 = Mirror::start_with_config_env(&direct, &[("HTTP_PROXY", &proxy.url())]).await;
    let r = get(&m2.url("/v2/library/app/manifests/v1")).await;
    assert!(r.status.is_server_error(), "{}", r.status);
    assert_eq!(
        proxy.targets().len(),
        targets.len(),
        "proxy = \"none\" ignores HTTP_PROXY"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_from_the_environment_tunnels_tls_and_no_proxy_goes_direct() {
    // The https upstream: a regcache serving TLS for `mirror.test` (known only to the proxy)
    // and `localhost`, in front of the fake registry.
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/app", "v1", 50_000, 2);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        regcache::tls::generate(&["mirror.test".into(), "localhost".into()], dir.path()).unwrap();
    let inner = Mirror::start_args(ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..Default::default()
    })
    .await;
    let port = inner.addr.port();
    let mut rules = ProxyRules::default();
    rules
        .aliases
        .insert(format!("mirror.test:{port}"), inner.addr);
    let proxy = ConnectProxy::start(rules).await;
    let cfg = dir.path().join("front.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream]\nurl = \"https://mirror.test:{port}\"\nca_file = {c:?}\n[registries.\"local.test\"]\nurl = \"https://localhost:{port}\"\nca_file = {c:?}\n",
            c = cert.display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("front.log");
    let front = ServeProcess::spawn(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--cache-dir",
            dir.path().join("cache").to_str().unwrap(),
        ],
        Some(&log),
        &[
            ("HTTPS_PROXY", &proxy.url()),
            ("no_proxy", "example.org, localhost"),
        ],
    )
    .await;
    for ns in ["docker.io", "local.test"] {
        let r = get(&format!(
            "{}/v2/library/app/blobs/{}?ns={ns}",
            front.base(),
            img.layer_digest
        ))
        .await;
        assert_eq!(r.status, 200, "{ns}");
        assert_eq!(sha256(r.bytes()), img.layer_digest, "{ns}");
    }
    // One tunnel to the proxied name; localhost (NO_PROXY) went direct.
    let targets = proxy.targets();
    assert!(!targets.is_empty(), "{targets:?}");
    assert!(
        targets.iter().all(|t| *t == format!("mirror.test:{port}")),
        "{targets:?}"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(&format!("via {} (HTTPS_PROXY)", proxy.url())),
        "startup log names the proxy: {log}"
    );
    assert!(log.contains("direct (NO_PROXY)"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_are_sent_and_never_logged() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/app", "v1", 20_000, 3);
    let proxy = ConnectProxy::start(ProxyRules {
        require_auth: Some(BOB.into()),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let with_creds = format!("http://bob:s3cret-pw@{}", proxy.addr);
    let serve = ServeProcess::start_env(
        &up,
        &dir.path().join("cache"),
        &[],
        Some(&log),
        &[("HTTP_PROXY", &with_creds), ("REGCACHE_LOG", "debug")],
    )
    .await;
    let r = get(&format!(
        "{}/v2/library/app/blobs/{}",
        serve.base(),
        img.layer_digest
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), img.layer_digest);
    let connects = proxy.connects.lock().unwrap().clone();
    assert!(!connects.is_empty());
    assert!(
        connects.iter().all(|c| c.auth.as_deref() == Some(BOB)),
        "{connects:?}"
    );
    // A refused CONNECT is logged too: make one, then read everything the mirror said.
    proxy.set_rules(ProxyRules {
        refuse_with: Some(407),
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get(&format!("{}/v2/library/other/manifests/v1", serve.base())).await;
    assert!(r.status.is_server_error(), "{}", r.status);
    drop(serve);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("CONNECT"),
        "debug log shows the tunnels: {log}"
    );
    assert!(
        log.contains(&format!("http://bob:***@{}", proxy.addr)),
        "{log}"
    );
    for secret in ["s3cret-pw", "Ym9iOnMzY3JldC1wdw"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
}

#[tokio::test]
async fn a_refusing_proxy_is_an_upstream_error_naming_it_and_its_status() {
    let (up, proxy, name) = hidden_upstream(ProxyRules {
        require_auth: Some(BOB.into()),
        ..Default::default()
    })
    .await;
    up.add_image("library/app", "v1", 1000, 4);
    let toml = format!(
        "revalidate_timeout = \"5s\"\n[upstream]\nurl = \"http://{name}\"\nproxy = \"http://bob:wrong-pw@{}\"\n",
        proxy.addr
    );
    let m = Mirror::start_with_config(&toml).await;
    let started = std::time::Instant::now();
    let r = get(&m.url("/v2/library/app/manifests/v1")).await;
    assert!(started.elapsed() < Duration::from_secs(4), "no hang");
    assert!(r.status.is_server_error(), "{}", r.status);
    let msg = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = format!("http://bob:***@{}", proxy.addr);
    assert!(msg.contains(&shown) && msg.contains("407"), "{msg}");
    assert!(!msg.contains("wrong-pw"), "{msg}");
    let h = m.app.registries().default_upstream().health();
    assert!(h.last_error.unwrap().contains("407"));
    // 403 from a filtering proxy: named with its status too.
    proxy.set_rules(ProxyRules {
        refuse_with: Some(403),
        ..Default::default()
    });
    let r = get(&m.url("/v2/library/app/manifests/v1")).await;
    assert!(r.status.is_server_error(), "{}", r.status);
    let msg = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains(&shown) && msg.contains("403"), "{msg}");
}

#[tokio::test]
async fn the_redirect_guard_still_applies_to_connect_targets() {
    let (up, proxy, name) = hidden_upstream(ProxyRules::default()).await;
    let img = up.add_image("library/app", "v1", 1000, 5);
    // A hostile registry sends the blob to an internal service it was not allowed.
    let mut f = Faults {
        realm: Some(format!("http://{name}/token")),
        redirect_to: Some("http://127.0.0.1:9/admin".into()),
        ..Default::default()
    };
    up.set_faults(f.clone());
    let toml = format!(
        "[upstream]\nurl = \"http://{name}\"\nproxy = \"{}\"\n",
        proxy.url()
    );
    let m = Mirror::start_with_config(&toml).await;
    let r = get(&m.url(&format!("/v2/library/app/blobs/{}", img.layer_digest))).await;
    assert_eq!(r.status, 502, "refused redirect");
    // A public-looking name that resolves to loopback here is refused before any CONNECT.
    f.redirect_to = Some(format!("http://localhost:{}/cdn/x", up.cdn.port()));
    up.set_faults(f);
    let r = get(&m.url(&format!("/v2/library/app/blobs/{}", img.layer_digest))).await;
    assert_eq!(r.status, 502, "refused redirect");
    let targets = proxy.targets();
    assert!(targets.iter().all(|t| *t == name), "{targets:?}");
}
