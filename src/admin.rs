//! Operator commands on a cache directory: `status`, `verify`, `gc`. They work while a mirror
//! serves from the same directory: they never touch `tmp/` (fills in progress), only read or
//! unlink committed files, and the mirror treats a file that vanished as a miss.

use std::fs::File;
use std::io::{self, Read};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;

use crate::cache::eviction::{fs_space, Budget, EvictReport, MinFree};
use crate::cache::hash::Hasher;
use crate::cache::index::{Entry, ObjectKey};
use crate::cache::scan::walk_objects;
use crate::cache::store::Store;
use crate::config::CacheSettings;

/// `regcache status`: size against the budget, object counts, free disk, oldest and newest use.
///
/// Errors: the cache directory cannot be read.
pub fn status(settings: &CacheSettings) -> io::Result<String> {
    let (store, scan) = Store::attach(&settings.cache_dir)?;
    let objects = store.index().objects();
    let blobs = objects
        .iter()
        .filter(|(k, _)| matches!(k, ObjectKey::Blob(_)))
        .count();
    let tags = count_files(&settings.cache_dir.join("tags"));
    let temps = std::fs::read_dir(settings.cache_dir.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    let fs = fs_space(store.root());
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12}{v}\n"));
    line("cache:", settings.cache_dir.display().to_string());
    line(
        "objects:",
        format!(
            "{} ({blobs} blobs, {} manifests), {tags} tags",
            objects.len(),
            objects.len() - blobs
        ),
    );
    line("size:", format!("{} on disk", human(scan.bytes)));
    line(
        "budget:",
        budget_text(&settings.budget, scan.bytes, fs.map(|f| f.total)),
    );
    if let Some(fs) = fs {
        line(
            "free disk:",
            format!("{} of {}", human(fs.available), human(fs.total)),
        );
    }
    let used = |e: &Entry| UNIX_EPOCH + Duration::from_secs(e.used);
    if let (Some((_, oldest)), Some((_, newest))) = (objects.first(), objects.last()) {
        line("oldest use:", when(used(oldest)));
        line(
            "newest use:",
            format!(
                "{} (use times are recorded at most every {} minutes)",
                when(used(newest)),
                regcache_touch_minutes()
            ),
        );
    }
    if temps > 0 {
        line(
            "temp files:",
            format!("{temps} (fills in progress, or left by a crash until the next start)"),
        );
    }
    if scan.healed > 0 {
        line(
            "damaged:",
            format!(
                "{} blobs with the wrong size (run `regcache verify`)",
                scan.healed
            ),
        );
    }
    Ok(out)
}

fn budget_text(b: &Budget, used: u64, fs_total: Option<u64>) -> String {
    let mut parts = Vec::new();
    if let Some(m) = b.max_size {
        parts.push(format!(
            "max_size {} ({:.0}% used)",
            human(m),
            used as f64 * 100.0 / m.max(1) as f64
        ));
    }
    match (b.min_free, fs_total) {
        (Some(MinFree::Percent(p)), Some(t)) => parts.push(format!(
            "min_free {p}% ({})",
            human(MinFree::Percent(p).bytes(t))
        )),
        (Some(mf), _) => parts.push(format!("min_free {}", human(mf.bytes(0)))),
        _ => {}
    }
    if parts.is_empty() {
        "unbounded (set max_size or min_free)".into()
    } else {
        parts.join(", ")
    }
}

/// What `regcache verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Objects checked.
    pub checked: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// Objects removed, as `(digest, why)`: `digest` is `sha256:<64 hex>` (or sha512), `why`
    /// says whether the bytes did not hash to it or the file's size did not match the length
    /// in its name.
    pub removed: Vec<(String, &'static str)>,
}

/// Why `verify` removed an object: its bytes hash to another digest.
pub const WRONG_BYTES: &str = "its bytes do not match its digest";
/// Why `verify` removed a blob: its size is not the length in its file name (truncated or
/// appended to).
pub const WRONG_SIZE: &str = "its size does not match the length in its file name";

/// `regcache verify`: re-hashes every object and removes what does not match its digest
/// (the mirror re-fetches it on the next pull).
///
/// Errors: the cache directory cannot be read.
pub fn verify(settings: &CacheSettings) -> io::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut damaged = Vec::new();
    let mut found = Vec::new();
    walk_objects(&settings.cache_dir, true, &mut damaged, |o| found.push(o))?;
    report
        .removed
        .extend(damaged.iter().map(|d| (d.to_string(), WRONG_SIZE)));
    for o in found {
        report.checked += 1;
        let ok = match hash_object(&o.key, &o.path) {
            Ok((ok, n)) => {
                report.bytes += n;
                ok
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // evicted meanwhile
            Err(e) => return Err(e),
        };
        if !ok {
            match std::fs::remove_file(&o.path) {
                Ok(()) => report
                    .removed
                    .push((o.key.digest().to_string(), WRONG_BYTES)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(report)
}

/// Hashes one object file; returns whether it matches its digest and the bytes hashed.
fn hash_object(key: &ObjectKey, path: &std::path::Path) -> io::Result<(bool, u64)> {
    let d = key.digest();
    let mut h = Hasher::new(d.algorithm());
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    let mut header_done = matches!(key, ObjectKey::Blob(_));
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        let mut chunk = &buf[..k];
        if !header_done {
            // Manifests start with "<media type>\n".
            match chunk.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    chunk = &chunk[nl + 1..];
                    header_done = true;
                }
                None => return Ok((false, n)),
            }
        }
        h.update(chunk);
        n += chunk.len() as u64;
    }
    Ok((header_done && h.finish() == *d, n))
}

/// `regcache gc`: evicts least recently used content now, down to the budget's low watermark.
/// With `dry_run`, lists what would go and removes nothing.
///
/// Errors: the cache directory cannot be read.
pub fn gc(settings: &CacheSettings, dry_run: bool) -> io::Result<(EvictReport, Vec<String>)> {
    let (store, _) = Store::attach(&settings.cache_dir)?;
    if dry_run {
        let victims =
            crate::cache::eviction::plan(store.index(), &settings.budget, fs_space(store.root()));
        let mut report = EvictReport::default();
        let mut lines = Vec::new();
        for (k, e) in &victims {
            report.objects += 1;
            report.bytes += e.disk;
            lines.push(format!(
                "would remove {} {} ({}, last used {})",
                match k {
                    ObjectKey::Blob(_) => "blob",
                    ObjectKey::Manifest(_) => "manifest",
                },
                k.digest(),
                human(e.disk),
                when(UNIX_EPOCH + Duration::from_secs(e.used))
            ));
        }
        return Ok((report, lines));
    }
    Ok((
        crate::cache::eviction::evict_once(&store, &settings.budget),
        Vec::new(),
    ))
}

fn count_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// How coarse the recorded use times are, in minutes.
fn regcache_touch_minutes() -> u64 {
    crate::cache::store::TOUCH_INTERVAL / 60
}

/// `bytes` in IEC units, e.g. `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

fn when(t: SystemTime) -> String {
    let ago = SystemTime::now().duration_since(t).unwrap_or_default();
    let ago = Duration::from_secs(ago.as_secs());
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(t),
        humantime::format_duration(ago)
    )
}
