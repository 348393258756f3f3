//! `regcache prefetch IMAGE[:TAG|@DIGEST]...`: warms a cache directory (of a running or a
//! stopped mirror) with whole images — manifests and blobs — for the requested platforms, e.g.
//! to pre-load an edge box before it ships. It goes through the mirror's cache API in-process
//! (no HTTP), so prefetched content is exactly what a pull would have cached.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::BodyExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::body::zero_copy::Delivery;
use crate::cache::{BlobLookup, Origin};
use crate::config::{Config, ServeArgs};
use crate::error::{ApiError, Subject};
use crate::mirror::Mirror;
use crate::reference::{canonical_name, Digest, Reference};

/// Flags of `regcache prefetch`.
#[derive(Debug, Clone, clap::Args)]
pub struct PrefetchArgs {
    /// Images to fetch: `[registry/]name[:tag|@digest]`, e.g. `alpine:3.19`,
    /// `ghcr.io/org/app@sha256:<64 hex>` (the registry must be configured).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    /// Platform(s) to fetch from multi-platform images, `os/arch[/variant]` (repeatable)
    /// [default: linux/<this machine's arch>].
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Vec<String>,
    /// Fetch every platform of multi-platform images.
    #[arg(long, conflicts_with = "platform")]
    pub all_platforms: bool,
    /// Also fetch the referrers (OCI 1.1: signatures, SBOMs, attestations) of every manifest
    /// fetched, their manifests and blobs, and theirs in turn, so the images can be verified
    /// offline.
    #[arg(long)]
    pub with_referrers: bool,
    /// At a registry's rate-limit reserve (`rate_limit_reserve`), stop with an error saying
    /// until when, instead of waiting for the budget to refill (for cron and CI jobs).
    #[arg(long)]
    pub no_wait: bool,
    /// TOML config file (the mirror's; registries, credentials and cache_dir are used) [default:
    /// $REGCACHE_CONFIG, else /etc/regcache/regcache.toml if it exists].
    #[arg(long, value_name = "FILE", env = "REGCACHE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Cache directory [default: as `regcache serve`].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// URL of the default registry's upstream.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// A private host the default registry's redirects may lead to (as `regcache serve`).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub redirect_host: Vec<String>,
}

/// A platform filter: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64` (GOARCH spelling).
    pub arch: String,
    /// e.g. `v8`, when given.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`. Errors: a message naming the value.
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!(
                "platform {s:?} is not os/arch[/variant], e.g. linux/amd64"
            )),
        }
    }

    /// linux/<this machine's architecture in GOARCH spelling>.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: None,
        }
    }

    fn matches(&self, p: &serde_json::Value) -> bool {
        p["os"] == self.os.as_str()
            && p["architecture"] == self.arch.as_str()
            && self.variant.as_deref().is_none_or(|v| p["variant"] == v)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image reference split into registry, repository and reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry name (`docker.io`), or `None` for the default registry.
    pub registry: Option<String>,
    /// Repository name (`library/alpine`; a bare docker.io name is completed by the mirror).
    pub name: String,
    /// Tag or `sha256:...` digest (`latest` when absent).
    pub reference: String,
}

/// Parses `[registry/]name[:tag|@digest]` the way docker does: the first component is a
/// registry when it contains `.` or `:` or is `localhost`.
///
/// Errors: a message naming the reference and what is wrong.
pub fn parse_image(s: &str) -> Result<ImageRef, String> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d.to_string())),
        None => (s, None),
    };
    let (rest, tag) = match rest.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
        _ => (rest, None),
    };
    let (registry, name) = match rest.split_once('/') {
        Some((first, tail))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first.to_string()), tail.to_string())
        }
        _ => (None, rest.to_string()),
    };
    if !crate::reference::is_valid_name(&name) {
        return Err(format!("{s:?}: {name:?} is not a repository name"));
    }
    let reference = match (digest, tag) {
        (Some(d), _) => {
            d.parse::<crate::reference::Digest>()
                .map_err(|e| format!("{s:?}: {e}"))?;
            d
        }
        (None, Some(t)) if crate::reference::is_valid_tag(&t) => t,
        (None, Some(t)) => return Err(format!("{s:?}: {t:?} is not a tag")),
        (None, None) => "latest".into(),
    };
    Ok(ImageRef {
        registry,
        name,
        reference,
    })
}

/// What a prefetch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Images requested.
    pub images: usize,
    /// Manifests (indexes included) fetched or confirmed.
    pub manifests: usize,
    /// Referrers (artifact manifests) fetched or confirmed (`--with-referrers`).
    pub referrers: usize,
    /// Blobs fetched from upstream.
    pub blobs_fetched: usize,
    /// Blobs already cached.
    pub blobs_cached: usize,
    /// Bytes of blobs fetched.
    pub bytes_fetched: u64,
}

/// One image resolved: (label, registry, repository, its blobs with their sizes in bytes).
type Planned = (String, String, String, Vec<(Digest, u64)>);

/// Runs the prefetch. Prints a progress bar on a terminal.
///
/// Errors: a message naming the image and what failed (the first failure stops the run).
pub async fn run(args: &PrefetchArgs) -> Result<Summary, String> {
    let serve = ServeArgs {
        config: args.config.clone(),
        cache_dir: args.cache_dir.clone(),
        upstream: args.upstream.clone(),
        redirect_host: args.redirect_host.clone(),
        ..Default::default()
    };
    let config = Config::load(&serve).map_err(|e| e.to_string())?;
    let platforms: Vec<Platform> = if args.platform.is_empty() {
        vec![Platform::host()]
    } else {
        args.platform
            .iter()
            .map(|p| Platform::parse(p))
            .collect::<Result<_, _>>()?
    };
    let refs: Vec<ImageRef> = args
        .images
        .iter()
        .map(|i| parse_image(i))
        .collect::<Result<_, _>>()?;
    let budget = config.budget;
    let dir = config.cache_dir.clone();
    let mirror = Mirror::open_shared(config)
        .map_err(|e| format!("cache directory {}: {e}", dir.display()))?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:30!} {bytes:>10}/{total_bytes:10} {bar:30} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = Summary::default();
    let mut plan: Vec<Planned> = Vec::new();
    for r in &refs {
        summary.images += 1;
        let registry = r
            .registry
            .as_deref()
            .unwrap_or(mirror.registries().default_registry());
        let Some(up) = mirror.registries().get(registry) else {
            let e = mirror.registries().not_mirrored(registry);
            return Err(format!(
                "{registry}/{}: {}",
                r.name,
                describe(&ApiError::from_select(&e))
            ));
        };
        let name = canonical_name(registry, r.name.clone());
        let from = Origin {
            upstream: up,
            name: &name,
        };
        let label = format!("{registry}/{name}:{}", r.reference);
        bar.set_message(label.clone());
        let (top_digest, top) = manifest(&mirror, from, &r.reference, args.no_wait)
            .await
            .map_err(|e| format!("{label}: {e}"))?;
        summary.manifests += 1;
        let mut fetched = vec![top_digest];
        let top: serde_json::Value = serde_json::from_slice(&top)
            .map_err(|e| format!("{label}: manifest is not JSON: {e}"))?;
        let mut images = Vec::new();
        if let Some(children) = top["manifests"].as_array() {
            for c in children {
                let wanted =
                    args.all_platforms || platforms.iter().any(|p| p.matches(&c["platform"]));
                // Attestation manifests (platform unknown/unknown) are skipped unless --all-platforms.
                if !wanted {
                    continue;
                }
                // Digests from upstream JSON are validated before they go into a path.
                let d: Digest = c["digest"]
                    .as_str()
                    .ok_or_else(|| format!("{label}: index entry without a digest"))?
                    .parse()
                    .map_err(|e| format!("{label}: index entry: {e}"))?;
                let (_, m) = manifest(&mirror, from, &d.to_string(), args.no_wait)
                    .await
                    .map_err(|e| format!("{label}: {d}: {e}"))?;
                summary.manifests += 1;
                fetched.push(d.clone());
                images.push(
                    serde_json::from_slice::<serde_json::Value>(&m)
                        .map_err(|e| format!("{label}: {d}: {e}"))?,
                );
            }
            if images.is_empty() {
                let list: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
                return Err(format!("{label}: no manifest for platform {} in this index (use --platform or --all-platforms)", list.join(", ")));
            }
        } else {
            images.push(top);
        }
        if args.with_referrers {
            let artifacts = referrers(&mirror, from, fetched, args.no_wait)
                .await
                .map_err(|e| format!("{label}: {e}"))?;
            summary.referrers += artifacts.len();
            images.extend(artifacts);
        }
        let mut blobs: Vec<(Digest, u64)> = Vec::new();
        for m in &images {
            for b in
                std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten())
            {
                if let Some(d) = b["digest"].as_str() {
                    let d: Digest = d
                        .parse()
                        .map_err(|e| format!("{label}: manifest entry: {e}"))?;
                    blobs.push((d, b["size"].as_u64().unwrap_or(0)));
                }
            }
        }
        plan.push((label, registry.to_owned(), name, blobs));
    }
    // Every manifest resolved first: the bar's total is known before any blob moves.
    bar.set_length(plan.iter().flat_map(|p| &p.3).map(|(_, s)| s).sum());
    for (label, registry, name, blobs) in plan {
        let up = mirror.registries().get(&registry).expect("resolved above");
        let from = Origin {
            upstream: up,
            name: &name,
        };
        bar.set_message(label.clone());
        for (d, size) in blobs {
            let cached = blob(&mirror, from, &d, &bar)
                .await
                .map_err(|e| format!("{label}: blob {d}: {e}"))?;
            if cached {
                summary.blobs_cached += 1;
            } else {
                summary.blobs_fetched += 1;
                summary.bytes_fetched += size;
            }
        }
    }
    bar.finish_and_clear();
    if !budget.is_unbounded() {
        let s = mirror.cache().store().clone();
        let _ =
            tokio::task::spawn_blocking(move || crate::cache::eviction::evict_once(&s, &budget))
                .await;
    }
    Ok(summary)
}

/// How deep `--with-referrers` follows referrers of referrers (a signature of an attestation of
/// an image is depth 2).
const REFERRER_DEPTH: usize = 3;

/// The referrer manifests of `subjects` (and theirs, to [`REFERRER_DEPTH`]), each fetched into
/// the cache with the referrers answer that lists it. A registry without the referrers API
/// adds nothing (its tag-schema signatures are ordinary tags: name them to prefetch them).
async fn referrers(
    mirror: &Mirror,
    from: Origin<'_>,
    mut subjects: Vec<Digest>,
    no_wait: bool,
) -> Result<Vec<serde_json::Value>, String> {
    let mut seen: std::collections::HashSet<Digest> = subjects.iter().cloned().collect();
    let mut out = Vec::new();
    for _ in 0..REFERRER_DEPTH {
        let mut next = Vec::new();
        for subject in subjects {
            let kind = crate::cache::listings::ListingKind::Referrers {
                subject: subject.clone(),
                n: None,
                last: None,
            };
            let l = mirror.cache().listing(from, &kind).await.map_err(|e| {
                format!(
                    "referrers of {subject}: {}",
                    describe(&ApiError::from_cache(&e, Subject::Manifest))
                )
            })?;
            if l.stored.status != 200 {
                continue;
            }
            let index: serde_json::Value = serde_json::from_str(&l.stored.body)
                .map_err(|e| format!("referrers of {subject}: not JSON: {e}"))?;
            for r in index["manifests"].as_array().into_iter().flatten() {
                let d: Digest = r["digest"]
                    .as_str()
                    .ok_or_else(|| format!("referrers of {subject}: an entry without a digest"))?
                    .parse()
                    .map_err(|e| format!("referrers of {subject}: {e}"))?;
                if !seen.insert(d.clone()) {
                    continue;
                }
                let (_, m) = manifest(mirror, from, &d.to_string(), no_wait)
                    .await
                    .map_err(|e| format!("referrer {d}: {e}"))?;
                out.push(
                    serde_json::from_slice::<serde_json::Value>(&m)
                        .map_err(|e| format!("referrer {d}: {e}"))?,
                );
                next.push(d);
            }
        }
        subjects = next;
    }
    Ok(out)
}

/// A manifest's digest and bytes by tag or digest string, through the cache (fetched and
/// stored when not cached, as a pull would).
async fn manifest(
    mirror: &Mirror,
    from: Origin<'_>,
    reference: &str,
    no_wait: bool,
) -> Result<(Digest, Bytes), String> {
    let reference = if reference.contains(':') {
        Reference::Digest(reference.parse().map_err(|e| format!("{e}"))?)
    } else {
        Reference::Tag(reference.to_string())
    };
    wait_for_budget(mirror, from, &reference, no_wait).await?;
    match mirror.cache().manifest(from, &reference).await {
        Ok(a) => Ok((a.digest, a.manifest.bytes)),
        Err(e) => Err(describe(&ApiError::from_cache(&e, Subject::Manifest))),
    }
}

/// Pauses while asking for `reference` would spend the registry's rate-limit budget below
/// `rate_limit_reserve` (see [`crate::upstream::budget`]): a manifest that is not cached costs
/// a counted GET; a cached one costs nothing (at the reserve, the cache serves a cached tag
/// without revalidating it). Says why and until when on stderr.
///
/// Errors: `no_wait` and the budget is at the reserve (the message says until when).
async fn wait_for_budget(
    mirror: &Mirror,
    from: Origin<'_>,
    reference: &Reference,
    no_wait: bool,
) -> Result<(), String> {
    let governor = from.upstream.governor();
    while let Some(b) = governor.at_reserve() {
        if mirror.cache().has_manifest(from, reference) {
            return Ok(());
        }
        let wait = b.refills_in();
        if no_wait {
            return Err(format!(
                "{} rate-limit budget is down to the reserve ({} of {} left, rate_limit_reserve = {}); whole again by {} at the latest: run again then, or without --no-wait to wait",
                from.upstream.registry(),
                b.remaining,
                b.limit,
                governor.reserve(),
                humantime::format_rfc3339_seconds(b.refills_at()),
            ));
        }
        eprintln!(
            "prefetch: {} rate-limit budget is down to the reserve ({} of {} left, rate_limit_reserve = {}); paused until {} (in {}), when it is whole again at the latest. Clients' pulls of uncached content still go upstream meanwhile.",
            from.upstream.registry(),
            b.remaining,
            b.limit,
            governor.reserve(),
            humantime::format_rfc3339_seconds(b.refills_at()),
            humantime::format_duration(std::time::Duration::from_secs(wait.as_secs().max(1))),
        );
        tokio::time::sleep(wait).await;
        eprintln!(
            "prefetch: {} rate-limit window passed; going on",
            from.upstream.registry()
        );
    }
    Ok(())
}

/// Fills a blob into the cache unless it is there; returns whether it was cached already. The
/// bytes filled are counted on `bar`.
async fn blob(
    mirror: &Mirror,
    from: Origin<'_>,
    digest: &Digest,
    bar: &ProgressBar,
) -> Result<bool, String> {
    let lookup = mirror
        .cache()
        .blob(digest, from)
        .map_err(|e| describe(&ApiError::from_cache(&e.into(), Subject::Blob)))?;
    let f = match lookup {
        BlobLookup::Hit(c) => {
            bar.inc(c.len());
            return Ok(true);
        }
        BlobLookup::Filling(f) => f,
    };
    f.len()
        .await
        .map_err(|e| describe(&ApiError::from_fill(&e, digest)))?;
    let mut body = f.body(None, Delivery::copy());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("download broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            bar.inc(data.len() as u64);
        }
    }
    Ok(false)
}

/// An error as the mirror would answer it: `<status> <message>`.
fn describe(e: &ApiError) -> String {
    format!("{} {}", e.status, e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let r = parse_image("alpine").unwrap();
        assert_eq!(
            (r.registry, r.name.as_str(), r.reference.as_str()),
            (None, "alpine", "latest")
        );
        let r = parse_image("docker.io/library/alpine:3.19").unwrap();
        assert_eq!(
            (r.registry.as_deref(), r.name.as_str(), r.reference.as_str()),
            (Some("docker.io"), "library/alpine", "3.19")
        );
        let r = parse_image("localhost:5000/a/b@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
        assert_eq!(r.registry.as_deref(), Some("localhost:5000"));
        assert!(r.reference.starts_with("sha256:"));
        assert!(parse_image("UPPER/case").is_err());
        assert!(parse_image("a@sha256:zz").is_err());
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert!(p.matches(
            &serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
        ));
        assert!(!p.matches(
            &serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v7"})
        ));
        assert!(Platform::parse("linux").is_err());
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
    }
}
