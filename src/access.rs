//! Who may use a listener: HTTP Basic credentials (RFC 7617) checked against an htpasswd file
//! of bcrypt entries, as `htpasswd -B` writes them (the format distribution's `htpasswd` auth
//! reads), and TLS client certificates, verified in the handshake (`tls::listener_config`).
//!
//! What a listener requires, with `htpasswd` and/or `client_ca`:
//! - neither: nothing (anyone who can reach it);
//! - `client_ca` only: a client certificate (the handshake fails without one);
//! - `htpasswd` only: Basic credentials matching an entry;
//! - both: either one (a client certificate, or Basic credentials).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use sha2::Digest as _;

/// Credentials bcrypt accepted, remembered (as hashes) so a client sending them with every
/// request costs one bcrypt verification, not one per request.
const ACCEPTED_MEMORY: usize = 4096;

/// bcrypt verifications at once (each takes milliseconds by design): a flood of wrong
/// passwords costs at most this many cores.
const VERIFYING_AT_ONCE: usize = 2;

/// The highest bcrypt cost accepted (2^N rounds): cost 12 takes about a quarter of a second a
/// check; `htpasswd -B` writes 5 by default. Higher costs would let a few wrong passwords hold
/// the verifiers for seconds each.
pub const MAX_COST: u32 = 12;

/// A hash bcrypt verifies against for unknown users, so an unknown user takes as long to
/// refuse as a wrong password (cost 5, the `htpasswd -B` default).
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| bcrypt::hash("regcache: no such user", 5).unwrap_or_default());

/// The entries of one htpasswd file.
pub struct Htpasswd {
    /// Where they were read from (named in messages).
    path: PathBuf,
    /// User name → bcrypt hash (`$2y$`, `$2b$` or `$2a$`).
    entries: HashMap<String, String>,
    /// SHA-256 of (user, password, hash) of credentials bcrypt accepted.
    accepted: Mutex<HashSet<[u8; 32]>>,
    /// Bounds concurrent bcrypt verifications.
    verifying: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("path", &self.path)
            .field("users", &self.entries.len())
            .finish()
    }
}

impl Htpasswd {
    /// Reads and parses `path`.
    ///
    /// Errors: a message naming the file (and line) and the fix: unreadable, no entries, a
    /// line that is not `user:hash`, a hash that is not bcrypt (MD5 `$apr1$`, `{SHA}`, crypt),
    /// a user given twice.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "htpasswd {}: cannot read it: {e} (make it readable by the user regcache runs as; under systemd use LoadCredential= and \"${{CREDENTIALS_DIRECTORY}}/<name>\")",
                path.display()
            )
        })?;
        Htpasswd::parse(&text, path)
    }

    /// Parses htpasswd `text` (blank lines and `#` comments skipped); `path` is for messages.
    ///
    /// Errors: as [`Htpasswd::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Htpasswd, String> {
        let mut entries = HashMap::new();
        // A byte-order mark some editors write would become part of the first user's name.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let at = format!("htpasswd {} line {}", path.display(), i + 1);
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!(
                    "{at}: not user:hash; create entries with htpasswd -B {} USER",
                    path.display()
                ));
            };
            if user.is_empty() {
                return Err(format!("{at}: the user name is empty"));
            }
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                let kind = if hash.starts_with("$apr1$") {
                    "an MD5 ($apr1$)"
                } else if hash.starts_with("{SHA}") {
                    "a SHA-1 ({SHA})"
                } else {
                    "not a bcrypt"
                };
                return Err(format!(
                    "{at}: user {user:?} has {kind} hash; only bcrypt entries are accepted: set it again with htpasswd -B {} {user}",
                    path.display()
                ));
            }
            let Ok(parts) = hash.parse::<bcrypt::HashParts>() else {
                return Err(format!(
                    "{at}: user {user:?} has a malformed bcrypt hash; set it again with htpasswd -B {} {user}",
                    path.display()
                ));
            };
            if parts.get_cost() > MAX_COST {
                return Err(format!(
                    "{at}: user {user:?} has bcrypt cost {}, over {MAX_COST}: each check would take seconds; set it again with htpasswd -B -C 5 {} {user}",
                    parts.get_cost(),
                    path.display()
                ));
            }
            if entries.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(format!(
                    "{at}: user {user:?} is given twice; keep one entry"
                ));
            }
        }
        if entries.is_empty() {
            return Err(format!(
                "htpasswd {}: no entries, so nobody could pull; add one with htpasswd -B {} USER",
                path.display(),
                path.display()
            ));
        }
        Ok(Htpasswd {
            path: path.to_path_buf(),
            entries,
            accepted: Mutex::new(HashSet::new()),
            verifying: std::sync::Arc::new(tokio::sync::Semaphore::new(VERIFYING_AT_ONCE)),
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of users.
    pub fn users(&self) -> usize {
        self.entries.len()
    }

    /// Whether `user` with `password` matches an entry. bcrypt runs on a blocking thread, at
    /// most two at a time; accepted credentials are remembered.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let hash = self.entries.get(user);
        let memo: [u8; 32] = {
            let mut h = sha2::Sha256::new();
            for part in [user, password, hash.map_or("", String::as_str)] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
            h.finalize().into()
        };
        if hash.is_some() && self.accepted.lock().expect("htpasswd lock").contains(&memo) {
            return true;
        }
        // The permit goes with the blocking task: a client that leaves does not free a
        // verifier still hashing for it.
        let Ok(permit) = self.verifying.clone().acquire_owned().await else {
            return false;
        };
        let (password, against) = (
            password.to_owned(),
            hash.cloned().unwrap_or_else(|| DUMMY_HASH.clone()),
        );
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(password, &against)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false);
        if ok && hash.is_some() {
            let mut accepted = self.accepted.lock().expect("htpasswd lock");
            if accepted.len() >= ACCEPTED_MEMORY {
                accepted.clear();
            }
            accepted.insert(memo);
            return true;
        }
        false
    }
}

/// The user and password of an `Authorization: Basic <base64(user:password)>` header value
/// (scheme matched case-insensitively). `None`: another scheme, or malformed.
pub fn basic_credentials(value: &http::HeaderValue) -> Option<(String, String)> {
    let v = value.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str)]) -> Htpasswd {
        let text: String = entries
            .iter()
            .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
            .collect();
        Htpasswd::parse(&text, Path::new("/etc/regcache/htpasswd")).unwrap()
    }

    #[tokio::test]
    async fn right_wrong_and_unknown_users() {
        let h = file(&[("alice", "s3cret"), ("bob", "hunter2")]);
        assert_eq!(h.users(), 2);
        assert!(h.verify("alice", "s3cret").await);
        assert!(h.verify("alice", "s3cret").await, "remembered");
        assert!(!h.verify("alice", "hunter2").await);
        assert!(!h.verify("carol", "s3cret").await);
        assert!(!h.verify("", "").await);
    }

    #[test]
    fn non_bcrypt_and_malformed_entries_name_the_line_and_fix() {
        let p = Path::new("/h");
        for (text, needle) in [
            ("alice:$apr1$abc$def\n", "line 1: user \"alice\" has an MD5"),
            (
                "\n# c\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
                "line 3: user \"bob\" has a SHA-1",
            ),
            ("carol:plain\n", "not a bcrypt hash"),
            ("dave\n", "not user:hash"),
            ("erin:$2y$05$short\n", "malformed bcrypt"),
            (
                "zed:$2y$31$7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z7lHb8xL1G5xZr3VlUo3cZ7y\n",
                "cost 31, over 12",
            ),
            ("", "no entries"),
            ("# only a comment\n", "no entries"),
        ] {
            let e = Htpasswd::parse(text, p).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.contains("htpasswd"), "{e}");
        }
        let h = bcrypt::hash("x", 4).unwrap();
        let e = Htpasswd::parse(&format!("a:{h}\na:{h}\n"), p).unwrap_err();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
    }

    #[tokio::test]
    async fn a_byte_order_mark_is_not_part_of_the_first_name() {
        let text = format!(
            "\u{feff}{}",
            "alice:".to_owned() + &bcrypt::hash("pw", 4).unwrap()
        );
        let h = Htpasswd::parse(&text, Path::new("/h")).unwrap();
        assert!(h.verify("alice", "pw").await);
    }

    #[test]
    fn basic_header_parsing() {
        let v = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(
            basic_credentials(&v("Basic YWxpY2U6czNjcjp0")),
            Some(("alice".into(), "s3cr:t".into()))
        );
        assert_eq!(
            basic_credentials(&v("basic YWxpY2U6")),
            Some(("alice".into(), "".into()))
        );
        assert_eq!(basic_credentials(&v("Bearer abc")), None);
        assert_eq!(basic_credentials(&v("Basic !!!")), None);
        assert_eq!(basic_credentials(&v("Basic YWxpY2U=")), None);
    }
}
