//! `regcache certs show`: what certificate files hold, and whether they expire soon.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{rfc3339, system_time, WARN_DAYS};

/// One certificate file for `certs show`, as the configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFile {
    /// What the file is, for messages: `tls_cert`, `listeners[0].client_ca`, or the path given.
    pub label: String,
    /// The PEM file: one or more certificates.
    pub path: PathBuf,
    /// The private key that goes with the first certificate (`tls_key`), checked to match.
    pub key: Option<PathBuf>,
}

/// The certificate files a configuration points at: each listener's `tls_cert` (with its
/// `tls_key`) and `client_ca`, labelled `listener <url>: tls_cert`.
pub fn files_of(config: &crate::config::Config) -> Vec<CertFile> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let Some(t) = &l.tls else { continue };
        out.push(CertFile {
            label: format!("listener {}: tls_cert", l.label()),
            path: t.cert.clone(),
            key: Some(t.key.clone()),
        });
        if let Some(ca) = &t.client_ca {
            out.push(CertFile {
                label: format!("listener {}: client_ca", l.label()),
                path: ca.clone(),
                key: None,
            });
        }
    }
    out
}

/// What [`show`] found.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// The report, for stdout: each file and each certificate in it.
    pub text: String,
    /// Things to act on, one line each, for stderr: expired, not yet valid, expiring within
    /// [`WARN_DAYS`], a key that does not match.
    pub warnings: Vec<String>,
    /// Files that could not be read as what they should be (no PEM certificate, no key).
    pub errors: Vec<String>,
}

impl Shown {
    /// The exit status: 2 when a file could not be read as a certificate (or key), else 1 when
    /// there is a warning, else 0.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if !self.warnings.is_empty() {
            1
        } else {
            0
        }
    }
}

fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// Reads each file in `files` and describes each certificate in it at time `now`: subject,
/// issuer, SANs, validity and days left, CA or not, key usages, SHA-256 fingerprint; and for a
/// file with a `key`, whether the key matches its first certificate.
///
/// Never fails: unreadable files become [`Shown::errors`], expiry problems
/// [`Shown::warnings`] (each naming the label, the path and the fix).
pub fn show(files: &[CertFile], now: SystemTime) -> Shown {
    let mut s = Shown::default();
    for f in files {
        show_file(f, now, &mut s);
    }
    s
}

fn show_file(f: &CertFile, now: SystemTime, s: &mut Shown) {
    let p = f.path.display();
    let certs = match crate::tls::read_certs(&f.label, &f.path) {
        Ok(c) => c,
        Err(e) => {
            s.text.push_str(&format!("{} {p}: unreadable\n", f.label));
            s.errors.push(e);
            return;
        }
    };
    let n = certs.len();
    s.text.push_str(&format!(
        "{} {p}: {n} certificate{}\n",
        f.label,
        if n == 1 { "" } else { "s" }
    ));
    for (i, der) in certs.iter().enumerate() {
        let x = match X509Certificate::from_der(der) {
            Ok((_, x)) => x,
            Err(e) => {
                s.errors.push(format!(
                    "{} {p}: certificate {} does not parse ({e}): replace the file",
                    f.label,
                    i + 1
                ));
                continue;
            }
        };
        describe(f, i, &x, der, now, s);
    }
    if let Some(k) = &f.key {
        let line = match key_matches(&certs[0], k) {
            Ok(true) => format!("  key {}: matches the first certificate\n", k.display()),
            Ok(false) => {
                s.warnings.push(format!(
                    "{} {p}: the key {} does not match its certificate (it is another certificate's key): pass the key written with it, or issue a new pair (regcache certs init --force --hostname NAME)",
                    f.label,
                    k.display()
                ));
                format!("  key {}: DOES NOT MATCH\n", k.display())
            }
            Err(e) => {
                s.errors.push(e);
                format!("  key {}: unreadable\n", k.display())
            }
        };
        s.text.push_str(&line);
    }
}

/// Whether the private key in `key` is the one of `cert`.
fn key_matches(
    cert: &rustls_pki_types::CertificateDer<'static>,
    key: &Path,
) -> Result<bool, String> {
    let der = crate::tls::read_key("tls_key", key)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let ck = rustls::sign::CertifiedKey::new(vec![cert.clone()], signer);
    match ck.keys_match() {
        Ok(()) => Ok(true),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Ok(false),
        Err(e) => Err(format!("tls_key {}: {e}", key.display())),
    }
}

fn describe(
    f: &CertFile,
    i: usize,
    x: &X509Certificate<'_>,
    der: &[u8],
    now: SystemTime,
    s: &mut Shown,
) {
    let p = f.path.display();
    let subject = x.subject().to_string();
    let from = system_time(x.validity().not_before.timestamp());
    let until = system_time(x.validity().not_after.timestamp());
    // Whole days: left until expiry, or since it.
    let (expired, days_n) = match until.duration_since(now) {
        Ok(d) => (false, (d.as_secs() / 86400) as i64),
        Err(e) => (true, (e.duration().as_secs() / 86400) as i64),
    };
    let in_days = |n: i64| match n {
        0 => "less than a day".to_owned(),
        1 => "1 day".to_owned(),
        n => format!("{n} days"),
    };
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = x.subject_alternative_name() {
        for g in &ext.value.general_names {
            sans.push(match g {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => format!("IP:{}", IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
                    16 => format!("IP:{}", IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
                    _ => format!("IP:{}", hex::encode(b)),
                },
                GeneralName::RFC822Name(m) => format!("email:{m}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                other => format!("{other:?}"),
            });
        }
    }
    let ca = match x.basic_constraints() {
        Ok(Some(b)) if b.value.ca => match b.value.path_len_constraint {
            Some(n) => format!("yes (path length {n})"),
            None => "yes".into(),
        },
        _ => "no".into(),
    };
    let mut usage = Vec::new();
    let mut extended = Vec::new();
    if let Ok(Some(ku)) = x.key_usage() {
        let k = ku.value;
        for (on, name) in [
            (k.digital_signature(), "digitalSignature"),
            (k.non_repudiation(), "nonRepudiation"),
            (k.key_encipherment(), "keyEncipherment"),
            (k.data_encipherment(), "dataEncipherment"),
            (k.key_agreement(), "keyAgreement"),
            (k.key_cert_sign(), "keyCertSign"),
            (k.crl_sign(), "cRLSign"),
        ] {
            if on {
                usage.push(name.to_owned());
            }
        }
    }
    if let Ok(Some(eku)) = x.extended_key_usage() {
        let e = eku.value;
        for (on, name) in [
            (e.any, "anyExtendedKeyUsage"),
            (e.server_auth, "serverAuth"),
            (e.client_auth, "clientAuth"),
            (e.code_signing, "codeSigning"),
            (e.email_protection, "emailProtection"),
        ] {
            if on {
                extended.push(name.to_owned());
            }
        }
    }
    let state = if now < from {
        "NOT YET VALID".to_owned()
    } else if expired {
        format!("EXPIRED {} ago", in_days(days_n))
    } else {
        format!("{} left", in_days(days_n))
    };
    s.text.push_str(&format!(
        "  [{n}] subject:    {subject}\n      issuer:     {issuer}{selfsigned}\n      SANs:       {sans}\n      valid:      {from} .. {until} ({state})\n      CA:         {ca}\n      key usage:  {usage}\n      sha256:     {fp}\n",
        n = i + 1,
        issuer = x.issuer(),
        selfsigned = if x.issuer().as_raw() == x.subject().as_raw() { " (self-signed)" } else { "" },
        sans = if sans.is_empty() { "none".to_owned() } else { sans.join(", ") },
        from = rfc3339(from),
        until = rfc3339(until),
        usage = match (usage.is_empty(), extended.is_empty()) {
            (true, true) => "none".to_owned(),
            (false, true) => usage.join(", "),
            (true, false) => format!("extended: {}", extended.join(", ")),
            (false, false) => format!("{}; extended: {}", usage.join(", "), extended.join(", ")),
        },
        fp = fingerprint(der),
    ));
    let ours = x
        .issuer()
        .iter_common_name()
        .any(|c| c.as_str().is_ok_and(|c| c.starts_with("regcache local CA")));
    let fix = match (x.is_ca(), ours) {
        (true, true) => "make a new CA (regcache certs init --force --new-ca --hostname NAME) and give clients the new ca.crt".to_owned(),
        (false, true) => "reissue it (regcache certs init --force --hostname NAME ...: the CA is kept)".to_owned(),
        _ => "renew it with the CA that issued it".to_owned(),
    };
    let what = format!("{} {p}: certificate {} ({subject})", f.label, i + 1);
    if now < from {
        let wait = humantime::format_duration(Duration::from_secs(
            from.duration_since(now).unwrap_or_default().as_secs(),
        ));
        s.warnings.push(format!(
            "{what} is not valid until {} (in {wait}): check this machine's clock and the clients' (timedatectl)",
            rfc3339(from)
        ));
    } else if expired {
        s.warnings.push(format!(
            "{what} EXPIRED on {} ({} ago): clients refuse it; {fix}",
            rfc3339(until),
            in_days(days_n)
        ));
    } else if days_n < WARN_DAYS {
        s.warnings.push(format!(
            "{what} expires in {} ({}): {fix}",
            in_days(days_n),
            rfc3339(until)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::opts;
    use super::super::{init, LEAF_DAYS};
    use super::*;

    fn days(n: i64) -> Duration {
        Duration::from_secs(n as u64 * 86400)
    }

    #[test]
    fn show_reports_and_warns() {
        let d = tempfile::tempdir().unwrap();
        let done = init(&opts(d.path(), &["m.lan", "10.1.2.3"])).unwrap();
        let f = CertFile {
            label: "tls_cert".into(),
            path: done.cert.clone(),
            key: Some(done.key.clone()),
        };
        let s = show(std::slice::from_ref(&f), SystemTime::now());
        assert!(s.text.contains("DNS:m.lan, IP:10.1.2.3"), "{}", s.text);
        assert!(
            s.text.contains("issuer:     CN=regcache local CA (m.lan)"),
            "{}",
            s.text
        );
        assert!(
            s.text.contains("matches the first certificate"),
            "{}",
            s.text
        );
        assert!(s.text.contains("729 days left"), "{}", s.text);
        assert_eq!(s.exit_code(), 0, "{s:?}");
        let later = SystemTime::now() + days(LEAF_DAYS - 10);
        let s = show(std::slice::from_ref(&f), later);
        assert_eq!(s.warnings.len(), 1, "{s:?}");
        assert!(s.warnings[0].contains("expires in 9 days"), "{s:?}");
        assert!(s.warnings[0].contains("certs init --force"), "{s:?}");
        assert_eq!(s.exit_code(), 1);
        let s = show(
            std::slice::from_ref(&f),
            SystemTime::now() + days(LEAF_DAYS + 1),
        );
        assert!(s.warnings[0].contains("EXPIRED"), "{s:?}");
        let s = show(std::slice::from_ref(&f), SystemTime::now() - days(2));
        assert!(s.warnings[0].contains("not valid until"), "{s:?}");
        let s = show(
            &[CertFile {
                label: "x".into(),
                path: done.key.clone(),
                key: None,
            }],
            SystemTime::now(),
        );
        assert_eq!(s.exit_code(), 2);
        assert!(s.errors[0].contains("holds a PRIVATE KEY"), "{s:?}");
    }
}
