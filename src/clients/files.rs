//! Writing a client's configuration file without ever losing the user's: the change as a
//! unified diff (`--dry-run`), a backup beside the file, an atomic replace (temp file in the
//! same directory, then rename) that keeps the file's mode and owner.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One file `regcache setup` would write.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The file.
    pub path: PathBuf,
    /// What it holds now (`None`: it does not exist).
    pub old: Option<String>,
    /// What it is to hold.
    pub new: String,
    /// Mode of a new file (an existing file keeps its own).
    pub new_mode: u32,
}

impl Change {
    /// Whether writing it changes anything.
    pub fn is_noop(&self) -> bool {
        self.old.as_deref() == Some(self.new.as_str())
    }

    /// The change as a unified diff (`--- a/PATH`, `+++ b/PATH`, 3 lines of context); empty
    /// when nothing changes.
    pub fn diff(&self) -> String {
        if self.is_noop() {
            return String::new();
        }
        let old = self.old.as_deref().unwrap_or("");
        let shown = self.path.display().to_string();
        let a = if self.old.is_some() {
            format!("a{shown}")
        } else {
            "/dev/null".to_owned()
        };
        similar::TextDiff::from_lines(old, &self.new)
            .unified_diff()
            .context_radius(3)
            .header(&a, &format!("b{shown}"))
            .to_string()
    }

    /// Writes it: the old file is copied to a backup beside it (see [`backup_path`]), the new
    /// content goes to a temp file in the same directory with the old file's mode and owner
    /// (or [`Change::new_mode`]), which is then renamed over the file. Returns the backup's
    /// path, if there was a file to back up; nothing is done when nothing changes.
    ///
    /// Errors: the I/O error, naming the path (the directory cannot be created, no
    /// permission, a full disk); the original file is untouched then.
    pub fn apply(&self) -> std::io::Result<Option<PathBuf>> {
        if self.is_noop() {
            return Ok(None);
        }
        let at = |what: &str, p: &Path, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| at("cannot create", dir, e))?;
        let meta = std::fs::metadata(&self.path).ok();
        let backup = match &meta {
            Some(m) => {
                let b = backup_path(&self.path);
                std::fs::copy(&self.path, &b).map_err(|e| at("cannot back up to", &b, e))?;
                // The backup is the original's: its owner too (as root; otherwise it is ours).
                let _ = std::os::unix::fs::chown(&b, Some(m.uid()), Some(m.gid()));
                Some(b)
            }
            None => None,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".regcache-setup.")
            .tempfile_in(dir)
            .map_err(|e| at("cannot create a temp file in", dir, e))?;
        let mode = meta
            .as_ref()
            .map_or(self.new_mode, |m| m.permissions().mode() & 0o7777);
        let tmp_path = tmp.path().to_owned();
        let f = tmp.as_file_mut();
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| at("cannot set the mode of", &tmp_path, e))?;
        if let Some(m) = &meta {
            // Keep the owner (root may hand a file to another user); not root: it stays ours.
            let _ = std::os::unix::fs::fchown(&*f, Some(m.uid()), Some(m.gid()));
        }
        f.write_all(self.new.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| at("cannot write", &tmp_path, e))?;
        tmp.persist(&self.path)
            .map_err(|e| at("cannot replace", &self.path, e.error))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(backup)
    }
}

/// Where the backup of `path` goes: `<path>.regcache-backup-<unix seconds>` beside it (a
/// `-N` suffix when that exists already). The clients read none of these names
/// (`hosts.toml`, `*.conf` in `registries.conf.d`, `daemon.json`, `buildkitd.toml` only).
pub fn backup_path(path: &Path) -> PathBuf {
    let secs = crate::clients::now_unix_ms() / 1000;
    let base = format!("{}.regcache-backup-{secs}", path.display());
    let mut p = PathBuf::from(&base);
    let mut n = 1;
    while p.exists() {
        p = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    p
}

/// The content of `path`, or `None` when it does not exist.
///
/// Errors: any other I/O error (no permission, not UTF-8), naming the path.
pub fn read_optional(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// `path` under `root` (`/` + `/etc/docker/daemon.json` is itself; a scratch root prefixes it).
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// A path read from a client's config, as seen under `root`: itself when `root` is `/` or it
/// is under `root` already, else `root` + path (so a scratch `--root` never reaches the real
/// `/etc` through a path a config names).
pub fn reroot(root: &Path, path: &Path) -> PathBuf {
    if root == Path::new("/") || path.starts_with(root) || path.is_relative() {
        return path.to_owned();
    }
    under(root, &path.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_keeps_mode_and_backs_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.json");
        std::fs::write(&p, "{}\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let c = Change {
            path: p.clone(),
            old: Some("{}\n".into()),
            new: "{\"a\": 1}\n".into(),
            new_mode: 0o644,
        };
        assert!(c.diff().contains("+{\"a\": 1}"), "{}", c.diff());
        let b = c.apply().unwrap().expect("a backup");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "{}\n");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\": 1}\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // As root, a file handed to another user keeps its owner in the backup too.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
            let b = Change {
                path: p.clone(),
                old: Some("{\"a\": 1}\n".into()),
                new: "{\"a\": 2}\n".into(),
                new_mode: 0o644,
            }
            .apply()
            .unwrap()
            .expect("a backup");
            for f in [&p, &b] {
                assert_eq!(std::fs::metadata(f).unwrap().uid(), 1000, "{}", f.display());
            }
        }
    }
}
