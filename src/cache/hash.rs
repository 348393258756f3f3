//! Streaming digests (sha256, sha512) matching a digest's algorithm (OCI image spec,
//! "Digests").

use sha2::Digest as _;

use crate::reference::{Algorithm, Digest};

/// A streaming hash over sha256 or sha512, matching a digest's algorithm.
#[derive(Clone)]
pub enum Hasher {
    /// For `sha256:` digests.
    Sha256(sha2::Sha256),
    /// For `sha512:` digests.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_raw(Algorithm::Sha256, &h.finalize()),
            Hasher::Sha512(h) => Digest::from_raw(Algorithm::Sha512, &h.finalize()),
        }
    }

    /// The digest of `data` under `algorithm`.
    pub fn digest_of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }
}
