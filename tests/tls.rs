//! HTTPS on the listener: HTTP/2 and HTTP/1.1 over rustls, misses and hits.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use regcache::config::ServeArgs;
use support::*;

fn client(
    cert_pem: &str,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only();
    let conn = if h2 {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    let mut cb = Client::builder(TokioExecutor::new());
    cb.http2_only(h2);
    cb.build(conn)
}

/// The whole body of a GET of `url`.
async fn body_of(
    c: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<Bytes>,
    >,
    url: &str,
) -> Bytes {
    c.get(url.parse().unwrap())
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_h2_and_http1() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(2_000_000, 50);
    let d = up.add_blob(data);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = regcache::tls::generate(&["localhost".into()], dir.path()).unwrap();
    let m = Mirror::start_args(ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        tag_ttl: Some(Duration::ZERO),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..Default::default()
    })
    .await;
    let pem = std::fs::read_to_string(&cert).unwrap();
    let base = format!("https://localhost:{}", m.addr.port());
    for h2 in [true, false] {
        let c = client(&pem, h2);
        let r = c.get(format!("{base}/v2/").parse().unwrap()).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.version(),
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        // First round: a miss through the tee; second: a hit.
        let r = c
            .get(format!("{base}/v2/library/tls/blobs/{d}").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(sha256(&body), d, "h2={h2}");
    }
    // Plain HTTP to the HTTPS port is not answered as HTTP.
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        c.get(
            format!("http://127.0.0.1:{}/v2/", m.addr.port())
                .parse()
                .unwrap(),
        )
        .await
    })
    .await
    .expect("no hang");
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_truncated_under_a_tls_download_fails_that_download_only() {
    let up = FakeUpstream::start(300).await;
    let data = random_bytes(8_000_000, 51);
    let d = up.add_blob(data);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = regcache::tls::generate(&["localhost".into()], dir.path()).unwrap();
    let m = Mirror::start_args(ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..Default::default()
    })
    .await;
    let pem = std::fs::read_to_string(&cert).unwrap();
    let url = format!(
        "https://localhost:{}/v2/library/tr/blobs/{d}",
        m.addr.port()
    );
    let c = client(&pem, false);
    let body = body_of(&c, &url).await;
    assert_eq!(sha256(&body), d);
    eventually("committed", || m.has_blob(&d)).await;
    // Start a hit, read a little, truncate the file behind regcache's back, read on.
    let mut b = c.get(url.parse().unwrap()).await.unwrap().into_body();
    let _ = b.frame().await;
    let hex = d.trim_start_matches("sha256:");
    let path = m
        .store()
        .root()
        .join(format!("blobs/sha256/{}/{hex}.8000000", &hex[..2]));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let mut got = 0usize;
    let mut broke = false;
    while let Some(f) = b.frame().await {
        match f {
            Ok(f) => got += f.into_data().map(|d| d.len()).unwrap_or(0),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(
        broke || got < 8_000_000,
        "a truncated file must not yield a complete body"
    );
    // The process is alive, heals the blob and serves it again.
    let body = body_of(&c, &url).await;
    assert_eq!(sha256(&body), d);
}

/// A TLS client that negotiates HTTP/2 and then stops inside the connection preface is closed
/// after `header_read_timeout`, not kept until the (longer) idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_preface_over_tls_is_dropped_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = FakeUpstream::start(300).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = regcache::tls::generate(&["localhost".into()], dir.path()).unwrap();
    let m = Mirror::start_args(ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        header_read_timeout: Some(Duration::from_millis(500)),
        client_idle_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    })
    .await;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read_to_string(&cert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HT").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's SETTINGS
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled preface kept the connection");
}
