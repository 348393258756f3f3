//! A small `CONNECT` proxy for the hermetic tests: counts tunnels and their targets, can
//! require `Proxy-Authorization`, refuse with a chosen status, and map names that resolve
//! nowhere (`registry.only-via-proxy.invalid:PORT`) to real addresses, so an upstream named
//! that way is reachable only through it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with a CONNECT.
#[derive(Default, Clone)]
pub struct ProxyRules {
    /// `Proxy-Authorization` value required (else 407).
    pub require_auth: Option<String>,
    /// Answer every CONNECT with this status instead of tunnelling.
    pub refuse_with: Option<u16>,
    /// `host:port` targets dialled at another address.
    pub aliases: HashMap<String, SocketAddr>,
}

/// One CONNECT the proxy received.
#[derive(Debug, Clone)]
pub struct Connect {
    /// `host:port` as the request line gave it.
    pub target: String,
    /// Its `Proxy-Authorization`, if any.
    pub auth: Option<String>,
}

/// The proxy, on a free loopback port; stops when dropped.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub connects: Arc<Mutex<Vec<Connect>>>,
    rules: Arc<Mutex<ProxyRules>>,
    /// Open client connections (tunnels), cut by [`ConnectProxy::set_rules`].
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    pub async fn start(rules: ProxyRules) -> ConnectProxy {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = l.local_addr().unwrap();
        let connects = Arc::new(Mutex::new(Vec::new()));
        let rules = Arc::new(Mutex::new(rules));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (c, r, o) = (connects.clone(), rules.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (c, r) = (c.clone(), r.clone());
                let t = tokio::spawn(async move {
                    let _ = serve(s, c, r).await;
                });
                o.lock().unwrap().push(t.abort_handle());
            }
        });
        ConnectProxy {
            addr,
            connects,
            rules,
            open,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The targets of the CONNECTs so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.connects
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.target.clone())
            .collect()
    }

    /// New rules for the next CONNECTs; the tunnels open now are cut (so pooled connections
    /// cannot bypass the new rules).
    pub fn set_rules(&self, rules: ProxyRules) {
        *self.rules.lock().unwrap() = rules;
        for t in self.open.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn serve(
    mut s: TcpStream,
    connects: Arc<Mutex<Vec<Connect>>>,
    rules: Arc<Mutex<ProxyRules>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16384 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_string());
    if first.first() != Some(&"CONNECT") || first.len() < 2 {
        s.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    let target = first[1].to_string();
    connects.lock().unwrap().push(Connect {
        target: target.clone(),
        auth: auth.clone(),
    });
    let rules = rules.lock().unwrap().clone();
    if let Some(code) = rules.refuse_with {
        let r = format!("HTTP/1.1 {code} Refused By Test Proxy\r\nContent-Length: 0\r\n\r\n");
        s.write_all(r.as_bytes()).await?;
        return Ok(());
    }
    if rules.require_auth.is_some() && rules.require_auth != auth {
        s.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n").await?;
        return Ok(());
    }
    let up = match rules.aliases.get(&target) {
        Some(a) => TcpStream::connect(a).await,
        None => TcpStream::connect(target.as_str()).await,
    };
    let Ok(mut up) = up else {
        s.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
    Ok(())
}
