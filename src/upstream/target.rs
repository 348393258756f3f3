//! Where an upstream's word may send regcache: redirects and token realms go only to the
//! registry's own host and port, its `redirect_hosts`, or public addresses, never from https
//! down to http; names resolve through [`GuardedResolver`] at connect time, so a name checked as public
//! cannot rebind to an internal address for the connection itself.

use url::Url;

use super::{Upstream, UpstreamError};

impl Upstream {
    /// Whether a redirect (or a token realm) may lead to `url`: the registry's own host and
    /// port, a host (or `host:port`) in its `redirect_hosts`, or a host whose every address is
    /// public; never from https down to http. Another port of the registry's host is another
    /// service, judged like any host (so a hostile upstream on loopback cannot probe or read
    /// the mirror host's other ports). A target in loopback, link-local or private space (an internal service) is
    /// refused before any connection, so a hostile upstream can neither read internal services
    /// through the mirror nor probe which ports are open.
    ///
    /// Errors: [`UpstreamError::Protocol`] naming the host and the fix.
    pub(super) async fn check_target(&self, url: &Url) -> Result<(), UpstreamError> {
        let host = url.host_str().unwrap_or("");
        let port = url.port_or_known_default().unwrap_or(0);
        if self.base.scheme() == "https" && url.scheme() != "https" {
            return Err(UpstreamError::Protocol(format!(
                "redirect from https to {} refused (no downgrade to plain http)",
                url.scheme()
            )));
        }
        // The registry itself is the operator's choice, not the upstream's.
        if self.base.host_str() == Some(host) && self.base.port_or_known_default() == Some(port) {
            return Ok(());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let with_port = format!("{host}:{port}");
        if self
            .redirect_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(bare) || h.eq_ignore_ascii_case(&with_port))
        {
            return Ok(());
        }
        let refused = |why: &str| {
            UpstreamError::Protocol(format!(
                "redirect to {with_port} refused: {why} (allow it with redirect_hosts = [\"{with_port}\"] in [registries.\"{}\"], or --redirect-host {with_port} for the default registry)",
                self.registry
            ))
        };
        let addrs: Vec<std::net::IpAddr> = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::time::timeout(self.timeout, tokio::net::lookup_host((bare, port)))
                .await
                .map_err(|_| refused("its name does not resolve in time"))?
                .map_err(|_| refused("its name does not resolve"))?
                .map(|a| a.ip())
                .collect(),
        };
        match addrs.iter().find(|ip| !is_public(ip)) {
            Some(ip) if ip.to_string() == bare => Err(refused("not a public address")),
            Some(ip) => Err(refused(&format!(
                "it resolves to {ip}, not a public address"
            ))),
            None if addrs.is_empty() => Err(refused("its name has no address")),
            None => Ok(()),
        }
    }
}

/// The upstream client's name resolver: the names the operator configured (the registry's
/// host, its `redirect_hosts`) resolve as usual; any other name (a redirect's, a token
/// realm's) only to public addresses. Checked at connect time, so a name that answered public
/// when the redirect was checked cannot rebind to an internal address for the connection.
#[derive(Clone)]
pub(super) struct GuardedResolver {
    /// Host names resolved without the filter, lowercase.
    pub(super) trusted: std::sync::Arc<Vec<String>>,
}

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let host = name.as_str().to_ascii_lowercase();
        let trusted = self.trusted.contains(&host);
        Box::pin(async move {
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<_> = if trusted {
                all
            } else {
                all.into_iter().filter(|a| is_public(&a.ip())).collect()
            };
            if kept.is_empty() {
                return Err(std::io::Error::other(format!(
                    "{host} has no public address (allow it with redirect_hosts)"
                )));
            }
            Ok(kept.into_iter())
        })
    }
}

/// Whether `ip` is a public address: not "this network" (`0.0.0.0/8`), loopback, link-local,
/// private (RFC 1918, unique local `fc00::/7`, site-local `fec0::/10`), shared
/// (`100.64.0.0/10`), IETF protocol assignments (`192.0.0.0/24`), benchmarking
/// (`198.18.0.0/15`), reserved (`240.0.0.0/4`), multicast or broadcast; IPv4 inside IPv6
/// (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged as the IPv4 address.
pub(super) fn is_public(ip: &std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(o[0] == 0
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] >= 240
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1])))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d): the last 32 bits.
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified()
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            {
                return is_public(&embedded(s[6], s[7]));
            }
            // 6to4 (2002:a.b.c.d::/48): the IPv4 address in bits 16..48.
            if s[0] == 0x2002 {
                return is_public(&embedded(s[1], s[2]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses() {
        for a in [
            "8.8.8.8",
            "2606:4700::1111",
            "100.128.0.1",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(&a.parse().unwrap()), "{a}");
        }
        for a in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "::",
            "fec0::1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
        ] {
            assert!(!is_public(&a.parse().unwrap()), "{a}");
        }
    }

    /// Names outside the configured ones resolve to public addresses only, at connect time.
    #[tokio::test]
    async fn only_configured_names_resolve_to_internal_addresses() {
        use tower_service::Service;
        let name = || "localhost".parse::<hyper_util::client::legacy::connect::dns::Name>();
        let mut untrusted = GuardedResolver {
            trusted: std::sync::Arc::new(vec![]),
        };
        assert!(untrusted.call(name().unwrap()).await.is_err());
        let mut trusted = GuardedResolver {
            trusted: std::sync::Arc::new(vec!["localhost".into()]),
        };
        let addrs: Vec<_> = trusted.call(name().unwrap()).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
