//! Freshness policy: how long a tag's answer is trusted, which tags are immutable, and how old
//! a stale answer may be, per registry and per repository pattern.
//!
//! Resolution for `registry/repository:tag`, each value taken from the first place that sets it:
//! 1. the first `[[registries."<registry>".policy]]` whose `repositories` pattern matches the
//!    repository (in file order),
//! 2. the registry's own `tag_ttl` / `immutable_tags` / `max_stale`,
//! 3. the top-level keys of the same names (`tag_ttl` defaults to `0s`: every pull of a tag
//!    revalidates it with a HEAD, which Docker Hub does not count; `immutable_tags` to none,
//!    `max_stale` to unbounded).
//!
//! Patterns are globs (the `globset` crate's syntax): `*` matches within one path segment
//! (`library/*` matches `library/alpine`, not `library/a/b`), `**` across segments, `?` one
//! character, `[abc]` a class, `{a,b}` alternatives. Tags contain no `/`, so `v*.*.*` matches
//! `v1.2.3` and `v1.2.3-rc1`.
//!
//! Digest references are immutable by construction and never revalidated whatever the policy.

use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Globs as written and compiled. Equal when the written patterns are equal.
#[derive(Clone, Default)]
pub struct Patterns {
    /// As written in the file, e.g. `["v*.*.*", "sha256-*"]`.
    written: Vec<String>,
    /// Compiled.
    set: GlobSet,
}

impl Patterns {
    /// Compiles `patterns`.
    ///
    /// Errors: the first pattern that is not a glob, e.g. `"v[1"`: `unclosed character class`.
    pub fn new(patterns: &[String]) -> Result<Patterns, String> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            if p.is_empty() {
                return Err("an empty pattern matches nothing; remove it".to_owned());
            }
            b.add(glob(p)?);
        }
        Ok(Patterns {
            written: patterns.to_vec(),
            set: b.build().map_err(|e| e.to_string())?,
        })
    }

    /// Whether any pattern matches `s`.
    pub fn matches(&self, s: &str) -> bool {
        !self.written.is_empty() && self.set.is_match(s)
    }

    /// The patterns as written.
    pub fn written(&self) -> &[String] {
        &self.written
    }
}

fn glob(p: &str) -> Result<Glob, String> {
    GlobBuilder::new(p)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("{p:?} is not a pattern: {}", e.kind()))
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Patterns) -> bool {
        self.written == other.written
    }
}

impl std::fmt::Debug for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.written.fmt(f)
    }
}

/// Freshness settings of one level (top level, registry, or policy entry); `None`: not set
/// here, the next level decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Freshness {
    /// How long a tag's answer is trusted before it is revalidated (`0s`: every time).
    pub tag_ttl: Option<Duration>,
    /// Tags whose first answer is kept until evicted (never revalidated).
    pub immutable_tags: Option<Patterns>,
    /// Oldest stale answer served while the upstream is unavailable (time since upstream last
    /// confirmed it); older ones are answered with the upstream's error. `None`: unbounded.
    pub max_stale: Option<Duration>,
}

/// One `[[registries."<name>".policy]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositoryPolicy {
    /// Repositories it applies to, e.g. `library/*`.
    pub repositories: Patterns,
    /// What it sets.
    pub freshness: Freshness,
}

/// A registry's whole freshness policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FreshnessPolicy {
    /// The policy entries, first match wins.
    pub repositories: Vec<RepositoryPolicy>,
    /// The registry's own settings.
    pub registry: Freshness,
    /// The top-level settings (every registry's fallback).
    pub global: Freshness,
}

/// What applies to one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagRules {
    /// How long its answer is trusted (zero: revalidated every time).
    pub tag_ttl: Duration,
    /// Its first answer is kept until evicted.
    pub immutable: bool,
    /// Oldest stale answer served (`None`: unbounded).
    pub max_stale: Option<Duration>,
}

impl FreshnessPolicy {
    /// The rules for `repository:tag` (repository canonical, e.g. `library/alpine`).
    pub fn for_tag(&self, repository: &str, tag: &str) -> TagRules {
        let entry = self
            .repositories
            .iter()
            .find(|p| p.repositories.matches(repository))
            .map(|p| &p.freshness);
        let levels = [entry, Some(&self.registry), Some(&self.global)];
        let pick =
            |f: fn(&Freshness) -> Option<Duration>| levels.iter().flatten().find_map(|l| f(l));
        let immutable = levels
            .iter()
            .flatten()
            .find_map(|l| l.immutable_tags.as_ref())
            .is_some_and(|p| p.matches(tag));
        TagRules {
            tag_ttl: pick(|l| l.tag_ttl).unwrap_or(Duration::ZERO),
            immutable,
            max_stale: pick(|l| l.max_stale),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Patterns {
        Patterns::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn first_matching_entry_then_registry_then_global() {
        let policy = FreshnessPolicy {
            repositories: vec![
                RepositoryPolicy {
                    repositories: pats(&["library/*"]),
                    freshness: Freshness {
                        tag_ttl: Some(Duration::from_secs(3600)),
                        ..Default::default()
                    },
                },
                RepositoryPolicy {
                    repositories: pats(&["library/alpine", "team/**"]),
                    freshness: Freshness {
                        tag_ttl: Some(Duration::from_secs(1)),
                        immutable_tags: Some(pats(&["v*.*.*"])),
                        ..Default::default()
                    },
                },
            ],
            registry: Freshness {
                max_stale: Some(Duration::from_secs(86400)),
                immutable_tags: Some(pats(&["sha256-*"])),
                ..Default::default()
            },
            global: Freshness {
                tag_ttl: Some(Duration::from_secs(300)),
                ..Default::default()
            },
        };
        // The first entry wins for library/alpine (file order), so its TTL is 1 h.
        let r = policy.for_tag("library/alpine", "3.19");
        assert_eq!(r.tag_ttl, Duration::from_secs(3600));
        assert_eq!(r.max_stale, Some(Duration::from_secs(86400)));
        assert!(!r.immutable);
        // `*` stays within a segment: library/a/b falls through to the registry and global.
        let r = policy.for_tag("library/a/b", "x");
        assert_eq!(r.tag_ttl, Duration::from_secs(300));
        // `**` crosses segments; the entry's immutable_tags replace the registry's.
        let r = policy.for_tag("team/a/b", "v1.2.3");
        assert!(r.immutable);
        assert_eq!(r.tag_ttl, Duration::from_secs(1));
        assert!(!policy.for_tag("team/a", "sha256-abc.sig").immutable);
        assert!(policy.for_tag("other/app", "sha256-abc.sig").immutable);
        assert!(!policy.for_tag("other/app", "latest").immutable);
    }

    #[test]
    fn defaults_revalidate_every_time_and_serve_stale_unbounded() {
        let r = FreshnessPolicy::default().for_tag("library/alpine", "latest");
        assert_eq!(
            r,
            TagRules {
                tag_ttl: Duration::ZERO,
                immutable: false,
                max_stale: None
            }
        );
    }

    #[test]
    fn bad_patterns_are_named() {
        let e = Patterns::new(&["v[1".to_string()]).unwrap_err();
        assert!(e.contains("\"v[1\""), "{e}");
        assert!(Patterns::new(&[String::new()]).is_err());
    }
}
