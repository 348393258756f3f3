//! The `regcache certs` command line: its clap definitions and what each subcommand prints.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use super::{
    client, client_report, default_dir, files_of, init, init_report, input, show, CertError,
    CertFile, ClientOptions, InitOptions, DEFAULT_PORT,
};

/// `regcache certs ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a local CA and a server certificate signed by it (ca.crt, ca.key, regcache.crt,
    /// regcache.key), and print what the mirror and each client (Docker, containerd,
    /// podman) need. Never overwrites without --force; --force keeps an existing CA.
    #[command(
        after_help = "Examples:\n  regcache certs init --hostname mirror.site.lan --ip 10.0.0.5\n  regcache certs init --hostname mirror.site.lan --out /etc/regcache/certs --force    # new server certificate, same CA\n  regcache certs init --hostname mirror.site.lan --force --new-ca                     # new CA too: clients need the new ca.crt\n\nCA: 10 years, CA:true pathlen 0. Server certificate: 2 years, CN the first --hostname, every --hostname and --ip in its subjectAltName. ECDSA P-256 keys, mode 0600.\nExit status: 0 done, 2 bad input (a name, files in the way, an unusable CA), 1 cannot write."
    )]
    Init {
        /// Name (or IP address) clients use to reach the mirror; repeatable; the first is the
        /// certificate's CN and the host in the printed instructions.
        #[arg(long = "hostname", value_name = "NAME", required = true)]
        hostnames: Vec<String>,
        /// Another IP address clients may use; repeatable.
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<String>,
        /// Directory to write into [default: /etc/regcache/certs as root, else ./certs].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The mirror's port, for the printed instructions.
        #[arg(long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
        port: u16,
        /// Replace the server certificate and key; an existing CA (ca.crt + ca.key) is kept and
        /// signs the new one, so clients need nothing new.
        #[arg(long)]
        force: bool,
        /// With --force: replace the CA too (every client then needs the new ca.crt).
        #[arg(long, requires = "force")]
        new_ca: bool,
    },
    /// Issue a TLS client certificate signed by the local CA (for a listener whose client_ca is
    /// that ca.crt): NAME.cert and NAME.key, and print where each client puts them.
    #[command(
        after_help = "Examples:\n  regcache certs client --name builder-1\n  regcache certs client --name ci --ca-dir /etc/regcache/certs --out /tmp/ci-cert\n\nExit status: 0 done, 2 bad input (a name, files in the way, no CA), 1 cannot write."
    )]
    Client {
        /// The client's name: its certificate's CN and the files' names.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Where the CA is (certs init's directory) [default: /etc/regcache/certs as root, else
        /// ./certs].
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
        /// Directory to write the pair into [default: the CA's directory].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The mirror's port, for the printed instructions.
        #[arg(long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
        port: u16,
        /// Replace an existing pair of that name.
        #[arg(long)]
        force: bool,
    },
    /// Print what PEM certificate files hold (subject, issuer, SANs, validity, days left, CA,
    /// key usages) and whether tls_key matches tls_cert: the files given, else those the
    /// config points at. Warns (stderr) when one has expired, is not yet valid, or expires
    /// within 30 days.
    #[command(
        after_help = "Examples:\n  regcache certs show --config /etc/regcache/regcache.toml\n  regcache certs show certs/regcache.crt certs/ca.crt\n\nExit status: 0 all good, 1 a warning (expired, expiring within 30 days, not yet valid, key not matching), 2 a file that is not a PEM certificate, or nothing to show."
    )]
    Show {
        /// PEM certificate files; none: the config's tls_cert (and tls_key).
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
        /// TOML config file [default: $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it
        /// exists].
        #[arg(long, value_name = "FILE", env = "REGCACHE_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// `println!` that ignores a closed stdout.
fn out(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// Runs a `certs` command: reports on stdout, problems on stderr prefixed `regcache certs
/// <sub>:`. Returns the exit status (see each command's help).
pub fn run(cmd: CertsCommand) -> u8 {
    let fail = |sub: &str, e: CertError| {
        eprintln!("regcache certs {sub}: {e}");
        e.exit_code()
    };
    match cmd {
        CertsCommand::Init {
            hostnames,
            ips,
            out: dir,
            port,
            force,
            new_ca,
        } => {
            let opts = InitOptions {
                hostnames,
                ips,
                out: dir.unwrap_or_else(default_dir),
                force,
                new_ca,
            };
            match init(&opts) {
                Ok(done) => {
                    out(&init_report(&done, port));
                    0
                }
                Err(e) => fail("init", e),
            }
        }
        CertsCommand::Client {
            name,
            ca_dir,
            out: dir,
            port,
            force,
        } => {
            let ca_dir = ca_dir.unwrap_or_else(default_dir);
            let opts = ClientOptions {
                name,
                out: dir.unwrap_or_else(|| ca_dir.clone()),
                ca_dir,
                force,
            };
            match client(&opts) {
                Ok(done) => {
                    out(&client_report(&done, &opts.ca_dir, port));
                    0
                }
                Err(e) => fail("client", e),
            }
        }
        CertsCommand::Show { files, config } => {
            let list: Vec<CertFile> = if files.is_empty() {
                let config = crate::config::config_or_default(config);
                let source = config.as_ref().map_or(
                    format!(
                        "no --config, no $REGCACHE_CONFIG, no {}",
                        crate::config::DEFAULT_CONFIG_FILE
                    ),
                    |p| p.display().to_string(),
                );
                let args = crate::config::ServeArgs {
                    config,
                    ..Default::default()
                };
                match crate::config::Config::load(&args) {
                    Ok(c) => {
                        let l = files_of(&c);
                        if l.is_empty() {
                            return fail(
                                "show",
                                input(format!("{source}: no tls_cert: nothing to show (name the files: regcache certs show FILE...; or --config FILE)")),
                            );
                        }
                        l
                    }
                    Err(e) => return fail("show", input(format!("{source}:\n{e}"))),
                }
            } else {
                files
                    .into_iter()
                    .map(|p| CertFile {
                        label: "file".into(),
                        path: p,
                        key: None,
                    })
                    .collect()
            };
            let s = show(&list, SystemTime::now());
            out(&s.text);
            for w in &s.warnings {
                eprintln!("regcache certs show: warning: {w}");
            }
            for e in &s.errors {
                eprintln!("regcache certs show: {e}");
            }
            s.exit_code()
        }
    }
}
