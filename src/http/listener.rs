//! A listener's live settings: its TLS configuration and htpasswd entries, loaded before the
//! mirror announces anything and replaced on reload (SIGHUP) without touching connections in
//! progress (each connection keeps the TLS session it made; each request reads the entries in
//! force when it arrives).

use std::sync::{Arc, RwLock};

use crate::access::Htpasswd;
use crate::config::ListenerConfig;

/// One listener's configuration and the files it was loaded from.
pub struct Listener {
    /// What the config says of it (its address, name and file paths).
    config: ListenerConfig,
    /// The TLS acceptor, when it speaks HTTPS.
    tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
    /// The htpasswd entries clients authenticate against, if any.
    htpasswd: RwLock<Option<Arc<Htpasswd>>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("config", &self.config)
            .finish()
    }
}

impl Listener {
    /// Loads the certificate, key, client CA and htpasswd files `config` names.
    ///
    /// Errors: a message naming the listener, the file and the problem.
    pub fn load(config: &ListenerConfig) -> Result<Arc<Listener>, String> {
        let (tls, htpasswd) = load_files(config)?;
        Ok(Arc::new(Listener {
            config: config.clone(),
            tls: RwLock::new(tls),
            htpasswd: RwLock::new(htpasswd),
        }))
    }

    /// Its configuration.
    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// The TLS acceptor new connections use, when it speaks HTTPS.
    pub fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.read().expect("listener lock").clone()
    }

    /// The htpasswd entries in force, if it has them.
    pub fn htpasswd(&self) -> Option<Arc<Htpasswd>> {
        self.htpasswd.read().expect("listener lock").clone()
    }

    /// Re-reads its files as `new` names them (same address). Nothing changes when any fails.
    /// What needs a restart instead (HTTP ↔ HTTPS, adding or removing client auth) is refused.
    ///
    /// Errors: a message naming the listener, the file or setting, and the fix.
    pub fn reload(&self, new: &ListenerConfig) -> Result<(), String> {
        let old = &self.config;
        if old.tls.is_some() != new.tls.is_some()
            || old.htpasswd.is_some() != new.htpasswd.is_some()
            || old.verifies_client_certificates() != new.verifies_client_certificates()
            || old.allow_anonymous != new.allow_anonymous
        {
            return Err(format!(
                "listener {}: HTTPS or client auth was added or removed; restart regcache to apply that",
                old.label()
            ));
        }
        let (tls, htpasswd) = load_files(new)?;
        *self.tls.write().expect("listener lock") = tls;
        *self.htpasswd.write().expect("listener lock") = htpasswd;
        Ok(())
    }
}

type Files = (Option<tokio_rustls::TlsAcceptor>, Option<Arc<Htpasswd>>);

fn load_files(config: &ListenerConfig) -> Result<Files, String> {
    let at = |e: String| format!("listener {}: {e}", config.label());
    let tls = match &config.tls {
        None => None,
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::listener_config(t, config.htpasswd.is_some()).map_err(at)?,
        )),
    };
    let htpasswd = match &config.htpasswd {
        None => None,
        Some(p) => Some(Arc::new(Htpasswd::load(p).map_err(at)?)),
    };
    Ok((tls, htpasswd))
}
