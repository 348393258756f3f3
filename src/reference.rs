//! Repository names, tags, digests and the pull-API routes, validated by the grammars of the
//! OCI distribution spec ("Pulling manifests", "Pulling blobs"; grammar in spec.md §"Definitions")
//! and the OCI image spec ("Digests").
//!
//! Everything here is pure and allocation-light: it runs on every request before anything touches
//! the disk or the upstream, so a malformed path can never reach either.

use std::fmt;
use std::str::FromStr;

/// Longest repository name accepted, in bytes (distribution's limit, name plus registry host).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted, in bytes (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
pub const MAX_TAG_LEN: usize = 128;

/// The four modern manifest media types, asked of upstream on every manifest request (OCI image
/// spec "Image Index" and "Image Manifest"; Docker image manifest v2 schema 2 and its list).
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Docker Hub's registry name, as clients spell it (`?ns=docker.io`).
pub const DOCKER_HUB: &str = "docker.io";

/// Docker Hub spells official images `library/<name>`; a bare name gets the prefix so all
/// spellings share one cache entry (the Hub itself does not alias them). Other registries'
/// names are kept as they are.
pub fn canonical_name(registry: &str, name: String) -> String {
    if registry == DOCKER_HUB && !name.contains('/') {
        format!("library/{name}")
    } else {
        name
    }
}

/// Whether `s` looks like `host[:port]` (letters, digits, `.`, `-`, one optional `:port`).
pub fn is_registry_name(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-'])
        && !host.contains("..")
        && port.is_none_or(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        })
}

/// The first path component after `/v2/` when it looks like a registry host (has a `.` or a
/// `:`, or is `localhost`) and more path follows: a podman/CRI-O path-prefix mirror request.
pub fn hostlike_prefix(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let (first, tail) = rest.split_once('/')?;
    let hostlike = first.contains('.') || first.contains(':') || first == "localhost";
    (!tail.is_empty() && hostlike && is_registry_name(first)).then_some(first)
}

/// A digest algorithm regcache can verify. Source: OCI image spec, "Digests" (registered
/// algorithms `sha256` and `sha512`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// `sha256`: 64 lowercase hex characters.
    Sha256,
    /// `sha512`: 128 lowercase hex characters.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears in a digest (`sha256`, `sha512`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded value, in characters (64 or 128).
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A content digest, `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
///
/// Constructed only through [`Digest::from_str`], so every value is safe to use as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: Box<str>,
}

/// Why a string is not a digest regcache accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// No `:` separating algorithm and encoded value.
    #[error("digest {0:?} is not of the form algorithm:hex (e.g. sha256:<64 hex>)")]
    Malformed(String),
    /// An algorithm other than sha256 or sha512.
    #[error("digest algorithm {0:?} is not supported (use sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    /// Wrong length or a character outside `[0-9a-f]`.
    #[error("digest {0:?} must have {1} lowercase hex characters after the colon")]
    BadEncoding(String, usize),
}

impl Digest {
    /// The digest's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex value after the colon (64 or 128 characters).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Builds a digest from an algorithm and raw hash output (32 or 64 bytes).
    pub fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Digest {
        Digest {
            algorithm,
            hex: hex::encode(raw).into_boxed_str(),
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    /// Parses `algorithm:hex`. Errors: [`DigestError`] naming what is wrong.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, enc) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(truncate(s)))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(truncate(other))),
        };
        let want = algorithm.hex_len();
        if enc.len() != want || !enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::BadEncoding(truncate(s), want));
        }
        Ok(Digest {
            algorithm,
            hex: enc.into(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(140).collect()
}

/// Whether `name` is a repository name by the distribution spec grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most
/// [`MAX_NAME_LEN`] bytes. Such a name never contains `..`, an empty component or a leading `/`,
/// so it is safe as a relative path.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(is_valid_component)
}

fn is_valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", then an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `tag` matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` (distribution spec). Such a tag
/// has no `/` and cannot be `.` or `..`, so it is safe as a file name.
pub fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// What a manifest request names: a tag (mutable) or a digest (immutable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// A tag such as `3.19` or `latest`; revalidated upstream after `tag_ttl`.
    Tag(String),
    /// A digest; never revalidated.
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// A pull-API endpoint, parsed from the request path (OCI distribution spec, "Endpoints").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest { name: String, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { name: String, digest: Digest },
    /// `/v2/<name>/tags/list`.
    TagsList { name: String },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers { name: String, digest: Digest },
}

/// Why a path is not a pull-API route; each maps to an OCI error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// The path is not one of the pull-API endpoints (404).
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// The repository name breaks the name grammar (400 NAME_INVALID).
    #[error("invalid repository name {0:?}: components of [a-z0-9] separated by '.', '_', '__' or '-', joined by '/', at most 255 bytes")]
    NameInvalid(String),
    /// The tag breaks the tag grammar (400 TAG_INVALID).
    #[error("invalid tag {0:?}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    TagInvalid(String),
    /// The digest is malformed or uses an unsupported algorithm (400 DIGEST_INVALID).
    #[error(transparent)]
    DigestInvalid(#[from] DigestError),
}

impl Route {
    /// Parses a request path (without the query). Names contain `/`, so the path is read from the
    /// right: the last `/manifests/`, `/blobs/`, `/tags/list` or `/referrers/` ends the name.
    ///
    /// Errors: [`RouteError`] — `NotFound` for paths outside the pull API, the `*Invalid`
    /// variants for grammar violations.
    pub fn parse(path: &str) -> Result<Route, RouteError> {
        let rest = match path.strip_prefix("/v2/") {
            Some(r) => r,
            None if path == "/v2" => return Ok(Route::Base),
            None => return Err(RouteError::NotFound(truncate(path))),
        };
        if rest.is_empty() {
            return Ok(Route::Base);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Ok(Route::TagsList {
                name: checked_name(name)?,
            });
        }
        let (name, kind, last) =
            split_endpoint(rest).ok_or_else(|| RouteError::NotFound(truncate(path)))?;
        let name = checked_name(name)?;
        match kind {
            "manifests" => {
                let reference = if last.contains(':') {
                    Reference::Digest(last.parse()?)
                } else if is_valid_tag(last) {
                    Reference::Tag(last.to_string())
                } else {
                    return Err(RouteError::TagInvalid(truncate(last)));
                };
                Ok(Route::Manifest { name, reference })
            }
            "blobs" => Ok(Route::Blob {
                name,
                digest: last.parse()?,
            }),
            "referrers" => Ok(Route::Referrers {
                name,
                digest: last.parse()?,
            }),
            _ => Err(RouteError::NotFound(truncate(path))),
        }
    }

    /// The repository the route names, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Route::Base => None,
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::TagsList { name }
            | Route::Referrers { name, .. } => Some(name),
        }
    }
}

/// Splits `<name>/<kind>/<last>` where kind is the second-to-last segment.
fn split_endpoint(rest: &str) -> Option<(&str, &str, &str)> {
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    if last.is_empty() || !matches!(kind, "manifests" | "blobs" | "referrers") {
        return None;
    }
    Some((name, kind, last))
}

fn checked_name(name: &str) -> Result<String, RouteError> {
    if is_valid_name(name) {
        Ok(name.to_string())
    } else {
        Err(RouteError::NameInvalid(truncate(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn names() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "a.b",
            "a_b",
            "a__b",
            "a---b",
            "x0/y-1.z",
        ] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "A", "a..b", "a___b", "-a", "a-", "..", "a/../b", "a/.", "a b",
            "a%2fb", "_a", "a._b",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert!(!is_valid_name(&"a".repeat(256)));
        assert!(is_valid_name(&"a".repeat(255)));
    }

    #[test]
    fn tags() {
        for ok in ["latest", "3.19", "_x", "v1.0-rc_2", &"a".repeat(128)] {
            assert!(is_valid_tag(ok), "{ok}");
        }
        for bad in ["", ".", "..", "-x", ".x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(!is_valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let d: Digest = format!("sha256:{H64}").parse().unwrap();
        assert_eq!(d.to_string(), format!("sha256:{H64}"));
        assert!(format!("sha512:{}", "a".repeat(128))
            .parse::<Digest>()
            .is_ok());
        for bad in [
            "sha256".to_string(),
            format!("sha256:{}", &H64[1..]),
            format!("sha256:{}", H64.to_uppercase()),
            format!("md5:{H64}"),
            format!("sha256:{H64}/"),
            format!("sha256:../{}", &H64[3..]),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v2/"), Ok(Route::Base));
        assert_eq!(Route::parse("/v2"), Ok(Route::Base));
        assert_eq!(
            Route::parse("/v2/library/alpine/manifests/3.19"),
            Ok(Route::Manifest {
                name: "library/alpine".into(),
                reference: Reference::Tag("3.19".into())
            })
        );
        // A repository may itself be called "manifests" or "blobs".
        assert_eq!(
            Route::parse(&format!("/v2/a/blobs/b/blobs/sha256:{H64}")),
            Ok(Route::Blob {
                name: "a/blobs/b".into(),
                digest: format!("sha256:{H64}").parse().unwrap()
            })
        );
        assert_eq!(
            Route::parse("/v2/a/tags/list"),
            Ok(Route::TagsList { name: "a".into() })
        );
        assert!(matches!(
            Route::parse("/v2/Bad/manifests/x"),
            Err(RouteError::NameInvalid(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a/manifests/.."),
            Err(RouteError::TagInvalid(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a/blobs/sha256:zz"),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a/blobs/latest"),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a/uploads/x"),
            Err(RouteError::NotFound(_))
        ));
        assert!(matches!(
            Route::parse("/etc/passwd"),
            Err(RouteError::NotFound(_))
        ));
        assert!(matches!(
            Route::parse("/v2/../manifests/x"),
            Err(RouteError::NameInvalid(_))
        ));
    }
}
