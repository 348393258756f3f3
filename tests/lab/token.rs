//! A Docker-Hub-like token server (the `realm` of distribution's `auth: token`), in process.
//!
//! `GET /token?service=S&scope=repository:NAME:pull[,push]...` answers
//! `{"token": JWT, "access_token": JWT, "expires_in": TTL, "issued_at": RFC3339}`.
//!
//! Signing: ES256 (ECDSA P-256, SHA-256, JOSE `r||s` signature) with a key generated at
//! start-up by rcgen; the JWT header carries `x5c: [base64(DER)]` of a self-signed certificate
//! whose PEM is the registry's `rootcertbundle`. distribution 2.8 verifies the x5c chain
//! against that bundle and then the signature through libtrust, which accepts ES256 for a
//! P-256 key (and RS256 for RSA keys; ring, rcgen's backend, cannot generate RSA keys).
//! Expiry: distribution 2.8.2 accepts a token until `exp` + 60 s (its `Leeway` for clock
//! skew). With `enforce_ttl` (the default against regcache), so that a token really dies `ttl`
//! seconds after issue at the registry, the `exp` claim is set to `iat + ttl - 60`;
//! `expires_in` (what clients use, per the token spec) says `ttl`. A client (or a mirror) that
//! does not refresh its token then gets 401 from the registry. `Lab::start` checks this
//! against the running registry each time. Without `enforce_ttl`, `exp = iat + ttl` like the
//! Hub's; that is for direct mode, because dockerd 20.10 treats any token as valid for at
//! least 60 s (distribution's client `minimumTokenLifetimeSeconds`) and fails a pull whose
//! token dies earlier.
//!
//! Access policy, like the Hub's public images: anyone gets `pull`; `push` (and `delete`) is
//! granted only with HTTP Basic credentials `pusher:<password>`. Wrong credentials get 401.
//! With [`TokenOptions::puller`] (a private registry, like a ghcr.io organisation's): `pull`
//! needs Basic credentials too (the puller's or the pusher's); anonymous requests get a token
//! granting nothing, so the registry answers 401, as ghcr.io does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;

pub const SERVICE: &str = "registry.e2e.test";
pub const ISSUER: &str = "e2e-token-issuer";
pub const PUSHER: &str = "pusher";
/// distribution's clock-skew allowance on `exp`/`nbf` (registry/auth/token `Leeway`).
pub const REGISTRY_LEEWAY_SECS: i64 = 60;

/// One issued token, for the test's own bookkeeping.
#[derive(Clone, Debug)]
pub struct Issued {
    pub subject: String,
    /// The token itself (the JWT).
    pub token: String,
    pub scopes: Vec<String>,
    pub granted: Vec<String>,
    pub at: SystemTime,
}

#[derive(Default)]
struct State {
    issued: Mutex<Vec<Issued>>,
    rejected: AtomicU64,
}

/// Who the token server serves.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// The `service` the registry names in its challenge (and the JWT audience).
    pub service: String,
    /// Credentials required for `pull` (None: anyone may pull).
    pub puller: Option<(String, String)>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            service: SERVICE.to_owned(),
            puller: None,
        }
    }
}

pub struct TokenServer {
    pub addr: SocketAddr,
    pub service: String,
    pub log_path: PathBuf,
    pub cert_pem_path: PathBuf,
    pub ttl_secs: u64,
    pub enforce_ttl: bool,
    pub pusher_password: String,
    signer: Arc<Signer>,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Signer {
    key: jsonwebtoken::EncodingKey,
    x5c: String,
    ttl_secs: u64,
    /// Extra seconds the registry accepts a token past its `exp` claim.
    registry_grace: i64,
    pusher_password: String,
    service: String,
    puller: Option<(String, String)>,
    jti: AtomicU64,
}

#[derive(Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: i64,
    nbf: i64,
    iat: i64,
    jti: String,
    access: Vec<Access>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after epoch")
        .as_secs() as i64
}

impl Signer {
    /// Signs a token whose `exp` claim is `valid_for` seconds from now, minus the registry's
    /// grace when the TTL is enforced.
    fn mint(
        &self,
        subject: &str,
        service: &str,
        access: Vec<Access>,
        valid_for: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.mint_with_exp(subject, service, access, valid_for - self.registry_grace)
    }

    fn mint_with_exp(
        &self,
        subject: &str,
        service: &str,
        access: Vec<Access>,
        exp_in: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: subject.to_owned(),
            aud: service.to_owned(),
            exp: now + exp_in,
            nbf: now - 1,
            iat: now,
            jti: format!("e2e-{}", self.jti.fetch_add(1, Ordering::SeqCst)),
            access,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("JWT".to_owned());
        header.x5c = Some(vec![self.x5c.clone()]);
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}

impl TokenServer {
    /// Generates the signing key and certificate (writing the cert PEM into `dir`) and starts
    /// serving on a free loopback port.
    pub fn start(dir: &Path, ttl_secs: u64, enforce_ttl: bool) -> TokenServer {
        Self::start_with(dir, ttl_secs, enforce_ttl, TokenOptions::default())
    }

    /// Like [`TokenServer::start`], for another service and access policy.
    pub fn start_with(
        dir: &Path,
        ttl_secs: u64,
        enforce_ttl: bool,
        options: TokenOptions,
    ) -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate ECDSA P-256 token signing key");
        let mut params = rcgen::CertificateParams::new(vec![ISSUER.to_owned()])
            .expect("token certificate params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ISSUER);
        let cert = params
            .self_signed(&key)
            .expect("self-sign token certificate");
        let cert_pem_path = dir.join("token-cert.pem");
        std::fs::write(&cert_pem_path, cert.pem()).expect("write token cert PEM");
        let encoding_key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
            .expect("load signing key into jsonwebtoken");
        let pusher_password = format!("pw-{:x}", nanos());
        let signer = Arc::new(Signer {
            key: encoding_key,
            x5c: base64::engine::general_purpose::STANDARD.encode(cert.der().as_ref()),
            ttl_secs,
            registry_grace: if enforce_ttl { REGISTRY_LEEWAY_SECS } else { 0 },
            pusher_password: pusher_password.clone(),
            service: options.service.clone(),
            puller: options.puller.clone(),
            jti: AtomicU64::new(1),
        });

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().expect("token server addr");
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let log_path = dir.join("token.log");
        let thread = {
            let log_path = log_path.clone();
            let (signer, state, stop) = (signer.clone(), state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (signer, state, log_path) =
                        (signer.clone(), state.clone(), log_path.clone());
                    std::thread::spawn(move || handle(conn, &signer, &state, &log_path));
                }
            })
        };
        super::proc::say(format!(
            "token server on http://{addr}/token (service {}, ES256, expires_in {ttl_secs}s{}{})",
            options.service,
            if enforce_ttl {
                ", enforced at the registry"
            } else {
                ""
            },
            match &options.puller {
                Some((user, _)) => format!(", pull only with the credentials of {user:?}"),
                None => String::new(),
            }
        ));
        TokenServer {
            addr,
            service: options.service,
            log_path,
            cert_pem_path,
            ttl_secs,
            enforce_ttl,
            pusher_password,
            signer,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.state.issued.lock().expect("token state lock").clone()
    }

    /// A pull token for `repo` that the registry accepts for `valid_for` more seconds
    /// (negative: already expired), for the lab's self-check.
    pub fn mint_pull_token(&self, repo: &str, valid_for: i64) -> String {
        self.signer
            .mint_with_exp(
                "self-check",
                &self.service,
                vec![Access {
                    kind: "repository".into(),
                    name: repo.into(),
                    actions: vec!["pull".into()],
                }],
                valid_for - REGISTRY_LEEWAY_SECS,
            )
            .expect("mint self-check token")
    }

    pub fn rejected(&self) -> u64 {
        self.state.rejected.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn respond(conn: &mut TcpStream, status: &str, extra_headers: &str, body: &str) {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes());
    let _ = conn.flush();
}

/// Error answers of the token server: status line and body.
const NOT_FOUND: (&str, &str) = ("404 Not Found", r#"{"error":"not found"}"#);
const NOT_GET: (&str, &str) = ("405 Method Not Allowed", r#"{"error":"use GET"}"#);
const BAD_SERVICE: (&str, &str) = ("400 Bad Request", r#"{"error":"unknown service"}"#);

fn handle(mut conn: TcpStream, signer: &Signer, state: &State, log_path: &Path) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let authorization = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_owned());

    let log = |line: String| {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
        {
            let _ = writeln!(
                f,
                "{} {line}",
                humantime::format_rfc3339_millis(SystemTime::now())
            );
        }
    };
    // An error answer, logged.
    let refuse = |conn: &mut TcpStream, line: String, (status, body): (&str, &str)| {
        log(line);
        respond(conn, status, "", body);
    };

    let url = match url::Url::parse(&format!("http://token.local{target}")) {
        Ok(u) if u.path() == "/token" => u,
        _ => {
            let line = format!("404 {method} {target}");
            return refuse(&mut conn, line, NOT_FOUND);
        }
    };
    if method != "GET" {
        // containerd tries the OAuth2 POST flow when it has credentials and falls back to GET
        // on 404/405; Docker Hub's realm does the same dance.
        let line = format!("405 {method} {target}");
        return refuse(&mut conn, line, NOT_GET);
    }
    let mut service = String::new();
    let mut scopes = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "service" => service = v.into_owned(),
            // A scope parameter may itself hold several space-separated scopes.
            "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
            _ => {}
        }
    }
    if service != signer.service {
        let line = format!("400 bad service {service:?} {target}");
        return refuse(&mut conn, line, BAD_SERVICE);
    }

    let mut subject = String::new();
    if let Some(auth) = authorization {
        let decoded = auth
            .strip_prefix("Basic ")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        match decoded.as_deref().and_then(|s| s.split_once(':')) {
            Some((PUSHER, pw)) if pw == signer.pusher_password => subject = PUSHER.to_owned(),
            Some((user, pw))
                if signer
                    .puller
                    .as_ref()
                    .is_some_and(|(u, p)| u == user && p == pw) =>
            {
                subject = user.to_owned()
            }
            _ => {
                state.rejected.fetch_add(1, Ordering::SeqCst);
                log(format!("401 bad credentials {target}"));
                respond(
                    &mut conn,
                    "401 Unauthorized",
                    "WWW-Authenticate: Basic realm=\"e2e\"\r\n",
                    r#"{"details":"incorrect username or password"}"#,
                );
                return;
            }
        }
    }

    let mut access = Vec::new();
    let mut granted_desc = Vec::new();
    for scope in &scopes {
        // repository:NAME:ACTIONS (NAME has no ':'; a type like "repository(plugin)" is ignored)
        let mut it = scope.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if kind != "repository" {
            continue;
        }
        let granted: Vec<String> = actions
            .split(',')
            .filter(|a| {
                (*a == "pull" && (signer.puller.is_none() || !subject.is_empty()))
                    || (subject == PUSHER && (*a == "push" || *a == "delete"))
            })
            .map(str::to_owned)
            .collect();
        granted_desc.push(format!("{name}:{}", granted.join(",")));
        access.push(Access {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: granted,
        });
    }

    let jwt = match signer.mint(&subject, &service, access, signer.ttl_secs as i64) {
        Ok(t) => t,
        Err(e) => {
            log(format!("500 signing failed: {e}"));
            respond(
                &mut conn,
                "500 Internal Server Error",
                "",
                r#"{"error":"signing"}"#,
            );
            return;
        }
    };
    let body = serde_json::json!({
        "token": jwt,
        "access_token": jwt,
        "expires_in": signer.ttl_secs,
        "issued_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    })
    .to_string();
    log(format!(
        "200 sub={subject:?} scopes={scopes:?} granted={granted_desc:?}"
    ));
    state.issued.lock().expect("token state lock").push(Issued {
        token: jwt.clone(),
        subject,
        scopes,
        granted: granted_desc,
        at: SystemTime::now(),
    });
    respond(&mut conn, "200 OK", "", &body);
}
