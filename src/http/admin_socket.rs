//! The admin socket: `<cache_dir>/regcache.sock`, a unix socket (mode 0600: the mirror's user,
//! and root) for the operator commands while the mirror serves, so they act on its live index:
//!
//! - `GET /-/status`: the live status ([`crate::live`]) for `regcache status`.
//! - `GET /-/clients`: the last requests of each client kind ([`crate::clients::Recent`]), for
//!   `regcache doctor`'s end-to-end proof. Here and not on the listener: User-Agents, paths
//!   and client addresses say who pulls what, and a listener may be open to a whole network.
//! - `POST /-/rm` (body: the image reference): `regcache rm` on the serving cache.
//! - `POST /-/gc` (body `{"dry_run": bool, "budget": null | {...}}`): `regcache gc`, with the
//!   given budget or the mirror's own.
//!
//! Nothing on it reaches an upstream; it exists only while the mirror serves.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::live::{socket_path, LiveStatus};
use crate::mirror::Mirror;

/// A connection to the admin socket gets this long in all.
const CONNECTION_LIMIT: Duration = Duration::from_secs(10);

/// Serves the admin socket until `stopping` turns true, then removes it. A socket a live mirror
/// still answers on is left alone (two mirrors on one cache directory: the first keeps it); a
/// stale one (a crash) is replaced. Failures are logged, never fatal: the mirror serves without.
pub async fn serve(app: Arc<Mirror>, mut stopping: watch::Receiver<bool>) {
    let path = socket_path(app.cache().store().root());
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        tracing::warn!(socket = %path.display(), "another regcache answers on this cache directory's admin socket; regcache status will show that one");
        return;
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(socket = %path.display(), error = %e, "cannot open the admin socket; regcache status will show the offline report only");
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let app = app.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(answer(&app, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
                });
            }
            _ = stopping.wait_for(|s| *s) => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Bodies of admin requests are small: an image reference.
const MAX_BODY: usize = 4096;

async fn answer(app: &Arc<Mirror>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let json = |status, v: serde_json::Value| (status, v.to_string().into_bytes());
    let failed = |e: std::io::Error| {
        let status = match e.kind() {
            std::io::ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            std::io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        json(status, serde_json::json!({ "error": e.to_string() }))
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let (status, body) = match (method, path.as_str()) {
        (http::Method::GET, "/-/status") => match serde_json::to_value(LiveStatus::of(app)) {
            Ok(v) => json(StatusCode::OK, v),
            Err(e) => failed(std::io::Error::other(e)),
        },
        (http::Method::GET, "/-/clients") => match serde_json::to_value(app.clients().snapshot()) {
            Ok(v) => json(StatusCode::OK, v),
            Err(e) => failed(std::io::Error::other(e)),
        },
        (http::Method::POST, "/-/rm") => {
            let body = crate::upstream::read_limited(req.into_body(), MAX_BODY).await;
            match body.map(|b| String::from_utf8_lossy(&b).trim().to_owned()) {
                Err(e) => failed(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)),
                Ok(image) => {
                    let store = app.cache().store().clone();
                    let default = app.config().default_registry.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        crate::admin::rm_in(&store, &image, &default)
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    match r.and_then(|r| serde_json::to_value(r).map_err(std::io::Error::other)) {
                        Ok(v) => json(StatusCode::OK, v),
                        Err(e) => failed(e),
                    }
                }
            }
        }
        (http::Method::POST, "/-/gc") => {
            // Body: {"dry_run": bool, "budget": Budget or null (the mirror's own)}.
            #[derive(serde::Deserialize)]
            struct Ask {
                dry_run: bool,
                budget: Option<crate::cache::eviction::Budget>,
            }
            let body = crate::upstream::read_limited(req.into_body(), MAX_BODY).await;
            let ask = body.map_err(std::io::Error::other).and_then(|b| {
                serde_json::from_slice::<Ask>(&b)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            });
            let ask = match ask {
                Ok(a) => a,
                Err(e) => return respond(failed(e)),
            };
            let dry_run = ask.dry_run;
            let store = app.cache().store().clone();
            let budget = ask.budget.unwrap_or(app.config().budget);
            let r =
                tokio::task::spawn_blocking(move || crate::admin::gc_in(&store, &budget, dry_run))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match r {
                Ok((report, lines)) => json(
                    StatusCode::OK,
                    serde_json::json!({
                        "report": report,
                        "lines": lines,
                        "unbounded": budget.is_unbounded(),
                    }),
                ),
                Err(e) => failed(e),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            b"GET /-/status, GET /-/clients, POST /-/rm, POST /-/gc here".to_vec(),
        ),
    };
    respond((status, body))
}

fn respond((status, body): (StatusCode, Vec<u8>)) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
