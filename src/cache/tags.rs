//! Tags: the last known answer of each `registry/name:tag`, one small JSON file each, at
//! `<cache_dir>/tags/<registry>/<name>/_tags/<tag>`.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::index::unix_now;
use crate::cache::store::{remove_if_exists, Store};

/// A tag's last known answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TagEntry {
    /// Digest the tag pointed to, `sha256:<64 hex>`.
    pub digest: String,
    /// Media type of that manifest.
    pub media_type: String,
    /// When upstream last confirmed it, seconds since the Unix epoch.
    pub checked: u64,
}

impl TagEntry {
    /// Time since upstream last confirmed this answer (zero if the clock went backwards).
    pub fn age(&self) -> Duration {
        Duration::from_secs(unix_now().saturating_sub(self.checked))
    }
}

impl Store {
    fn tag_path(&self, registry: &str, name: &str, tag: &str) -> PathBuf {
        self.root()
            .join("tags")
            .join(registry)
            .join(name)
            .join("_tags")
            .join(tag)
    }

    /// The last known answer for a tag, or `None` (also for an unreadable entry).
    pub fn read_tag(&self, registry: &str, name: &str, tag: &str) -> Option<TagEntry> {
        let raw = fs::read(self.tag_path(registry, name, tag)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Records a tag's answer.
    pub fn write_tag(
        &self,
        registry: &str,
        name: &str,
        tag: &str,
        entry: &TagEntry,
    ) -> io::Result<()> {
        let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
        self.write_atomic(&self.tag_path(registry, name, tag), &json)
            .map(|_| ())
    }

    /// Forgets a tag (upstream says it no longer exists).
    pub fn remove_tag(&self, registry: &str, name: &str, tag: &str) -> io::Result<()> {
        remove_if_exists(&self.tag_path(registry, name, tag))
    }

    /// Every cached tag, sorted by registry, repository and tag (unreadable entries skipped).
    pub fn tags(&self) -> Vec<CachedTag> {
        let root = self.root().join("tags");
        let mut found = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for ent in entries.flatten() {
                let p = ent.path();
                match ent.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(t) if t.is_file() => {
                        if let Some(tag) = parse_tag_path(&root, &p) {
                            found.push(tag);
                        }
                    }
                    _ => {}
                }
            }
        }
        found.sort_by(|a, b| {
            (&a.registry, &a.repository, &a.tag).cmp(&(&b.registry, &b.repository, &b.tag))
        });
        found
    }

    /// Removes every tag entry pointing at one of `digests` (their manifests were evicted).
    /// Returns how many were removed.
    pub fn drop_tags_pointing_at(&self, digests: &std::collections::HashSet<String>) -> usize {
        self.tags()
            .into_iter()
            .filter(|t| digests.contains(&t.entry.digest))
            .filter(|t| fs::remove_file(&t.path).is_ok())
            .count()
    }
}

/// One cached tag: `registry/repository:tag` and its last known answer.
#[derive(Debug, Clone)]
pub struct CachedTag {
    /// The registry clients name, e.g. `docker.io`.
    pub registry: String,
    /// The repository, e.g. `library/alpine`.
    pub repository: String,
    /// The tag, e.g. `3.19`.
    pub tag: String,
    /// Its last known answer.
    pub entry: TagEntry,
    /// The entry's file.
    pub path: PathBuf,
}

impl CachedTag {
    /// `registry/repository:tag`, e.g. `docker.io/library/alpine:3.19`.
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// `<root>/<registry>/<name...>/_tags/<tag>` → the tag, read.
fn parse_tag_path(root: &std::path::Path, p: &std::path::Path) -> Option<CachedTag> {
    let rel = p.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rel.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
    let (tag, rest) = parts.split_last()?;
    let (marker, rest) = rest.split_last()?;
    let (registry, name) = rest.split_first()?;
    if *marker != "_tags" || name.is_empty() {
        return None;
    }
    let entry = serde_json::from_slice(&fs::read(p).ok()?).ok()?;
    Some(CachedTag {
        registry: registry.to_string(),
        repository: name.join("/"),
        tag: tag.to_string(),
        entry,
        path: p.to_path_buf(),
    })
}
