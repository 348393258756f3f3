//! Byte ranges of blob responses (RFC 9110 §14: `Range`, `Content-Range`, 206 and 416).

use http::header::RANGE;
use http::HeaderMap;

/// A single byte range from the `Range` header (RFC 9110 §14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` (b inclusive) or `bytes=a-` (b = None).
    FromTo(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// What a range means for an object of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Serve the whole object (200).
    Full,
    /// Serve bytes a..=b (206).
    Partial(u64, u64),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Parses a `Range` value. Returns `None` for anything but one well-formed `bytes` range
/// (RFC 9110 lets a server ignore such headers and answer 200 with the whole object).
pub fn parse_range(v: &str) -> Option<RangeSpec> {
    // The range unit is case-insensitive (RFC 9110 §14.1): `Bytes=` is `bytes=`.
    let v = v.trim();
    let unit = v.get(..6)?;
    if !unit.eq_ignore_ascii_case("bytes=") {
        return None;
    }
    let spec = v[6..].trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok())?
    };
    if a.trim().is_empty() {
        return num(b).map(RangeSpec::Suffix);
    }
    let a = num(a)?;
    if b.trim().is_empty() {
        return Some(RangeSpec::FromTo(a, None));
    }
    let b = num(b)?;
    (b >= a).then_some(RangeSpec::FromTo(a, Some(b)))
}

/// Resolves a range against an object of `len` bytes (RFC 9110 §14.1.2, §15.5.17).
pub fn resolve_range(spec: &RangeSpec, len: u64) -> RangeAnswer {
    match *spec {
        RangeSpec::FromTo(a, _) if a >= len => RangeAnswer::Unsatisfiable,
        RangeSpec::FromTo(a, b) => RangeAnswer::Partial(a, b.unwrap_or(u64::MAX).min(len - 1)),
        RangeSpec::Suffix(0) => RangeAnswer::Unsatisfiable,
        RangeSpec::Suffix(_) if len == 0 => RangeAnswer::Unsatisfiable,
        RangeSpec::Suffix(n) => RangeAnswer::Partial(len.saturating_sub(n), len - 1),
    }
}

/// The request's `Range`, when it is one well-formed byte range in one `Range` header (two
/// headers are ambiguous: both are ignored, and the whole blob is answered).
pub fn range_of(headers: &HeaderMap) -> Option<RangeSpec> {
    let mut all = headers.get_all(RANGE).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    first.to_str().ok().and_then(parse_range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-9"),
            Some(RangeSpec::FromTo(0, Some(9)))
        );
        assert_eq!(parse_range("bytes=5-"), Some(RangeSpec::FromTo(5, None)));
        assert_eq!(parse_range("bytes=-3"), Some(RangeSpec::Suffix(3)));
        assert_eq!(parse_range("Bytes=5-"), Some(RangeSpec::FromTo(5, None)));
        assert_eq!(
            parse_range("BYTES=0-9"),
            Some(RangeSpec::FromTo(0, Some(9)))
        );
        let mut two = HeaderMap::new();
        two.append(RANGE, "bytes=0-1".parse().unwrap());
        assert_eq!(range_of(&two), Some(RangeSpec::FromTo(0, Some(1))));
        two.append(RANGE, "bytes=5-9".parse().unwrap());
        assert_eq!(range_of(&two), None, "two Range headers: neither is used");
        for bad in [
            "bytes=9-5",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
        assert_eq!(
            resolve_range(&RangeSpec::FromTo(0, Some(99)), 10),
            RangeAnswer::Partial(0, 9)
        );
        assert_eq!(
            resolve_range(&RangeSpec::FromTo(10, None), 10),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(
            resolve_range(&RangeSpec::Suffix(3), 10),
            RangeAnswer::Partial(7, 9)
        );
        assert_eq!(
            resolve_range(&RangeSpec::Suffix(30), 10),
            RangeAnswer::Partial(0, 9)
        );
        assert_eq!(
            resolve_range(&RangeSpec::Suffix(0), 10),
            RangeAnswer::Unsatisfiable
        );
    }
}
