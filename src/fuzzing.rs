//! Fuzz targets' bodies (`fuzz/fuzz_targets/*.rs` call these; `tests/fuzz_corpus.rs` replays the
//! committed corpus and crash reproducers through them on stable). Each takes arbitrary bytes,
//! must never panic, and checks what must hold of any answer. Not an API.

use crate::config::{Config, ServeArgs};
use crate::http::range::{parse_range, resolve_range, RangeAnswer};
use crate::reference::{Digest, Route};

/// Route and reference parsing (OCI distribution spec grammars): any path either fails to
/// parse or yields a route whose name and digest are valid and whose name never holds `..`.
pub fn route(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Route::parse(path) {
        if let Some(name) = r.name() {
            assert!(crate::reference::is_valid_name(name), "{name:?}");
            assert!(!name.contains("..") && !name.starts_with('/'));
        }
        if let Route::Blob { digest, .. } | Route::Referrers { digest, .. } = &r {
            let again: Digest = digest
                .to_string()
                .parse()
                .expect("a parsed digest reparses");
            assert_eq!(&again, digest);
        }
    }
    let _ = path.parse::<Digest>();
    let _ = crate::reference::hostlike_prefix(path);
}

/// The `Range` header: whatever parses resolves, against any length, to a range inside it.
pub fn range(data: &[u8]) {
    let Ok(v) = std::str::from_utf8(data) else {
        return;
    };
    let Some(spec) = parse_range(v) else {
        return;
    };
    for len in [0, 1, 2, 10, 4096, u64::MAX / 2, u64::MAX] {
        if let RangeAnswer::Partial(a, b) = resolve_range(&spec, len) {
            assert!(a <= b && b < len, "{v:?} against {len}: {a}-{b}");
        }
    }
}

/// `WWW-Authenticate` parsing: never panics; a Bearer challenge always has a realm.
pub fn challenge(data: &[u8]) {
    let Ok(v) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(crate::upstream::Challenge::Bearer { realm, .. }) =
        crate::upstream::parse_challenge(v)
    {
        let _ = realm;
    }
}

/// Manifest bytes from upstream: what is accepted is a JSON object with a storable JSON media
/// type; the first byte selects upstream's `Content-Type` (absent, a manifest type, or HTML).
pub fn manifest(data: &[u8]) {
    let (ct, bytes) = match data.split_first() {
        Some((0, rest)) => (None, rest),
        Some((1, rest)) => (
            Some("application/vnd.oci.image.manifest.v1+json".into()),
            rest,
        ),
        Some((_, rest)) => (Some("text/html".into()), rest),
        None => return,
    };
    if let Ok(t) = crate::cache::manifests::media_type_of(bytes, ct) {
        assert!(crate::cache::store::is_storable_media_type(&t));
        let v: serde_json::Value = serde_json::from_slice(bytes).expect("accepted: JSON");
        assert!(v.is_object());
    }
}

/// The config file: any text gives a config or an error message, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = crate::config::parse_file(text) else {
        return;
    };
    let _ = Config::resolve(
        file,
        &ServeArgs::default(),
        std::path::Path::new("/nonexistent"),
        |_| Err(std::io::Error::other("no files in fuzzing")),
    );
}
