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

/// What `regcache status` reports of a cache directory itself (with no mirror, or besides the
/// live status), for `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskReport {
    /// The cache directory.
    pub cache_dir: std::path::PathBuf,
    /// Blobs and manifests.
    pub objects: usize,
    /// Blobs among them.
    pub blobs: usize,
    /// Manifests among them.
    pub manifests: usize,
    /// Cached tags.
    pub tags: usize,
    /// Bytes on disk.
    pub bytes: u64,
    /// The budget's `max_size` in bytes, when set.
    pub max_size: Option<u64>,
    /// Bytes available on the filesystem, and its size.
    pub free_bytes: Option<u64>,
    /// The filesystem's size in bytes.
    pub filesystem_bytes: Option<u64>,
    /// Least and most recent use, seconds since the Unix epoch (recorded at most every
    /// [`crate::cache::store::TOUCH_INTERVAL`] seconds).
    pub oldest_use_unix: Option<u64>,
    /// Most recent use, seconds since the Unix epoch.
    pub newest_use_unix: Option<u64>,
    /// Files in `tmp/` (fills in progress, or left by a crash).
    pub temp_files: usize,
    /// Blobs found with the wrong size (removed from the index; `regcache verify` removes them).
    pub damaged: usize,
}

/// `regcache status`: size against the budget, object counts, free disk, oldest and newest use.
///
/// Errors: the cache directory cannot be read.
pub fn status(settings: &CacheSettings) -> io::Result<String> {
    status_report(settings).map(|(_, text)| text)
}

/// [`status`] as figures and as text.
///
/// Errors: the cache directory cannot be read.
pub fn status_report(settings: &CacheSettings) -> io::Result<(DiskReport, String)> {
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
            "{} ({}, {}), {}",
            objects.len(),
            plural(blobs, "blob"),
            plural(objects.len() - blobs, "manifest"),
            plural(tags, "tag")
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
    let report = DiskReport {
        cache_dir: settings.cache_dir.clone(),
        objects: objects.len(),
        blobs,
        manifests: objects.len() - blobs,
        tags,
        bytes: scan.bytes,
        max_size: settings.budget.max_size,
        free_bytes: fs.map(|f| f.available),
        filesystem_bytes: fs.map(|f| f.total),
        oldest_use_unix: objects.first().map(|(_, e)| e.used),
        newest_use_unix: objects.last().map(|(_, e)| e.used),
        temp_files: temps,
        damaged: scan.healed,
    };
    Ok((report, out))
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
    // Objects of the wrong size were checked too (by their size): counted, so "checked"
    // agrees with the number of objects status reported.
    report.checked += damaged.len();
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
    gc_in(&store, &settings.budget, dry_run)
}

/// [`gc`] on an open store (a running mirror's, over its admin socket) with `budget`.
///
/// Errors: the cache directory cannot be read.
pub fn gc_in(
    store: &Store,
    budget: &crate::cache::eviction::Budget,
    dry_run: bool,
) -> io::Result<(EvictReport, Vec<String>)> {
    if dry_run {
        let victims = crate::cache::eviction::plan(store.index(), budget, fs_space(store.root()));
        let mut report = EvictReport::default();
        let mut lines = Vec::new();
        let tags = store.tags();
        // Which cached tags use each object (a blob is shared by content; its users are the
        // tags whose manifests name it).
        let mut users: std::collections::HashMap<ObjectKey, Vec<String>> = Default::default();
        for t in &tags {
            let Ok(d) = t.entry.digest.parse() else {
                continue;
            };
            let mut set = std::collections::HashSet::new();
            references(store, &d, 0, &mut set);
            for k in set {
                users.entry(k).or_default().push(t.reference());
            }
        }
        for (k, e) in &victims {
            report.objects += 1;
            report.bytes += e.disk;
            // A manifest's tags go with it; a blob is only named by its users.
            let named = users.get(k).cloned().unwrap_or_default();
            let tagged = match (k, named.is_empty()) {
                (_, true) => String::new(),
                (ObjectKey::Manifest(d), false) => {
                    // Its own tags point at it; the others name it through an index.
                    let d = d.to_string();
                    let own: Vec<String> = tags
                        .iter()
                        .filter(|t| t.entry.digest == d)
                        .map(|t| t.reference())
                        .collect();
                    report.tags += own.len();
                    match own.is_empty() {
                        true => format!(", used by {}", named.join(" ")),
                        false => format!(", tags {}", own.join(" ")),
                    }
                }
                (ObjectKey::Blob(_), false) => format!(", used by {}", named.join(" ")),
            };
            lines.push(format!(
                "would remove {} {} ({}{tagged}, last used {})",
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
        crate::cache::eviction::evict_once(store, budget),
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

/// `n thing` or `n things`.
pub fn plural(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
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

/// One cached tag as `regcache ls` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// `registry/repository`, e.g. `docker.io/library/alpine`.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest (or index) it points at, `sha256:<64 hex>`.
    pub digest: String,
    /// Seconds since upstream last confirmed the tag.
    pub age_seconds: u64,
    /// Bytes on disk of the manifest and every cached blob it (or, for an index, each cached
    /// platform manifest) refers to.
    pub cached_bytes: u64,
    /// Blobs referred to, and how many of them are cached.
    pub blobs: BlobCount,
}

/// Blobs an image refers to, and how many of them are cached.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BlobCount {
    /// Blobs its manifests name.
    pub referred: usize,
    /// Of those, cached.
    pub cached: usize,
}

/// `regcache ls [REPOSITORY]`: the cached tags, of every repository or of those whose
/// `registry/repository` (or bare `repository`) contains `filter`, with what each takes on disk.
///
/// Errors: the cache directory cannot be read.
pub fn ls(settings: &CacheSettings, filter: Option<&str>) -> io::Result<Vec<Listed>> {
    let (store, _) = Store::attach(&settings.cache_dir)?;
    let objects: std::collections::HashMap<ObjectKey, Entry> =
        store.index().objects().into_iter().collect();
    let mut out = Vec::new();
    for t in store.tags() {
        let repository = format!("{}/{}", t.registry, t.repository);
        if filter.is_some_and(|f| !repository.contains(f)) {
            continue;
        }
        let Ok(digest) = t.entry.digest.parse::<crate::reference::Digest>() else {
            continue;
        };
        let (cached_bytes, (referred, cached)) = footprint(&store, &objects, &digest);
        let blobs = BlobCount { referred, cached };
        out.push(Listed {
            repository,
            tag: t.tag.clone(),
            digest: t.entry.digest.clone(),
            age_seconds: t.entry.age().as_secs(),
            cached_bytes,
            blobs,
        });
    }
    Ok(out)
}

/// Bytes on disk of manifest `d` and the cached objects it refers to, and (blobs referred to,
/// blobs cached).
fn footprint(
    store: &Store,
    objects: &std::collections::HashMap<ObjectKey, Entry>,
    d: &crate::reference::Digest,
) -> (u64, (usize, usize)) {
    let mut set = std::collections::HashSet::new();
    references(store, d, 0, &mut set);
    let bytes = set
        .iter()
        .filter_map(|k| objects.get(k))
        .map(|e| e.disk)
        .sum();
    let blobs: Vec<_> = set
        .iter()
        .filter(|k| matches!(k, ObjectKey::Blob(_)))
        .collect();
    let cached = blobs.iter().filter(|k| objects.contains_key(k)).count();
    (bytes, (blobs.len(), cached))
}

/// Adds manifest `d` and what it refers to — config and layers, or for an index its platform
/// manifests and theirs (at most 2 levels) — to `out`. A manifest not cached adds only itself.
fn references(
    store: &Store,
    d: &crate::reference::Digest,
    depth: u8,
    out: &mut std::collections::HashSet<ObjectKey>,
) {
    out.insert(ObjectKey::Manifest(d.clone()));
    let Ok(Some(m)) = store.read_manifest(d) else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.bytes) else {
        return;
    };
    let digest_of = |x: &serde_json::Value| {
        x["digest"]
            .as_str()
            .and_then(|s| s.parse::<crate::reference::Digest>().ok())
    };
    if let Some(children) = v["manifests"].as_array() {
        if depth < 2 {
            for c in children.iter().filter_map(digest_of) {
                references(store, &c, depth + 1, out);
            }
        }
        return;
    }
    let blobs = std::iter::once(&v["config"])
        .chain(v["layers"].as_array().into_iter().flatten())
        .filter_map(digest_of);
    out.extend(blobs.map(ObjectKey::Blob));
}

/// What `regcache rm` removed.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Removed {
    /// Tags removed, `registry/repository:tag`.
    pub tags: Vec<String>,
    /// Objects (manifests and blobs) removed.
    pub objects: usize,
    /// Bytes on disk freed.
    pub bytes: u64,
    /// Objects the image uses that other cached tags use too (kept).
    pub shared: usize,
}

/// `regcache rm IMAGE[:TAG|@DIGEST]`: removes a tag (default `latest`) and the content only it
/// uses, or with `@DIGEST` that manifest, the tags of the repository pointing at it and the
/// content only it uses. Content other cached tags use is kept. Safe beside a serving mirror:
/// it treats a removed file as a miss (and re-fetches it), and every byte it serves is still
/// checked against its digest.
///
/// Errors: a malformed image reference; nothing cached under it; the cache cannot be read or
/// written.
pub fn rm(settings: &CacheSettings, image: &str, default_registry: &str) -> io::Result<Removed> {
    let (store, _) = Store::attach(&settings.cache_dir)?;
    rm_in(&store, image, default_registry)
}

/// [`rm`] on an open store (a running mirror's, over its admin socket: its index and usage
/// follow at once).
///
/// Errors: as [`rm`].
pub fn rm_in(store: &Store, image: &str, default_registry: &str) -> io::Result<Removed> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let (registry, repository, tag, digest) = parse_image(image, default_registry).map_err(bad)?;
    let tags = store.tags();
    let same_repo =
        |t: &&crate::cache::tags::CachedTag| t.registry == registry && t.repository == repository;
    let doomed: Vec<&crate::cache::tags::CachedTag> = tags
        .iter()
        .filter(same_repo)
        .filter(|t| match (&tag, &digest) {
            (_, Some(d)) => t.entry.digest == d.to_string(),
            (Some(tg), None) => &t.tag == tg,
            (None, None) => false,
        })
        .collect();
    let roots: Vec<crate::reference::Digest> = match &digest {
        Some(d) => vec![d.clone()],
        None => doomed
            .iter()
            .filter_map(|t| t.entry.digest.parse().ok())
            .collect(),
    };
    let objects: std::collections::HashMap<ObjectKey, Entry> =
        store.index().objects().into_iter().collect();
    if doomed.is_empty()
        && !roots
            .iter()
            .any(|d| objects.contains_key(&ObjectKey::Manifest(d.clone())))
    {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "nothing cached for {registry}/{repository}{} (see regcache ls)",
                match (&tag, &digest) {
                    (_, Some(d)) => format!("@{d}"),
                    (Some(t), None) => format!(":{t}"),
                    (None, None) => String::new(),
                }
            ),
        ));
    }
    let mut removed = Removed::default();
    for t in &doomed {
        store.remove_tag(&t.registry, &t.repository, &t.tag)?;
        removed.tags.push(t.reference());
    }
    // What every remaining tag still needs is kept. The tags are read again, not derived from
    // the list above: beside a serving mirror, a tag it recorded meanwhile must keep its content.
    let mut keep = std::collections::HashSet::new();
    for t in store.tags() {
        if let Ok(d) = t.entry.digest.parse() {
            references(store, &d, 0, &mut keep);
        }
    }
    let mut target = std::collections::HashSet::new();
    for d in &roots {
        references(store, d, 0, &mut target);
    }
    for key in target {
        let Some(entry) = objects.get(&key) else {
            continue;
        };
        if keep.contains(&key) {
            removed.shared += 1;
            continue;
        }
        store.index().remove(&key);
        store.unlink(&key, entry)?;
        removed.objects += 1;
        removed.bytes += entry.disk;
    }
    Ok(removed)
}

/// `[registry/]repository[:tag|@digest]` → (registry, repository, tag, digest), Docker's way:
/// no registry means `default_registry` (and a one-part Docker Hub name gets `library/`); no
/// tag or digest means `latest`.
fn parse_image(
    image: &str,
    default_registry: &str,
) -> Result<
    (
        String,
        String,
        Option<String>,
        Option<crate::reference::Digest>,
    ),
    String,
> {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (
            r,
            Some(
                d.parse::<crate::reference::Digest>()
                    .map_err(|e| format!("{image:?}: {e} (write IMAGE@sha256:<64 hex>)"))?,
            ),
        ),
        None => (image, None),
    };
    let (path, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_owned())),
        _ => (rest, None),
    };
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_owned()),
        _ => tag,
    };
    // A first component with a `.` or `:` (or `localhost`) is a registry, as Docker reads it.
    let (registry, name) = match path.split_once('/') {
        Some((first, name))
            if (first.contains('.') || first.contains(':') || first == "localhost")
                && crate::reference::is_registry_name(first) =>
        {
            (first.to_owned(), name.to_owned())
        }
        _ => (default_registry.to_owned(), path.to_owned()),
    };
    let name = crate::reference::canonical_name(&registry, name);
    if !crate::reference::is_valid_name(&name) {
        return Err(format!(
            "{image:?}: {name:?} is not a repository name (lowercase, e.g. library/alpine or ghcr.io/org/app)"
        ));
    }
    if let Some(t) = &tag {
        if !crate::reference::is_valid_tag(t) {
            return Err(format!("{image:?}: {t:?} is not a tag"));
        }
    }
    Ok((registry, name, tag, digest))
}
