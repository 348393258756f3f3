//! Egress through an HTTP proxy: which proxy (if any) each upstream connection takes, and the
//! `CONNECT` tunnel through it.
//!
//! The choice, per registry: its `proxy` key (`"http://[user:pass@]host:port"`, or `"none"` for
//! direct connections whatever the environment), else the environment as curl and Go read it:
//! `HTTPS_PROXY` / `https_proxy` for https destinations, `HTTP_PROXY` / `http_proxy` for http
//! ones, `ALL_PROXY` / `all_proxy` for either when the specific one is unset, and
//! `NO_PROXY` / `no_proxy` (comma list of hosts, `.domain` or domain suffixes, IPs, CIDRs, `*`)
//! naming destinations reached directly. The choice is made per destination host, so a
//! redirect's CDN host and a token realm's host get their own answer (NO_PROXY applies to each).
//! NO_PROXY matching is hyper-util's [`Matcher`] (curl's rules).
//!
//! Every proxied connection is a `CONNECT host:port` tunnel, for http upstreams too; TLS to an
//! https upstream runs end to end inside it (rustls verifies the upstream's certificate, never
//! the proxy's). Only `http://` proxy URLs are supported (CONNECT over plain TCP to the proxy).
//!
//! The tunnel is our own short function rather than hyper-util's `Tunnel` because that one
//! reports every refusal but 407 as a bare "unsuccessful" (an operator needs the proxy's status:
//! 403 from a filtering proxy, 502 when it cannot reach the registry) and tunnels a port-less
//! `http://` destination to port 443.
//!
//! The guard of [`super::target`] still applies: the CONNECT target must be a configured host
//! (the registry, its `redirect_hosts`) or resolve, here, to public addresses only; the proxy
//! host itself is the operator's choice and resolves to whatever it is (loopback, private).
//! Credentials in a proxy URL go only into `Proxy-Authorization: Basic` on the CONNECT; logs,
//! errors and `Debug` show the URL as `http://user:***@host:port`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Duration;
use url::Url;

use super::target::{is_public, GuardedResolver};

/// Most bytes of a proxy's answer to CONNECT (status line and headers) read.
const MAX_CONNECT_ANSWER: usize = 8192;

/// A proxy URL, `http://[user:pass@]host:port`, and where it was configured. `Display` and
/// `Debug` redact the password (`http://user:***@proxy:3128`).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// The URL, credentials (percent-encoded) included. Never logged as is.
    url: Url,
    /// Where it came from: `proxy` (the key) or the environment variable's name.
    pub from: &'static str,
}

impl ProxyUrl {
    /// Parses `text`, configured at `from` (`"proxy"` for the key, else the environment
    /// variable's name). A value without a scheme is taken as `http://` only from the
    /// environment (as curl and Go do); the key must spell it.
    ///
    /// Errors: a message (without the password) naming the problem and the fix: not a URL, a
    /// scheme other than `http` (`https://` and `socks5://` proxies are not supported), no host,
    /// no port, a path or query.
    pub fn parse(text: &str, from: &'static str) -> Result<ProxyUrl, String> {
        let t = text.trim();
        let form = "write it as http://host:port or http://user:password@host:port";
        let with_scheme = if from != "proxy" && !t.contains("://") {
            format!("http://{t}")
        } else {
            t.to_string()
        };
        let url = Url::parse(&with_scheme)
            .map_err(|e| format!("{:?} is not a proxy URL ({e}); {form}", redact_text(t)))?;
        let shown = redact(&url);
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "{shown}: https:// proxies (TLS to the proxy) are not supported; use the proxy's http:// address (the upstream's TLS still runs end to end inside the CONNECT tunnel)"
                ))
            }
            s if s.starts_with("socks") => {
                return Err(format!(
                    "{shown}: SOCKS proxies are not supported; use an HTTP proxy that accepts CONNECT ({form})"
                ))
            }
            s => {
                return Err(format!(
                    "{shown}: scheme {s}:// is not supported, only http:// proxies; {form}"
                ))
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{shown} has no host; {form}"));
        }
        if url.port().is_none() && !has_port(&with_scheme) {
            return Err(format!(
                "{shown} has no port; write it, e.g. http://{}:3128",
                url.host_str().unwrap_or("proxy")
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{shown} has a path or query; a proxy URL is only http://[user:password@]host:port"
            ));
        }
        Ok(ProxyUrl { url, from })
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    /// `host:port` of the proxy.
    fn authority(&self) -> String {
        super::host_of(&self.url)
    }
}

impl std::fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyUrl({} from {})", self.redacted(), self.from)
    }
}

/// Whether the authority of URL text `t` (`scheme://[userinfo@]host[:port][/...]`) spells a
/// port (`Url` forgets a default one: `http://p:80`).
fn has_port(t: &str) -> bool {
    let rest = t.split_once("://").map_or(t, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = host_port.rsplit_once(']').map_or(host_port, |(_, p)| p);
    after_host
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `url` with its password (if any) replaced by `***`.
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.as_str().trim_end_matches('/').to_string()
}

/// Text that did not parse as a URL, with anything between `://` and the last `@` (user and
/// password) replaced by `***`.
fn redact_text(t: &str) -> String {
    match (t.find("://"), t.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}***{}", &t[..s + 3], &t[a..]),
        (None, Some(a)) => format!("***{}", &t[a..]),
        _ => t.to_string(),
    }
}

/// How one registry's connections leave: its proxies by destination scheme and the hosts
/// exempted, resolved from the `proxy` key or the environment when the config is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPlan {
    /// Proxy for `http://` destinations.
    pub http: Option<ProxyUrl>,
    /// Proxy for `https://` destinations.
    pub https: Option<ProxyUrl>,
    /// `NO_PROXY` list (empty for the `proxy` key: it applies to every host of its registry).
    pub no_proxy: String,
    /// `proxy = "none"`: direct, the environment ignored.
    pub forced_direct: bool,
}

/// Which environment variables [`ProxyPlan::from_env`] reads, in order of preference within
/// each group.
pub const PROXY_ENV: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

impl ProxyPlan {
    /// The plan for a `proxy` key's value: `"none"` for direct, else an `http://` URL used for
    /// every connection of the registry (its redirects and token realm included).
    ///
    /// Errors: as [`ProxyUrl::parse`], plus an empty value.
    pub fn from_key(value: &str) -> Result<ProxyPlan, String> {
        if value.trim().eq_ignore_ascii_case("none") {
            return Ok(ProxyPlan {
                forced_direct: true,
                ..Default::default()
            });
        }
        if value.trim().is_empty() {
            return Err(
                "is empty; write http://host:port, or \"none\" for direct connections (leave it out to follow HTTPS_PROXY / NO_PROXY)".into(),
            );
        }
        let p = ProxyUrl::parse(value, "proxy")?;
        Ok(ProxyPlan {
            http: Some(p.clone()),
            https: Some(p),
            ..Default::default()
        })
    }

    /// The plan from the environment, read through `env` (a variable's value, `None` when
    /// unset; an empty value counts as unset). `https` for https destinations is
    /// `HTTPS_PROXY`, `https_proxy`, `ALL_PROXY`, `all_proxy` (first set); `http` likewise with
    /// `HTTP_PROXY`. Only the sides in `needed` (http, https) are parsed, so an unused
    /// variable (an `ALL_PROXY=socks5://...` for other tools) does not stop regcache.
    ///
    /// Errors: (the variable's name, the problem and fix) for a value that does not parse.
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        needed: (bool, bool),
    ) -> Result<ProxyPlan, (&'static str, String)> {
        let first = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
        };
        let side = |names: &[&'static str], need: bool| match first(names) {
            Some((name, v)) if need => ProxyUrl::parse(&v, name).map(Some).map_err(|m| (name, m)),
            _ => Ok(None),
        };
        Ok(ProxyPlan {
            http: side(
                &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"],
                needed.0,
            )?,
            https: side(
                &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"],
                needed.1,
            )?,
            no_proxy: first(&["NO_PROXY", "no_proxy"])
                .map(|(_, v)| v)
                .unwrap_or_default(),
            forced_direct: false,
        })
    }

    /// The proxy a connection to `dst` takes, `None` for direct.
    pub fn proxy_for(&self, dst: &Url) -> Option<ProxyUrl> {
        let uri: Uri = dst.as_str().parse().ok()?;
        self.route().pick(&uri).map(|(p, _)| p.clone())
    }

    /// How connections to `url` leave, for logs and `check-config`: `direct`,
    /// `direct (NO_PROXY)`, `direct (proxy = "none")`, or
    /// `via http://user:***@proxy:3128 (HTTPS_PROXY)`.
    pub fn describe(&self, url: &Url) -> String {
        match self.proxy_for(url) {
            Some(p) => format!("via {p} ({})", p.from),
            None if self.forced_direct => "direct (proxy = \"none\")".into(),
            None if self.http.is_some() || self.https.is_some() => "direct (NO_PROXY)".into(),
            None => "direct".into(),
        }
    }

    fn route(&self) -> Route {
        let raw = |p: &Option<ProxyUrl>| p.as_ref().map(|p| p.url.as_str().to_string());
        let matcher = Matcher::builder()
            .http(raw(&self.http).unwrap_or_default())
            .https(raw(&self.https).unwrap_or_default())
            .no(self.no_proxy.clone())
            .build();
        Route {
            matcher,
            http: self.http.clone(),
            https: self.https.clone(),
        }
    }
}

/// A [`ProxyPlan`] ready for connections.
struct Route {
    matcher: Matcher,
    http: Option<ProxyUrl>,
    https: Option<ProxyUrl>,
}

impl Route {
    /// The proxy for `dst` and the `Proxy-Authorization` value to send, `None` for direct.
    fn pick(&self, dst: &Uri) -> Option<(&ProxyUrl, Option<http::HeaderValue>)> {
        let i = self.matcher.intercept(dst)?;
        let p = match dst.scheme_str() {
            Some("http") => self.http.as_ref(),
            _ => self.https.as_ref(),
        }?;
        Some((p, i.basic_auth().cloned()))
    }
}

/// The upstream client's TCP connector: direct through the guarded resolver, or through a
/// `CONNECT` tunnel when the registry's [`ProxyPlan`] says so for the destination.
#[derive(Clone)]
pub(super) struct Connector {
    /// Direct connections (the guard in its resolver).
    direct: HttpConnector<GuardedResolver>,
    /// Connections to the proxy (any address: the operator configured it).
    to_proxy: HttpConnector,
    /// `None`: always direct.
    route: Option<Arc<Route>>,
    /// The guard, applied to CONNECT targets.
    guard: GuardedResolver,
    /// Bound on resolving a CONNECT target for the guard.
    timeout: Duration,
}

impl Connector {
    /// A connector for `plan`, connecting directly through `direct` (whose resolver is
    /// `guard`), bounding connects by `timeout`.
    pub(super) fn new(
        plan: &ProxyPlan,
        direct: HttpConnector<GuardedResolver>,
        guard: GuardedResolver,
        timeout: Duration,
    ) -> Connector {
        let mut to_proxy = HttpConnector::new();
        to_proxy.set_connect_timeout(Some(timeout));
        to_proxy.set_nodelay(true);
        let route = (plan.http.is_some() || plan.https.is_some()).then(|| Arc::new(plan.route()));
        Connector {
            direct,
            to_proxy,
            route,
            guard,
            timeout,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let picked = self
            .route
            .as_ref()
            .and_then(|r| r.pick(&dst).map(|(p, a)| (p.clone(), a)));
        let Some((proxy, auth)) = picked else {
            let mut direct = self.direct.clone();
            return Box::pin(async move { direct.call(dst).await.map_err(Into::into) });
        };
        let mut to_proxy = self.to_proxy.clone();
        let guard = self.guard.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let (host, port) = target_of(&dst)?;
            guard_target(&guard, &host, port, timeout).await?;
            let target = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let proxy_uri: Uri = format!("http://{}/", proxy.authority()).parse()?;
            let tcp = to_proxy
                .call(proxy_uri)
                .await
                .map_err(|e| format!("cannot reach proxy {proxy}: {}", super::error_chain(&e)))?;
            tracing::debug!(proxy = %proxy, target = %target, "CONNECT through proxy");
            let tcp = connect(tcp.into_inner(), &target, auth.as_ref())
                .await
                .map_err(|why| format!("proxy {proxy}: CONNECT {target}: {why}"))?;
            Ok(TokioIo::new(tcp))
        })
    }
}

/// Host (without brackets) and port (the scheme's default when none) of `dst`.
fn target_of(dst: &Uri) -> Result<(String, u16), BoxError> {
    let host = dst
        .host()
        .ok_or("destination without a host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = dst.port_u16().unwrap_or(match dst.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    Ok((host, port))
}

/// The resolver's rule for a CONNECT target (the proxy resolves it, not us): a configured
/// host passes; any other must resolve here, within `timeout`, to public addresses only.
///
/// Errors: the refusal, naming the host and the fix.
async fn guard_target(
    guard: &GuardedResolver,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(), BoxError> {
    if guard.trusted.iter().any(|t| t == host) {
        return Ok(());
    }
    let refused = |why: String| -> BoxError {
        format!("CONNECT to {host}:{port} refused: {why} (allow it with redirect_hosts)").into()
    };
    let addrs: Vec<std::net::IpAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| refused("its name does not resolve in time".into()))?
            .map_err(|_| refused("its name does not resolve".into()))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(refused("its name has no address".into()));
    }
    match addrs.iter().find(|ip| !is_public(ip)) {
        Some(ip) => Err(refused(format!("{ip} is not a public address"))),
        None => Ok(()),
    }
}

/// Sends `CONNECT target` (with `Proxy-Authorization` when `auth` is given) on `tcp` and reads
/// the proxy's answer.
///
/// Errors: a message for a non-2xx answer (its status and reason, and the fix for 407), an
/// answer that is not HTTP or too long, or a closed connection.
async fn connect(
    mut tcp: TcpStream,
    target: &str,
    auth: Option<&http::HeaderValue>,
) -> Result<TcpStream, String> {
    let mut req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {}\r\n",
        super::USER_AGENT_VALUE
    )
    .into_bytes();
    if let Some(a) = auth {
        req.extend_from_slice(b"Proxy-Authorization: ");
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    tcp.write_all(&req)
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut buf = vec![0u8; MAX_CONNECT_ANSWER];
    let mut len = 0;
    loop {
        let n = tcp
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            return Err("the proxy closed the connection without answering".into());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(end)) => {
                let code = resp.code.unwrap_or(0);
                let reason = resp.reason.unwrap_or("").to_string();
                if (200..300).contains(&code) {
                    if end != len {
                        return Err("the proxy sent data after its 2xx answer".into());
                    }
                    return Ok(tcp);
                }
                let hint = match code {
                    407 => " (the proxy wants credentials: put them in the proxy URL, http://user:password@host:port, or check them)",
                    403 => " (the proxy's policy forbids this destination: ask its operator to allow CONNECT to it)",
                    _ => "",
                };
                return Err(format!("the proxy answered {code} {reason}{hint}"));
            }
            Ok(httparse::Status::Partial) if len == buf.len() => {
                return Err(format!(
                    "the proxy's answer is longer than {MAX_CONNECT_ANSWER} bytes"
                ))
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("the proxy's answer is not HTTP: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn urls_parse_and_redact() {
        let p = ProxyUrl::parse("http://bob:s%40cret@proxy.corp:3128", "proxy").unwrap();
        assert_eq!(p.redacted(), "http://bob:***@proxy.corp:3128");
        assert!(!format!("{p:?}{p}").contains("cret"));
        assert_eq!(p.authority(), "proxy.corp:3128");
        for (bad, says) in [
            ("socks5://p:1080", "SOCKS"),
            ("https://p:443", "https:// proxies"),
            ("ftp://p:21", "only http://"),
            ("http://p", "no port"),
            ("http://p:3128/x", "path"),
            ("proxy:3128", "not supported"),
            ("http://u:hunter2@[bad:3128", "not a proxy URL"),
        ] {
            let e = ProxyUrl::parse(bad, "proxy").unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        // From the environment a bare host:port means http:// (curl, Go).
        let p = ProxyUrl::parse("proxy:3128", "HTTPS_PROXY").unwrap();
        assert_eq!(p.redacted(), "http://proxy:3128");
        assert!(ProxyUrl::parse("http://proxy:80", "proxy").is_ok());
    }

    /// A CONNECT target passes the guard only as a configured host or a public address.
    #[tokio::test]
    async fn connect_targets_are_guarded() {
        let guard = GuardedResolver {
            trusted: Arc::new(vec!["registry.internal".into()]),
        };
        let t = Duration::from_secs(5);
        assert!(guard_target(&guard, "registry.internal", 443, t)
            .await
            .is_ok());
        assert!(guard_target(&guard, "8.8.8.8", 443, t).await.is_ok());
        for bad in [
            "localhost",
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "::1",
        ] {
            let e = guard_target(&guard, bad, 80, t).await.unwrap_err();
            assert!(e.to_string().contains("redirect_hosts"), "{bad}: {e}");
        }
    }

    #[test]
    fn environment_and_no_proxy() {
        let e = env(&[
            ("https_proxy", "http://p:3128"),
            ("ALL_PROXY", "socks5://s:1080"),
            ("no_proxy", "internal.corp, .svc,10.0.0.0/8"),
        ]);
        // ALL_PROXY (unsupported) is only parsed when something would use it.
        let plan = ProxyPlan::from_env(&e, (false, true)).unwrap();
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            plan.proxy_for(&u("https://ghcr.io/")).unwrap().redacted(),
            "http://p:3128"
        );
        assert_eq!(
            plan.proxy_for(&u("https://ghcr.io/")).unwrap().from,
            "https_proxy"
        );
        for direct in [
            "https://internal.corp/",
            "https://reg.internal.corp:5000/",
            "https://a.svc/",
            "https://10.1.2.3/",
        ] {
            assert!(plan.proxy_for(&u(direct)).is_none(), "{direct}");
        }
        assert_eq!(plan.describe(&u("https://a.svc/")), "direct (NO_PROXY)");
        assert_eq!(
            plan.describe(&u("https://ghcr.io/")),
            "via http://p:3128 (https_proxy)"
        );
        let (var, msg) = ProxyPlan::from_env(&e, (true, true)).unwrap_err();
        assert_eq!(var, "ALL_PROXY");
        assert!(msg.contains("SOCKS"), "{msg}");
        let star = env(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", "*")]);
        let plan = ProxyPlan::from_env(&star, (true, true)).unwrap();
        assert!(plan.proxy_for(&u("https://ghcr.io/")).is_none());
        let none = ProxyPlan::from_key("none").unwrap();
        assert_eq!(
            none.describe(&u("https://ghcr.io/")),
            "direct (proxy = \"none\")"
        );
        assert!(ProxyPlan::from_key("").is_err());
    }
}
