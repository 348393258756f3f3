//! A fault-injecting HTTP/1.1 proxy, put between regcache and the upstream registry and in
//! front of the CDN stand-in (the registry's redirect `baseurl` points at it, so blob bytes
//! pass through it too). One request per connection: requests go to the backend with
//! `Connection: close` and answers come back with `Connection: close`, so every upstream
//! request of regcache is one connection here and faults hit each request on its own.
//!
//! Controls, switchable while running:
//! - [`Mode`]: pass-through, blackhole (accept TCP, read the request, never answer), refuse
//!   (the listener is closed: connects get RST / ECONNREFUSED; reopened on the same port when
//!   the mode changes back), forced 502, forced 429 with `Retry-After: 7`;
//! - throttle: answer bodies at most K bytes/s per connection;
//! - one-shot rules on a path: cut the answer (close the connection) after N body bytes, or
//!   stall (stop sending, keep the connection open) after N body bytes; a rule fires on the
//!   first request whose path contains its pattern, then never again.
//!
//! Counters: every request (method, path, `Range`, status, body bytes sent downstream, fault
//! applied), connections accepted, bytes sent downstream. A log line per request goes to
//! `faults-<name>.log` in the lab directory.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::proc;

/// How the proxy treats new requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Accept, read the request, never answer (until the peer gives up).
    Blackhole,
    /// No listener: connection refused.
    Refuse,
    /// Answer `502 Bad Gateway` without asking the backend.
    Status502,
    /// Answer `429 Too Many Requests` with `Retry-After: 7` without asking the backend.
    Status429,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pass => "pass-through",
            Mode::Blackhole => "blackhole",
            Mode::Refuse => "refused",
            Mode::Status502 => "502",
            Mode::Status429 => "429 Retry-After: 7",
        }
    }
}

/// What a one-shot rule does once `after` body bytes have been sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Close the connection.
    Cut,
    /// Send nothing more, keep the connection open.
    Stall,
}

#[derive(Clone, Debug)]
struct Rule {
    pattern: String,
    after: u64,
    action: Action,
    spent: bool,
}

/// One request seen by the proxy.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    /// Status sent downstream (None: no answer, e.g. blackholed or backend failure).
    pub status: Option<u16>,
    /// Answer body bytes sent downstream.
    pub body_bytes: u64,
    /// The fault applied, if any.
    pub fault: Option<String>,
    pub ms: u64,
}

impl Record {
    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }
}

/// A position in the proxy's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyMark {
    records: usize,
    connections: u64,
    bytes: u64,
}

struct Shared {
    name: String,
    mode: Mutex<Mode>,
    /// Bytes per second per connection; 0 = unlimited.
    throttle: AtomicU64,
    rules: Mutex<Vec<Rule>>,
    records: Mutex<Vec<Record>>,
    connections: AtomicU64,
    bytes_down: AtomicU64,
    stop: AtomicBool,
    log: PathBuf,
}

pub struct FaultProxy {
    pub name: String,
    pub addr: SocketAddr,
    pub backend: SocketAddr,
    pub log: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

const POLL: Duration = Duration::from_millis(2);
/// Longest a blackholed or stalled connection is held.
const HOLD_MAX: Duration = Duration::from_secs(300);

impl FaultProxy {
    /// Starts a pass-through proxy on a free loopback port in front of `backend`.
    pub fn start(name: &str, backend: SocketAddr, dir: &Path) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let addr = listener.local_addr().expect("fault proxy addr");
        listener
            .set_nonblocking(true)
            .expect("nonblocking fault proxy listener");
        let log = dir.join(format!("faults-{name}.log"));
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            mode: Mutex::new(Mode::Pass),
            throttle: AtomicU64::new(0),
            rules: Mutex::new(Vec::new()),
            records: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            log: log.clone(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, addr, backend, shared))
        };
        proc::say(format!(
            "fault proxy {name} on http://{addr} in front of {backend} (log {})",
            log.display()
        ));
        FaultProxy {
            name: name.to_owned(),
            addr,
            backend,
            log,
            shared,
            thread: Some(thread),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode lock") = mode;
        // Let the accept loop close or reopen the listener before the caller goes on.
        std::thread::sleep(Duration::from_millis(30));
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.lock().expect("mode lock")
    }

    /// Limits answer bodies to `bytes_per_sec` per connection (None: unlimited).
    pub fn set_throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .throttle
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// The first request whose path contains `pattern` is cut after `after` body bytes.
    pub fn cut_first(&self, pattern: &str, after: u64) {
        self.add_rule(pattern, after, Action::Cut);
    }

    /// The first request whose path contains `pattern` stalls after `after` body bytes.
    pub fn stall_first(&self, pattern: &str, after: u64) {
        self.add_rule(pattern, after, Action::Stall);
    }

    fn add_rule(&self, pattern: &str, after: u64, action: Action) {
        self.shared.rules.lock().expect("rules lock").push(Rule {
            pattern: pattern.to_owned(),
            after,
            action,
            spent: false,
        });
    }

    /// Rules that have not fired yet.
    pub fn pending_rules(&self) -> Vec<String> {
        self.shared
            .rules
            .lock()
            .expect("rules lock")
            .iter()
            .filter(|r| !r.spent)
            .map(|r| format!("{:?} {} after {}", r.action, r.pattern, r.after))
            .collect()
    }

    /// Back to plain pass-through: mode, throttle and rules.
    pub fn reset(&self) {
        self.shared.rules.lock().expect("rules lock").clear();
        self.set_throttle(None);
        self.set_mode(Mode::Pass);
    }

    pub fn mark(&self) -> ProxyMark {
        ProxyMark {
            records: self.shared.records.lock().expect("records lock").len(),
            connections: self.shared.connections.load(Ordering::SeqCst),
            bytes: self.shared.bytes_down.load(Ordering::SeqCst),
        }
    }

    /// Requests since `mark` (those still in progress included, as they are so far).
    pub fn since(&self, mark: &ProxyMark) -> Vec<Record> {
        self.shared.records.lock().expect("records lock")[mark.records..].to_vec()
    }

    pub fn connections_since(&self, mark: &ProxyMark) -> u64 {
        self.shared.connections.load(Ordering::SeqCst) - mark.connections
    }

    pub fn bytes_since(&self, mark: &ProxyMark) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst) - mark.bytes
    }

    /// Body bytes sent downstream since `mark` for requests whose path contains `pattern`.
    pub fn body_bytes_for(&self, mark: &ProxyMark, pattern: &str) -> u64 {
        self.since(mark)
            .iter()
            .filter(|r| r.path.contains(pattern))
            .map(|r| r.body_bytes)
            .sum()
    }
}

/// One line per request, for reports.
pub fn listing(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| {
            format!(
                "  {} {}{} -> {} ({} body bytes{}, {} ms)\n",
                r.method,
                r.path,
                r.range
                    .as_deref()
                    .map(|x| format!(" [Range: {x}]"))
                    .unwrap_or_default(),
                r.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no answer".into()),
                r.body_bytes,
                r.fault
                    .as_deref()
                    .map(|f| format!(", {f}"))
                    .unwrap_or_default(),
                r.ms
            )
        })
        .collect()
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, addr: SocketAddr, backend: SocketAddr, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    while !shared.stop.load(Ordering::SeqCst) {
        let mode = *shared.mode.lock().expect("mode lock");
        if mode == Mode::Refuse {
            // Closing the listening socket makes connects fail with ECONNREFUSED.
            listener = None;
            std::thread::sleep(POLL);
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(addr) {
                Ok(l) => {
                    l.set_nonblocking(true).expect("nonblocking listener");
                    listener.insert(l)
                }
                Err(e) => {
                    proc::say(format!(
                        "fault proxy {}: cannot reopen {addr}: {e}; retrying",
                        shared.name
                    ));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        match l.accept() {
            Ok((conn, _)) => {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    handle(conn, backend, &shared);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Reads an HTTP head (up to and including the blank line). Returns (head, extra bytes read
/// past it), or None on EOF/error/timeout.
fn read_head(s: &mut TcpStream, timeout: Duration) -> Option<(String, Vec<u8>)> {
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            return Some((head, buf[i + 4..].to_vec()));
        }
        if buf.len() > 256 * 1024 {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The head with hop-by-hop connection headers replaced by `Connection: close`.
fn close_head(head: &str) -> String {
    let mut out = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        if i > 0 {
            let name = line.split(':').next().unwrap_or("").trim();
            if ["connection", "keep-alive", "proxy-connection"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
            {
                continue;
            }
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

/// Holds a connection open without answering, until the peer closes it, the proxy stops, or
/// HOLD_MAX passes.
fn hold(conn: &mut TcpStream, shared: &Shared) {
    let started = Instant::now();
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    while !shared.stop.load(Ordering::SeqCst) && started.elapsed() < HOLD_MAX {
        match conn.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn canned(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn handle(mut conn: TcpStream, backend: SocketAddr, shared: &Shared) {
    let started = Instant::now();
    let Some((head, extra)) = read_head(&mut conn, Duration::from_secs(30)) else {
        return;
    };
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let range = header_value(&head, "range").map(str::to_owned);
    let mode = *shared.mode.lock().expect("mode lock");
    let idx = {
        let mut recs = shared.records.lock().expect("records lock");
        recs.push(Record {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            ..Record::default()
        });
        recs.len() - 1
    };
    let update = |f: &dyn Fn(&mut Record)| {
        let mut recs = shared.records.lock().expect("records lock");
        f(&mut recs[idx]);
    };
    let finish = |shared: &Shared| {
        let rec = {
            let mut recs = shared.records.lock().expect("records lock");
            recs[idx].ms = started.elapsed().as_millis() as u64;
            recs[idx].clone()
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&shared.log)
        {
            let _ = write!(
                f,
                "{} {}",
                humantime::format_rfc3339_millis(SystemTime::now()),
                listing(std::slice::from_ref(&rec)).trim_start()
            );
        }
    };

    match mode {
        Mode::Refuse => {
            // The mode changed after the accept: drop the connection unanswered.
            update(&|r| r.fault = Some("refused".into()));
            finish(shared);
        }
        Mode::Blackhole => {
            update(&|r| r.fault = Some("blackholed".into()));
            hold(&mut conn, shared);
            finish(shared);
        }
        Mode::Status502 | Mode::Status429 => {
            let (status, resp) = if mode == Mode::Status502 {
                (
                    502,
                    canned(
                        "502 Bad Gateway",
                        "",
                        r#"{"errors":[{"code":"UNAVAILABLE","message":"injected 502"}]}"#,
                    ),
                )
            } else {
                (
                    429,
                    canned(
                        "429 Too Many Requests",
                        "Retry-After: 7\r\n",
                        r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"injected 429"}]}"#,
                    ),
                )
            };
            let _ = conn.write_all(resp.as_bytes());
            shared
                .bytes_down
                .fetch_add(resp.len() as u64, Ordering::SeqCst);
            update(&|r| {
                r.status = Some(status);
                r.fault = Some(format!("forced {status}"));
            });
            let _ = conn.shutdown(Shutdown::Both);
            finish(shared);
        }
        Mode::Pass => {
            forward(&mut conn, backend, shared, &head, extra, &path, &update);
            finish(shared);
        }
    }
}

/// Updates this request's [`Record`].
type Update<'a> = &'a dyn Fn(&dyn Fn(&mut Record));

fn forward(
    conn: &mut TcpStream,
    backend: SocketAddr,
    shared: &Shared,
    head: &str,
    mut extra: Vec<u8>,
    path: &str,
    update: Update<'_>,
) {
    let mut up = match TcpStream::connect_timeout(&backend, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            let resp = canned("502 Bad Gateway", "", "{}");
            let _ = conn.write_all(resp.as_bytes());
            update(&|r| {
                r.status = Some(502);
                r.fault = Some(format!("backend unreachable: {e}"));
            });
            return;
        }
    };
    // Request: head with Connection: close, then a Content-Length body if any.
    let body_len: usize = header_value(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if up.write_all(close_head(head).as_bytes()).is_err() {
        return;
    }
    while extra.len() < body_len {
        let mut chunk = vec![0u8; (body_len - extra.len()).min(64 * 1024)];
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => extra.extend_from_slice(&chunk[..n]),
        }
    }
    if !extra.is_empty() && up.write_all(&extra[..body_len.min(extra.len())]).is_err() {
        return;
    }

    let Some((resp_head, mut pending)) = read_head(&mut up, Duration::from_secs(120)) else {
        update(&|r| r.fault = Some("backend sent no answer".into()));
        return;
    };
    let status: Option<u16> = resp_head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    let out_head = close_head(&resp_head);
    if conn.write_all(out_head.as_bytes()).is_err() {
        return;
    }
    shared
        .bytes_down
        .fetch_add(out_head.len() as u64, Ordering::SeqCst);
    update(&|r| r.status = status);

    // The one-shot rule for this path, if any.
    let rule = {
        let mut rules = shared.rules.lock().expect("rules lock");
        rules
            .iter_mut()
            .find(|r| !r.spent && path.contains(&r.pattern))
            .map(|r| {
                r.spent = true;
                (r.action, r.after)
            })
    };

    let _ = up.set_read_timeout(Some(Duration::from_secs(120)));
    let mut sent: u64 = 0;
    let mut window_start = Instant::now();
    let mut window_sent: u64 = 0;
    let mut window_rate: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let data: Vec<u8> = if !pending.is_empty() {
            std::mem::take(&mut pending)
        } else {
            match up.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf[..n].to_vec(),
            }
        };
        let mut data = &data[..];
        while !data.is_empty() {
            if let Some((action, after)) = rule {
                if sent >= after {
                    match action {
                        Action::Cut => {
                            update(&|r| r.fault = Some(format!("cut after {after} body bytes")));
                            let _ = conn.flush();
                            let _ = conn.shutdown(Shutdown::Both);
                        }
                        Action::Stall => {
                            update(&|r| {
                                r.fault = Some(format!("stalled after {after} body bytes"))
                            });
                            let _ = conn.flush();
                            hold(conn, shared);
                        }
                    }
                    return;
                }
            }
            let rate = shared.throttle.load(Ordering::SeqCst);
            let mut n = data.len();
            if let Some((_, after)) = rule {
                n = n.min((after - sent) as usize);
            }
            if rate > 0 {
                // Small writes, paced against a window that restarts when the rate changes.
                n = n.min((rate / 20).max(1024) as usize);
                if rate != window_rate {
                    window_rate = rate;
                    window_start = Instant::now();
                    window_sent = 0;
                }
                let due = Duration::from_secs_f64(window_sent as f64 / rate as f64);
                let elapsed = window_start.elapsed();
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
            if conn.write_all(&data[..n]).is_err() {
                return;
            }
            sent += n as u64;
            window_sent += n as u64;
            shared.bytes_down.fetch_add(n as u64, Ordering::SeqCst);
            update(&|r| r.body_bytes = sent);
            data = &data[n..];
        }
    }
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Write);
}
