//! The admin socket: `<cache_dir>/regcache.sock`, a unix socket (mode 0600: the mirror's user,
//! and root) answering `GET /-/status` with the live status ([`crate::live`]) for
//! `regcache status`. Nothing on it reaches an upstream or changes the cache; it exists only
//! while the mirror serves.

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
                        async move { Ok::<_, Infallible>(answer(&app, &req)) }
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

fn answer(app: &Mirror, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/-/status") => match serde_json::to_vec(&LiveStatus::of(app)) {
            Ok(b) => (StatusCode::OK, b),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string().into_bytes(),
            ),
        },
        _ => (StatusCode::NOT_FOUND, b"only GET /-/status here".to_vec()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
