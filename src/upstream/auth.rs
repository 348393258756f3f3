//! Upstream authentication: the `WWW-Authenticate` challenge (RFC 9110 §11.6.1) and the
//! bearer-token flow of the Docker token spec (distribution `docs/spec/auth/token.md`).
//!
//! A 401 carries `WWW-Authenticate: Bearer realm=..,service=..,scope=..`; regcache GETs the
//! realm with `service` and `scope` (Basic credentials when configured), caches the token per
//! (realm, service, scope) until shortly before `expires_in` (default 60 s), and retries.

use std::collections::HashMap;

use base64::Engine as _;
use http::header::{HeaderValue, AUTHORIZATION, USER_AGENT};
use http::{Method, Request};
use http_body_util::Empty;
use tokio::time::{Duration, Instant};
use url::Url;

use super::{host_of, read_limited, Upstream, UpstreamError, USER_AGENT_VALUE};
use crate::config::Credentials;

/// Largest token-endpoint answer read, in bytes.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// Most tokens cached per upstream.
const MAX_TOKENS: usize = 1024;
/// Token lifetime assumed when the token server gives no `expires_in` (token spec: 60 s).
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

/// The `WWW-Authenticate` challenge an upstream issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Token auth: fetch a token from `realm`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter to pass back.
        service: Option<String>,
        /// `scope` the upstream asked for.
        scope: Option<String>,
    },
    /// HTTP Basic auth with the configured credentials.
    Basic,
}

/// Parses a `WWW-Authenticate` value (RFC 9110 §11.6.1): `Bearer realm="..",service="..",scope=".."`
/// or `Basic realm=".."`. Returns `None` for other schemes or a Bearer without a realm.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_auth_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// Parses `k=v, k="quoted \"v\""` pairs.
fn parse_auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            continue;
        }
        chars.next();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n)
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
            val = val.trim().to_string();
        }
        out.push((key, val));
    }
    out
}

/// A cached bearer token.
pub(super) struct CachedToken {
    /// The token (never logged).
    token: String,
    /// When to stop using it.
    refresh_at: Instant,
}

/// Auth state shared by all requests to one upstream.
#[derive(Default)]
pub(super) struct AuthState {
    /// The last challenge seen, so later requests can fetch a token without a 401 round trip.
    pub(super) challenge: Option<Challenge>,
    /// Tokens by (realm, service, scope).
    pub(super) tokens: HashMap<(String, String, String), CachedToken>,
}

impl Upstream {
    /// The `Authorization` value for `scope`, from the known challenge (none before the first 401).
    pub(super) async fn authorization(
        &self,
        scope: &str,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let challenge = self.auth.lock().expect("auth lock").challenge.clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials().as_ref().map(basic_header)),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let token = self.token(&realm, service.as_deref(), scope).await?;
                let v = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| UpstreamError::Auth("token is not a valid header value".into()))?;
                Ok(Some(v))
            }
        }
    }

    /// A token for (realm, service, scope): cached, or fetched from the realm.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, UpstreamError> {
        let key = (
            realm.to_string(),
            service.unwrap_or_default().to_string(),
            scope.to_string(),
        );
        if let Some(t) = self.auth.lock().expect("auth lock").tokens.get(&key) {
            if Instant::now() < t.refresh_at {
                return Ok(t.token.clone());
            }
        }
        let fetched = self.fetch_token(realm, service, scope, key).await;
        tracing::debug!(
            registry = %self.registry,
            realm_host = %Url::parse(realm).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default(),
            scope,
            ok = fetched.is_ok(),
            with_credentials = self.credentials().is_some(),
            "token fetch"
        );
        let counter = match fetched {
            Ok(_) => {
                if self.credentials().is_some() {
                    self.credentials_accepted();
                }
                &self.token_fetches.0
            }
            Err(_) => &self.token_fetches.1,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fetched
    }

    /// Fetches a token from the realm and caches it under `key`.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        key: (String, String, String),
    ) -> Result<String, UpstreamError> {
        let mut url = Url::parse(realm)
            .map_err(|e| UpstreamError::Auth(format!("bad realm {realm:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::Auth(format!(
                "realm {realm:?} is not an http(s) URL"
            )));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        // The realm is the upstream's word, like a redirect: the same rule for where it may
        // lead (and so where credentials may go).
        self.check_target(&url)
            .await
            .map_err(|e| UpstreamError::Auth(format!("token realm: {e}")))?;
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(url.as_str())
            .header(USER_AGENT, USER_AGENT_VALUE);
        if let Some(c) = &self.credentials() {
            req = req.header(AUTHORIZATION, basic_header(c));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
        let fetched_at = Instant::now();
        let resp = self
            .request(req, &url)
            .await
            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
        let refused = matches!(
            resp.status(),
            http::StatusCode::UNAUTHORIZED | http::StatusCode::FORBIDDEN
        );
        if refused && self.credentials().is_some() {
            return Err(self.credentials_rejected());
        }
        if !resp.status().is_success() {
            return Err(UpstreamError::Auth(format!(
                "token endpoint {} answered {}",
                host_of(&url),
                resp.status()
            )));
        }
        let body = read_limited(resp.into_body(), MAX_TOKEN_RESPONSE)
            .await
            .map_err(|e| UpstreamError::Auth(format!("reading token: {e}")))?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<serde_json::Number>,
        }
        let ans: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Auth(format!("token endpoint answer is not JSON: {e}")))?;
        let token = ans
            .token
            .or(ans.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| UpstreamError::Auth("token endpoint answer has no token".into()))?;
        // Bounded: a token endpoint's `expires_in` is trusted up to a day; zero or negative
        // means expired now (used for this request, fetched again for the next).
        let lifetime = token_lifetime(ans.expires_in.as_ref());
        // Refresh before expiry: a fifth of the lifetime early, at most 30 s early.
        let margin = Duration::from_millis((lifetime * 1000 / 5).min(30_000));
        let refresh_at = fetched_at + Duration::from_secs(lifetime) - margin;
        {
            let mut st = self.auth.lock().expect("auth lock");
            // Bounded: expired tokens go, and past MAX_TOKENS the one due soonest goes too (any
            // client can ask for many repository names, each its own scope).
            let now = Instant::now();
            st.tokens.retain(|_, t| t.refresh_at > now);
            while st.tokens.len() >= MAX_TOKENS {
                let Some(k) = st
                    .tokens
                    .iter()
                    .min_by_key(|(_, t)| t.refresh_at)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                st.tokens.remove(&k);
            }
            st.tokens.insert(
                key,
                CachedToken {
                    token: token.clone(),
                    refresh_at,
                },
            );
        }
        Ok(token)
    }
}

/// A token's lifetime in seconds from the token server's `expires_in`: [`DEFAULT_TOKEN_LIFETIME`]
/// when absent, trusted up to a day, and zero (expired now: used for this request, fetched
/// again for the next) when zero or negative.
fn token_lifetime(expires_in: Option<&serde_json::Number>) -> u64 {
    const MAX: u64 = 86_400;
    let Some(n) = expires_in else {
        return DEFAULT_TOKEN_LIFETIME;
    };
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => i.clamp(0, MAX as i64) as u64,
        (None, Some(_), _) => MAX,
        (_, _, Some(f)) if f.is_finite() => f.clamp(0.0, MAX as f64) as u64,
        _ => DEFAULT_TOKEN_LIFETIME,
    }
}

pub(super) fn basic_header(c: &Credentials) -> HeaderValue {
    let raw =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    let mut v = HeaderValue::from_str(&format!("Basic {raw}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes_are_bounded() {
        let n = |v: serde_json::Value| match v {
            serde_json::Value::Number(n) => n,
            _ => unreachable!(),
        };
        assert_eq!(token_lifetime(None), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(Some(&n(serde_json::json!(300)))), 300);
        assert_eq!(
            token_lifetime(Some(&n(serde_json::json!(-5)))),
            0,
            "expired now"
        );
        assert_eq!(
            token_lifetime(Some(&n(serde_json::json!(u64::MAX)))),
            86_400
        );
        assert_eq!(token_lifetime(Some(&n(serde_json::json!(12.5)))), 12);
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://x/t, service = "a \"b\"""#),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: Some("a \"b\"".into()),
                scope: None
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="r""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(""), None);
    }
}
