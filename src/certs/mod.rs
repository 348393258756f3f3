//! A local CA and the certificates it signs, for serving HTTPS without a PKI at hand:
//! `regcache certs init` (CA + server certificate), `regcache certs client` (TLS client
//! certificates for a listener's `client_ca`), `regcache certs show` (what a certificate file
//! holds, and whether it expires soon). `regcache gen-cert` is kept as `certs init`'s shorthand.
//!
//! rcgen writes the certificates (ECDSA P-256 keys), x509-parser reads them back.
//! Issuing is here, `show` in `certs/show.rs`, the command line in `certs/cli.rs`.

mod cli;
mod show;

pub use cli::{run, CertsCommand};
pub use show::{files_of, show, CertFile, Shown};

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::ServerName;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

/// The CA certificate's file name: what clients trust (Docker's `certs.d/<host:port>/ca.crt`).
pub const CA_CERT: &str = "ca.crt";
/// The CA key's file name (mode 0600).
pub const CA_KEY: &str = "ca.key";
/// The server certificate's file name (`tls_cert`): the server certificate, then the CA's.
pub const SERVER_CERT: &str = "regcache.crt";
/// The server key's file name (`tls_key`, mode 0600).
pub const SERVER_KEY: &str = "regcache.key";
/// A new CA is valid this many days (10 years).
pub const CA_DAYS: i64 = 3650;
/// A server or client certificate is valid this many days (2 years: under the 825 days some
/// TLS clients allow).
pub const LEAF_DAYS: i64 = 730;
/// Certificates start this long before they are made: a client whose clock is behind (a board
/// without a real-time clock, a hardware clock kept in local time) still accepts them.
pub const BACKDATE: Duration = Duration::from_secs(24 * 3600);
/// `certs show` warns when a certificate expires within this many days.
pub const WARN_DAYS: i64 = 30;
/// The port the printed client instructions use when none is given.
pub const DEFAULT_PORT: u16 = 5000;

/// Why a certs command failed. Its `Display` is the whole message: the problem and the fix.
#[derive(Debug)]
pub enum CertError {
    /// Wrong input: a name or address, files in the way, a CA that is missing or unusable, a
    /// file that is not what it should be. Exit status 2.
    Input(String),
    /// The machine refused: a directory not writable, a disk full. Exit status 1.
    Io(String),
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertError::Input(m) | CertError::Io(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CertError {}

impl CertError {
    /// The process exit status for this error: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CertError::Input(_) => 2,
            CertError::Io(_) => 1,
        }
    }
}

fn input(m: impl Into<String>) -> CertError {
    CertError::Input(m.into())
}

/// The default directory for `certs init` / `certs client`: `/etc/regcache/certs` when run as
/// root, else `certs` (relative to the working directory).
pub fn default_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/etc/regcache/certs")
    } else {
        PathBuf::from("certs")
    }
}

/// What `certs init` is asked for.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Names clients use (DNS names; an IP address here goes in as an IP SAN). The first is
    /// the certificate's CN and the host in the printed instructions. At least one.
    pub hostnames: Vec<String>,
    /// More IP addresses for the subjectAltName, as text (`10.0.0.5`, `fd00::5`).
    pub ips: Vec<String>,
    /// The directory to write the four files into (created mode 0755 when missing).
    pub out: PathBuf,
    /// Overwrite the server certificate and key; an existing CA (`ca.crt` + `ca.key`) is kept
    /// and signs the new server certificate.
    pub force: bool,
    /// With `force`: replace the CA too (clients must then be given the new `ca.crt`).
    pub new_ca: bool,
}

/// What `certs init` wrote.
#[derive(Debug, Clone)]
pub struct Initialized {
    /// The CA certificate (`<out>/ca.crt`).
    pub ca_cert: PathBuf,
    /// The CA key (`<out>/ca.key`).
    pub ca_key: PathBuf,
    /// The server certificate chain (`<out>/regcache.crt`).
    pub cert: PathBuf,
    /// The server key (`<out>/regcache.key`).
    pub key: PathBuf,
    /// Whether an existing CA was kept (`--force` without `--new-ca`).
    pub ca_kept: bool,
    /// The first hostname: the certificate's CN.
    pub host: String,
    /// The subjectAltName entries, as `DNS:name` / `IP:addr`.
    pub sans: Vec<String>,
    /// When the server certificate expires.
    pub not_after: SystemTime,
    /// When the CA expires.
    pub ca_not_after: SystemTime,
}

/// A host name or address clients use.
enum Host {
    Dns(String),
    Ip(IpAddr),
}

fn parse_host(flag: &str, s: &str) -> Result<Host, CertError> {
    let t = s.trim();
    let bare = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(t);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    if flag == "--ip" {
        return Err(input(format!(
            "--ip {s:?}: not an IP address: write it as 10.0.0.5 or fd00::5 (names go in --hostname)"
        )));
    }
    let hint = if t.contains("://") {
        "give the bare name, without a scheme (e.g. --hostname mirror.site.lan)"
    } else if t.contains(':') {
        "give the name without a port: the port is --port"
    } else if t.contains('*') {
        "wildcards are not issued: give each name with its own --hostname"
    } else if t.contains('/') {
        "give the bare name, without a path"
    } else {
        "a name is letters, digits, '-' and dots, e.g. mirror.site.lan"
    };
    match ServerName::try_from(t) {
        Ok(ServerName::DnsName(_)) if !t.is_empty() => Ok(Host::Dns(t.to_ascii_lowercase())),
        _ => Err(input(format!(
            "{flag} {s:?}: not a DNS name or an IP address: {hint}"
        ))),
    }
}

/// The subjectAltName entries for `hostnames` and `ips`, in order, without repeats, and their
/// `DNS:`/`IP:` labels. Errors: an empty list, a bad name or address.
fn subject_alt_names(
    hostnames: &[String],
    ips: &[String],
) -> Result<(Vec<SanType>, Vec<String>), CertError> {
    if hostnames.is_empty() {
        return Err(input(
            "no --hostname: give the name clients use to reach the mirror (--hostname mirror.site.lan; repeatable, an IP address too)",
        ));
    }
    let mut sans = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    let all = hostnames
        .iter()
        .map(|h| ("--hostname", h))
        .chain(ips.iter().map(|i| ("--ip", i)));
    for (flag, s) in all {
        let (san, label) = match parse_host(flag, s)? {
            Host::Ip(ip) => (SanType::IpAddress(ip), format!("IP:{ip}")),
            Host::Dns(d) => {
                let ia5 = d
                    .clone()
                    .try_into()
                    .map_err(|e| input(format!("{flag} {s:?}: {e}")))?;
                (SanType::DnsName(ia5), format!("DNS:{d}"))
            }
        };
        if !labels.contains(&label) {
            labels.push(label);
            sans.push(san);
        }
    }
    Ok((sans, labels))
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn days(n: i64) -> Duration {
    Duration::from_secs(n as u64 * 24 * 3600)
}

/// A CA that can sign: its certificate (PEM, as on disk), its key, and rcgen's view of it.
struct Ca {
    pem: String,
    der: Vec<u8>,
    key: KeyPair,
    issuer: rcgen::Certificate,
    not_after: SystemTime,
}

fn new_ca(host: &str) -> Result<Ca, CertError> {
    let key = KeyPair::generate().map_err(|e| CertError::Io(format!("cannot make a key: {e}")))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("regcache local CA ({host})"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    let not_after = now + days(CA_DAYS);
    p.not_before = offset(now - BACKDATE);
    p.not_after = offset(not_after);
    let cert = p
        .self_signed(&key)
        .map_err(|e| input(format!("cannot make the CA for {host}: {e}")))?;
    Ok(Ca {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        key,
        issuer: cert,
        not_after,
    })
}

/// The CA in `dir` (`ca.crt` + `ca.key`), ready to sign. Errors: files missing or unreadable,
/// a key that is not the certificate's, a certificate that is not a CA or expires within
/// [`WARN_DAYS`], a subject rcgen cannot reproduce.
fn load_ca(dir: &Path) -> Result<Ca, CertError> {
    let (cp, kp) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let pem = std::fs::read_to_string(&cp).map_err(|e| {
        input(format!(
            "{}: {e}: no CA to sign with (make one: regcache certs init --out {} --hostname NAME)",
            cp.display(),
            dir.display()
        ))
    })?;
    let der = crate::tls::read_certs("CA certificate", &cp)
        .map_err(input)?
        .remove(0)
        .to_vec();
    let key_pem = std::fs::read_to_string(&kp).map_err(|e| {
        input(format!(
            "{}: {e}: cannot sign without the CA's key (restore it, or make a new CA: --force --new-ca, then give clients the new {CA_CERT})",
            kp.display()
        ))
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        input(format!(
            "{}: not a private key regcache can sign with ({e}): restore the CA's key, or make a new CA (--force --new-ca)",
            kp.display()
        ))
    })?;
    let (_, x) = X509Certificate::from_der(&der)
        .map_err(|e| input(format!("{}: not a readable certificate: {e}", cp.display())))?;
    if x.public_key().raw != key.public_key_der().as_slice() {
        return Err(input(format!(
            "{} is not the key of {}: restore the CA's own key, or make a new CA (--force --new-ca)",
            kp.display(),
            cp.display()
        )));
    }
    if !x.is_ca() {
        return Err(input(format!(
            "{} is not a CA certificate (no basicConstraints CA:true): make a CA with --force --new-ca",
            cp.display()
        )));
    }
    let not_after = system_time(x.validity().not_after.timestamp());
    if not_after < SystemTime::now() + days(WARN_DAYS) {
        return Err(input(format!(
            "{} expires {}: make a new CA (--force --new-ca) and give clients the new {CA_CERT}",
            cp.display(),
            rfc3339(not_after)
        )));
    }
    // rcgen signs as an issuer it made: rebuild one with the CA's subject and key.
    let mut dn = DistinguishedName::new();
    for rdn in x.subject().iter_rdn() {
        let mut it = rdn.iter();
        let (Some(a), None) = (it.next(), it.next()) else {
            return Err(unreproducible(&cp));
        };
        let oid: Vec<u64> = a
            .attr_type()
            .iter()
            .ok_or_else(|| unreproducible(&cp))?
            .collect();
        let bytes = a.as_slice();
        let text = || String::from_utf8(bytes.to_vec()).map_err(|_| unreproducible(&cp));
        use x509_parser::der_parser::asn1_rs::Tag;
        let value = match a.attr_value().tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?),
            Tag::PrintableString => {
                DnValue::PrintableString(text()?.try_into().map_err(|_| unreproducible(&cp))?)
            }
            Tag::Ia5String => {
                DnValue::Ia5String(text()?.try_into().map_err(|_| unreproducible(&cp))?)
            }
            _ => return Err(unreproducible(&cp)),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // The authorityKeyIdentifier of what it signs must be the CA's subjectKeyIdentifier
    // (OpenSSL looks the issuer up by it); another tool may have hashed the key otherwise.
    let ski = x
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    if let Some(ski) = ski {
        p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(ski);
    }
    let issuer = p.self_signed(&key).map_err(|_| unreproducible(&cp))?;
    Ok(Ca {
        pem,
        der,
        key,
        issuer,
        not_after,
    })
}

fn unreproducible(cp: &Path) -> CertError {
    input(format!(
        "{}: regcache cannot sign in this CA's name (it was not made by regcache): make a new CA with --force --new-ca, or issue the certificate with the tool that made this CA",
        cp.display()
    ))
}

/// Signs a leaf certificate for a new key: `cn`, `sans`, `eku`, valid [`LEAF_DAYS`] (never
/// past the CA's own expiry). Returns (certificate PEM, key PEM, not_after).
fn issue(
    ca: &Ca,
    cn: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> Result<(String, String, SystemTime), CertError> {
    let key = KeyPair::generate().map_err(|e| CertError::Io(format!("cannot make a key: {e}")))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    // ECDSA keys sign; keyEncipherment is for RSA key transport.
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    let not_after = (now + days(LEAF_DAYS)).min(ca.not_after);
    p.not_before = offset(now - BACKDATE);
    p.not_after = offset(not_after);
    let cert = p
        .signed_by(&key, &ca.issuer, &ca.key)
        .map_err(|e| input(format!("cannot sign a certificate for {cn}: {e}")))?;
    // The issuer name must be the CA's subject, byte for byte, or no client finds the CA.
    let (_, issued) = X509Certificate::from_der(cert.der()).map_err(|e| input(e.to_string()))?;
    let (_, cax) = X509Certificate::from_der(&ca.der).map_err(|e| input(e.to_string()))?;
    if issued.issuer().as_raw() != cax.subject().as_raw() {
        return Err(input(format!(
            "regcache cannot sign in the name of CA {:?} (it was not made by regcache): make a new CA with --force --new-ca",
            cax.subject().to_string()
        )));
    }
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// Writes `data` to `path` atomically (a temporary file in the same directory, created with
/// `mode`, synced, renamed over `path`).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |e: std::io::Error| {
        CertError::Io(format!(
            "cannot write {}: {e} (write into a directory this user may write, with --out DIR)",
            path.display()
        ))
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".regcache-cert-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(data).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_file() {
        return Err(input(format!(
            "{}: is a file, not a directory: pass a directory with --out DIR",
            dir.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| {
            CertError::Io(format!(
                "cannot create {}: {e} (pick a directory this user may write, with --out DIR)",
                dir.display()
            ))
        })
}

fn existing(dir: &Path, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| dir.join(n).exists())
        .map(|n| n.to_string())
        .collect()
}

/// `certs init`: writes a local CA (`ca.crt`, `ca.key`) and a server certificate signed by it
/// (`regcache.crt`: server certificate then CA certificate; `regcache.key`) into `opts.out`.
/// Keys are mode 0600, certificates 0644; each file is written atomically.
///
/// The CA: CN `regcache local CA (<first hostname>)`, CA:true pathlen 0, keyCertSign+cRLSign,
/// [`CA_DAYS`]. The server certificate: CN the first hostname, SANs every hostname (DNS, or IP
/// for an address) and every `ips` entry, digitalSignature, serverAuth, [`LEAF_DAYS`], started
/// [`BACKDATE`] ago. Keys are ECDSA P-256.
///
/// Without `force`, nothing is written when any of the four files exists. With `force`, an
/// existing CA is kept (its files untouched) unless `new_ca`.
///
/// Errors: [`CertError::Input`] for bad names or addresses, files in the way, an unusable CA;
/// [`CertError::Io`] when the directory or a file cannot be written.
pub fn init(opts: &InitOptions) -> Result<Initialized, CertError> {
    let (sans, labels) = subject_alt_names(&opts.hostnames, &opts.ips)?;
    // The first name as it went in: lower case, an address without brackets.
    let host = labels[0].split_once(':').map_or("", |(_, h)| h).to_owned();
    let dir = &opts.out;
    let there = existing(dir, &[CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]);
    if !there.is_empty() && !opts.force {
        return Err(input(format!(
            "{}: {} already there: nothing written. To reissue the server certificate and keep the CA (clients keep their {CA_CERT}): add --force; to replace the CA too (every client then needs the new {CA_CERT}): --force --new-ca",
            dir.display(),
            there.join(", ")
        )));
    }
    let ca_there = existing(dir, &[CA_CERT, CA_KEY]);
    let keep_ca = opts.force && !opts.new_ca && !ca_there.is_empty();
    if keep_ca && ca_there.len() == 1 {
        return Err(input(format!(
            "{}: {} is there without {}: cannot keep this CA; restore the missing file, or make a new CA with --force --new-ca",
            dir.display(),
            ca_there[0],
            if ca_there[0] == CA_CERT { CA_KEY } else { CA_CERT }
        )));
    }
    let ca = if keep_ca {
        load_ca(dir)?
    } else {
        new_ca(&host)?
    };
    let (cert_pem, key_pem, not_after) =
        issue(&ca, &host, sans, ExtendedKeyUsagePurpose::ServerAuth)?;
    create_dir(dir)?;
    let paths = Initialized {
        ca_cert: dir.join(CA_CERT),
        ca_key: dir.join(CA_KEY),
        cert: dir.join(SERVER_CERT),
        key: dir.join(SERVER_KEY),
        ca_kept: keep_ca,
        host,
        sans: labels,
        not_after,
        ca_not_after: ca.not_after,
    };
    if !keep_ca {
        write_atomic(&paths.ca_key, ca.key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&paths.ca_cert, ca.pem.as_bytes(), 0o644)?;
    }
    write_atomic(&paths.key, key_pem.as_bytes(), 0o600)?;
    let chain = format!("{cert_pem}{}", ca.pem);
    write_atomic(&paths.cert, chain.as_bytes(), 0o644)?;
    Ok(paths)
}

/// `host:port` as clients write it (an IPv6 address in brackets).
fn host_port(host: &str, port: u16) -> String {
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// What `certs init` prints: the files written, then the mirror's settings and each client's
/// steps (Docker, containerd, podman/CRI-O/skopeo) for `https://<host>:<port>`, as commands
/// to paste.
pub fn init_report(done: &Initialized, port: u16) -> String {
    let hp = host_port(&done.host, port);
    let ca = absolute(&done.ca_cert);
    let crt = absolute(&done.cert);
    let key = absolute(&done.key);
    let dir = ca.parent().map(Path::to_path_buf).unwrap_or_default();
    let ca_state = if done.ca_kept {
        "kept (clients that trust it need nothing new)"
    } else {
        "new"
    };
    format!(
        r#"wrote {dir}: {written}
  CA: {ca_state}, expires {ca_exp}
  server certificate: {sans}, expires {exp}

The mirror (regcache.toml):
  [[listeners]]
  address = "0.0.0.0:{port}"
  tls_cert = "{crt}"
  tls_key = "{key}"
  # When a registry has credentials, clients must authenticate on a network listener:
  # client_ca = "{ca}"   (client certificates: regcache certs client --name HOST)
  # htpasswd = "/etc/regcache/htpasswd"   (Basic auth: htpasswd -B -c FILE USER)
or: regcache serve --listen 0.0.0.0:{port} --tls-cert {crt} --tls-key {key}

Each client trusts {ca} (copy it there first; it is public: the key stays here).
Docker:
  mkdir -p /etc/docker/certs.d/{hp}
  cp ca.crt /etc/docker/certs.d/{hp}/ca.crt
  # /etc/docker/daemon.json: {{"registry-mirrors": ["https://{hp}"]}}, then: systemctl restart docker
  # Docker reads certs.d (and so sends a client certificate) only for a mirror named by a
  # non-loopback name or address: never https://127.0.0.1 or localhost (it treats those as
  # insecure and skips certificate checks).
containerd (config_path = "/etc/containerd/certs.d" in its CRI registry config; ctr and nerdctl: --hosts-dir /etc/containerd/certs.d):
  mkdir -p /etc/containerd/certs.d/docker.io
  cp ca.crt /etc/containerd/certs.d/docker.io/regcache-ca.crt
  cat > /etc/containerd/certs.d/docker.io/hosts.toml <<'EOF'
server = "https://registry-1.docker.io"

[host."https://{hp}"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/containerd/certs.d/docker.io/regcache-ca.crt"
EOF
podman, CRI-O, skopeo:
  mkdir -p /etc/containers/certs.d/{hp}
  cp ca.crt /etc/containers/certs.d/{hp}/ca.crt
  cat > /etc/containers/registries.conf.d/regcache.conf <<'EOF'
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "{hp}/docker.io"
EOF
Check: curl --cacert {ca} https://{hp}/v2/
"#,
        dir = dir.display(),
        written = if done.ca_kept {
            format!(
                "{SERVER_CERT} and {SERVER_KEY} (mode 0600), signed by the {CA_CERT} already there"
            )
        } else {
            format!("{CA_CERT}, {CA_KEY} (mode 0600), {SERVER_CERT} and {SERVER_KEY} (mode 0600)")
        },
        ca_exp = rfc3339(done.ca_not_after),
        sans = done.sans.join(", "),
        exp = rfc3339(done.not_after),
        crt = crt.display(),
        key = key.display(),
        ca = ca.display(),
    )
}

/// What `certs client` is asked for.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The client's name: its certificate's CN and the files' stem (`<name>.cert`,
    /// `<name>.key`). Letters, digits, `.`, `_`, `-`; at most 64.
    pub name: String,
    /// Where `ca.crt` and `ca.key` are (the `certs init` directory).
    pub ca_dir: PathBuf,
    /// Where to write the pair (created 0755 when missing).
    pub out: PathBuf,
    /// Overwrite an existing pair of that name.
    pub force: bool,
}

/// What `certs client` wrote.
#[derive(Debug, Clone)]
pub struct ClientIssued {
    /// `<out>/<name>.cert`: the client certificate, then the CA's.
    pub cert: PathBuf,
    /// `<out>/<name>.key` (mode 0600).
    pub key: PathBuf,
    /// The CA that signed it (`<ca_dir>/ca.crt`): the listener's `client_ca`.
    pub ca_cert: PathBuf,
    /// When the certificate expires.
    pub not_after: SystemTime,
}

/// `certs client`: a TLS client certificate (CN `name`, digitalSignature, clientAuth,
/// [`LEAF_DAYS`]) signed by the CA in `opts.ca_dir`, for a listener whose `client_ca` is that
/// `ca.crt`. Written as `<name>.cert` (certificate then CA) and `<name>.key` (0600).
///
/// Errors: [`CertError::Input`] for a bad name, files in the way without `force`, a missing or
/// unusable CA; [`CertError::Io`] when the files cannot be written.
pub fn client(opts: &ClientOptions) -> Result<ClientIssued, CertError> {
    let n = &opts.name;
    let ok = !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(input(format!(
            "--name {n:?}: a client name is 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' (e.g. --name builder-1)"
        )));
    }
    if n == "ca" || n == "regcache" {
        return Err(input(format!(
            "--name {n}: {n}.key is the {} key's name: pick another name (e.g. --name builder-1)",
            if n == "ca" { "CA" } else { "server" }
        )));
    }
    let (certf, keyf) = (format!("{n}.cert"), format!("{n}.key"));
    let there = existing(&opts.out, &[&certf, &keyf]);
    if !there.is_empty() && !opts.force {
        return Err(input(format!(
            "{}: {} already there: nothing written (add --force to issue a new pair in their place)",
            opts.out.display(),
            there.join(", ")
        )));
    }
    let ca = load_ca(&opts.ca_dir)?;
    let (cert_pem, key_pem, not_after) =
        issue(&ca, n, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
    create_dir(&opts.out)?;
    let done = ClientIssued {
        cert: opts.out.join(certf),
        key: opts.out.join(keyf),
        ca_cert: opts.ca_dir.join(CA_CERT),
        not_after,
    };
    write_atomic(&done.key, key_pem.as_bytes(), 0o600)?;
    write_atomic(
        &done.cert,
        format!("{cert_pem}{}", ca.pem).as_bytes(),
        0o644,
    )?;
    Ok(done)
}

/// The mirror's `host:port` from the server certificate beside the CA (its CN), or a
/// placeholder.
fn mirror_host_port(ca_dir: &Path, port: u16) -> String {
    let cn = std::fs::read(ca_dir.join(SERVER_CERT)).ok().and_then(|b| {
        let pem = x509_parser::pem::parse_x509_pem(&b).ok()?.1;
        let x = pem.parse_x509().ok()?;
        let cn = x.subject().iter_common_name().next()?.as_str().ok()?;
        Some(cn.to_owned())
    });
    match cn {
        Some(h) => host_port(&h, port),
        None => format!("<host>:{port}"),
    }
}

/// What `certs client` prints: the files, the listener setting, and where each client puts
/// the pair for the mirror at `https://<host>:<port>` (`host` from `regcache.crt` beside the
/// CA).
pub fn client_report(done: &ClientIssued, ca_dir: &Path, port: u16) -> String {
    let hp = mirror_host_port(ca_dir, port);
    let ca = absolute(&done.ca_cert);
    let cert = absolute(&done.cert);
    let key = absolute(&done.key);
    let name = cert
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        r#"wrote {cert} and {key} (mode 0600), signed by {ca}, expires {exp}

The mirror asks for client certificates signed by it with, on the listener:
  client_ca = "{ca}"

Copy both files to the client, then:
Docker (dockerd reads client.cert / client.key beside ca.crt):
  mkdir -p /etc/docker/certs.d/{hp}
  cp {name}.cert /etc/docker/certs.d/{hp}/client.cert
  cp {name}.key /etc/docker/certs.d/{hp}/client.key && chmod 600 /etc/docker/certs.d/{hp}/client.key
containerd (in the [host."https://{hp}"] table of /etc/containerd/certs.d/docker.io/hosts.toml):
  cp {name}.cert {name}.key /etc/containerd/certs.d/docker.io/ && chmod 600 /etc/containerd/certs.d/docker.io/{name}.key
  client = [["/etc/containerd/certs.d/docker.io/{name}.cert", "/etc/containerd/certs.d/docker.io/{name}.key"]]
podman, CRI-O, skopeo (read <name>.cert with <name>.key beside ca.crt):
  mkdir -p /etc/containers/certs.d/{hp}
  cp {name}.cert {name}.key /etc/containers/certs.d/{hp}/ && chmod 600 /etc/containers/certs.d/{hp}/{name}.key
Check: curl --cacert {ca} --cert {cert} --key {key} https://{hp}/v2/
"#,
        cert = cert.display(),
        key = key.display(),
        ca = ca.display(),
        exp = rfc3339(done.not_after),
    )
}

/// `ts` (Unix seconds, negative before 1970) as a `SystemTime`.
pub(crate) fn system_time(ts: i64) -> SystemTime {
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.unsigned_abs())
    }
}

/// `t` as `2026-12-01T16:00:00Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn opts(dir: &Path, hosts: &[&str]) -> InitOptions {
        InitOptions {
            hostnames: hosts.iter().map(|h| h.to_string()).collect(),
            out: dir.to_path_buf(),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_checked_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        for (bad, says) in [
            ("https://mirror.lan", "without a scheme"),
            ("mirror.lan:5000", "--port"),
            ("*.lan", "wildcards"),
            ("bad name", "letters, digits"),
            ("", "letters, digits"),
        ] {
            let e = init(&opts(d.path(), &[bad])).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let e = init(&InitOptions {
            ips: vec!["10.0.0.300".into()],
            ..opts(d.path(), &["m.lan"])
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("--ip \"10.0.0.300\": not an IP address"),
            "{e}"
        );
        assert!(init(&opts(d.path(), &[]))
            .unwrap_err()
            .to_string()
            .contains("no --hostname"));
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }

    #[test]
    fn the_server_certificate_has_the_names_usages_and_validity() {
        let d = tempfile::tempdir().unwrap();
        let done = init(&InitOptions {
            ips: vec!["10.0.0.5".into(), "fd00::5".into()],
            ..opts(d.path(), &["Mirror.Site.Lan", "192.168.1.2", "mirror"])
        })
        .unwrap();
        assert_eq!(done.host, "mirror.site.lan");
        let v6 = tempfile::tempdir().unwrap();
        let d6 = init(&opts(v6.path(), &["[fd00::1]"])).unwrap();
        assert_eq!(
            (d6.host.as_str(), &d6.sans[..]),
            ("fd00::1", &["IP:fd00::1".to_owned()][..])
        );
        assert!(init_report(&d6, 5000).contains("/etc/docker/certs.d/[fd00::1]:5000/ca.crt"));
        assert_eq!(
            done.sans,
            [
                "DNS:mirror.site.lan",
                "IP:192.168.1.2",
                "DNS:mirror",
                "IP:10.0.0.5",
                "IP:fd00::5"
            ]
        );
        let pem = std::fs::read(&done.cert).unwrap();
        let certs: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(&pem)
            .map(|p| p.unwrap())
            .collect();
        assert_eq!(certs.len(), 2, "server certificate, then the CA");
        let leaf = certs[0].parse_x509().unwrap();
        let ca = certs[1].parse_x509().unwrap();
        assert_eq!(leaf.subject().to_string(), "CN=mirror.site.lan");
        assert_eq!(
            ca.subject().to_string(),
            "CN=regcache local CA (mirror.site.lan)"
        );
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        assert!(!leaf.is_ca());
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca && bc.path_len_constraint == Some(0));
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert!(leaf.key_usage().unwrap().unwrap().value.digital_signature());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let (nb, na) = (
            leaf.validity().not_before.timestamp(),
            leaf.validity().not_after.timestamp(),
        );
        assert!((now - nb - 86400).abs() < 60, "backdated a day");
        assert!((na - now - LEAF_DAYS * 86400).abs() < 60);
        assert!(na - nb < 825 * 86400);
        let ca_left = ca.validity().not_after.timestamp() - now;
        assert!((ca_left - CA_DAYS * 86400).abs() < 60);
    }

    /// `--force` keeps a CA made by another tool: its name (other string types, several
    /// attributes) and its subjectKeyIdentifier carry over into what it signs.
    #[test]
    fn a_kept_ca_of_another_tool_signs_in_its_own_name() {
        let d = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CountryName,
            DnValue::PrintableString("DE".try_into().unwrap()),
        );
        dn.push(DnType::OrganizationName, "Example Org");
        dn.push(DnType::CommonName, "Example Root");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![7; 20]);
        p.not_before = offset(SystemTime::now() - days(1));
        p.not_after = offset(SystemTime::now() + days(100));
        let ca = p.self_signed(&key).unwrap();
        std::fs::write(d.path().join(CA_CERT), ca.pem()).unwrap();
        std::fs::write(d.path().join(CA_KEY), key.serialize_pem()).unwrap();
        let done = init(&InitOptions {
            force: true,
            ..opts(d.path(), &["m.lan"])
        })
        .unwrap();
        assert!(done.ca_kept);
        assert_eq!(std::fs::read_to_string(&done.ca_cert).unwrap(), ca.pem());
        let pem = std::fs::read(&done.cert).unwrap();
        let leaf = x509_parser::pem::parse_x509_pem(&pem).unwrap().1;
        let leaf = leaf.parse_x509().unwrap();
        let (_, cax) = X509Certificate::from_der(ca.der()).unwrap();
        assert_eq!(leaf.issuer().as_raw(), cax.subject().as_raw());
        let aki = leaf
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                _ => None,
            })
            .unwrap();
        assert_eq!(aki.0, &[7; 20][..]);
        // Never past the CA's own expiry.
        assert!(done.not_after <= done.ca_not_after);
        // A CA key that is not the CA's is refused.
        std::fs::write(
            d.path().join(CA_KEY),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let e = init(&InitOptions {
            force: true,
            ..opts(d.path(), &["m.lan"])
        })
        .unwrap_err();
        assert!(e.to_string().contains("is not the key of"), "{e}");
    }
}
