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

    /// Removes every tag entry pointing at one of `digests` (their manifests were evicted).
    /// Returns how many were removed.
    pub fn drop_tags_pointing_at(&self, digests: &std::collections::HashSet<String>) -> usize {
        let mut removed = 0;
        let mut stack = vec![self.root().join("tags")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for ent in entries.flatten() {
                let p = ent.path();
                match ent.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(t) if t.is_file() => {
                        let hit = fs::read(&p)
                            .ok()
                            .and_then(|raw| serde_json::from_slice::<TagEntry>(&raw).ok())
                            .is_some_and(|e| digests.contains(&e.digest));
                        if hit && fs::remove_file(&p).is_ok() {
                            removed += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        removed
    }
}
