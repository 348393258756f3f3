//! The freshness keys of the file (`tag_ttl`, `immutable_tags`, `max_stale` at the top level,
//! per registry and per `[[registries."<name>".policy]]`) and the rate-limit reserve, resolved
//! into [`FreshnessPolicy`] (see [`crate::cache::policy`] for what they mean).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{de_duration, ConfigError};
use crate::cache::policy::{Freshness, FreshnessPolicy, Patterns, RepositoryPolicy};

/// Default `rate_limit_reserve`: requests left of a registry's reported rate-limit budget at
/// which prefetch pauses and tag revalidation backs off (a tenth of Docker Hub's anonymous 100).
pub const DEFAULT_RATE_LIMIT_RESERVE: u64 = 10;

/// One `[[registries."<name>".policy]]` table.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// `repositories`: a glob or a list of globs over canonical repository names
    /// (`"library/*"`, `["team/**", "tools/ci"]`).
    #[serde(default, deserialize_with = "de_patterns")]
    pub repositories: Option<Vec<String>>,
    /// `tag_ttl`: for these repositories.
    #[serde(default, deserialize_with = "de_duration")]
    pub tag_ttl: Option<Duration>,
    /// `immutable_tags`: for these repositories (replacing the registry's list).
    #[serde(default, deserialize_with = "de_patterns")]
    pub immutable_tags: Option<Vec<String>>,
    /// `max_stale`: for these repositories.
    #[serde(default, deserialize_with = "de_duration")]
    pub max_stale: Option<Duration>,
}

/// A glob or a list of globs.
pub(super) fn de_patterns<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    use serde::de::Error;
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(Some(vec![s])),
        toml::Value::Array(a) => a
            .into_iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!(
                    "expected quoted patterns such as [\"v*.*.*\"], found a {}",
                    other.type_str()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(D::Error::custom(format!(
            "expected a quoted pattern or a list of them, e.g. [\"v*.*.*\"], found a {}",
            other.type_str()
        ))),
    }
}

fn level(
    key: &'static str,
    at: &str,
    tag_ttl: Option<Duration>,
    immutable_tags: Option<&Vec<String>>,
    max_stale: Option<Duration>,
) -> Result<Freshness, ConfigError> {
    let immutable_tags = immutable_tags
        .map(|p| Patterns::new(p))
        .transpose()
        .map_err(|m| ConfigError::Invalid {
            key,
            message: format!("{at}{m}"),
        })?;
    if max_stale.is_some_and(|d| d.is_zero()) {
        return Err(ConfigError::Invalid {
            key: "max_stale",
            message: format!("{at}0s would never serve a stale answer, so an upstream outage fails every tag pull; leave it out for no bound, or write e.g. \"7d\""),
        });
    }
    Ok(Freshness {
        tag_ttl,
        immutable_tags,
        max_stale,
    })
}

/// The top-level level (`tag_ttl` from the flags or the file).
///
/// Errors: a pattern that is not a glob, `max_stale = "0s"`.
pub fn global(
    tag_ttl: Duration,
    immutable_tags: Option<&Vec<String>>,
    max_stale: Option<Duration>,
) -> Result<Freshness, ConfigError> {
    level(
        "immutable_tags",
        "",
        Some(tag_ttl),
        immutable_tags,
        max_stale,
    )
}

/// One registry's policy over `global`.
///
/// Errors: a bad pattern or a policy entry without `repositories`, naming the registry and the
/// entry (`[[registries."docker.io".policy]] #2`).
pub fn registry(
    name: &str,
    own: &super::RegistryFile,
    global: &Freshness,
) -> Result<FreshnessPolicy, ConfigError> {
    let at = format!("[registries.\"{name}\"]: ");
    let registry = level(
        "registries.<name>.immutable_tags",
        &at,
        own.tag_ttl,
        own.immutable_tags.as_ref(),
        own.max_stale,
    )?;
    let entries = own.policy.as_deref().unwrap_or_default();
    let mut repositories = Vec::new();
    for (i, p) in entries.iter().enumerate() {
        let at = format!("[[registries.\"{name}\".policy]] #{}: ", i + 1);
        let invalid = |message: String| ConfigError::Invalid {
            key: "registries.<name>.policy",
            message,
        };
        let Some(repos) = &p.repositories else {
            return Err(invalid(format!(
                "{at}no repositories; write e.g. repositories = \"library/*\""
            )));
        };
        if repos.is_empty() {
            return Err(invalid(format!(
                "{at}repositories = [] matches no repository; list some, e.g. repositories = [\"library/*\"], or remove the entry"
            )));
        }
        let repos = Patterns::new(repos).map_err(|m| invalid(format!("{at}repositories: {m}")))?;
        if p.tag_ttl.is_none() && p.immutable_tags.is_none() && p.max_stale.is_none() {
            return Err(invalid(format!(
                "{at}sets nothing; give it tag_ttl, immutable_tags or max_stale"
            )));
        }
        let freshness = level(
            "registries.<name>.policy",
            &at,
            p.tag_ttl,
            p.immutable_tags.as_ref(),
            p.max_stale,
        )?;
        repositories.push(RepositoryPolicy {
            repositories: repos,
            freshness,
        });
    }
    Ok(FreshnessPolicy {
        repositories,
        registry,
        global: global.clone(),
    })
}
