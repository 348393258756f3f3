//! Spending a registry's rate-limit budget on purpose (the governor) and the freshness policy:
//! per-repository `tag_ttl`, `immutable_tags`, `max_stale`; counted requests visible.
//!
//! The fake upstream keeps a Docker-Hub-like budget (`Faults::rate_budget`: every manifest GET
//! in the window counts, HEADs are free and report what is left, a GET with nothing left is
//! answered 429), with a window of seconds instead of 6 hours.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The value of the metric line starting with `line` (`name{labels}`), or 0 when absent.
fn metric(text: &str, line: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line) && l[line.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn metrics(m: &Mirror) -> String {
    String::from_utf8(get(&m.url("/metrics")).await.bytes().to_vec()).unwrap()
}

/// A config file for a mirror of `up` (docker.io), with `extra` top-level keys and
/// `registry_extra` in the registry's table, then `tail` (e.g. policy tables).
fn config(up: &FakeUpstream, extra: &str, registry_extra: &str, tail: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n{extra}\n[registries.\"docker.io\"]\nurl = \"{}\"\nredirect_hosts = [\"{}\"]\n{registry_extra}\n{tail}\n",
        up.url(),
        up.cdn
    )
}

/// At the reserve, a cached tag is served without revalidation (no HEAD, stale, counted as
/// `rate_budget`), while a pull of an uncached image still goes upstream; `/metrics` and
/// `regcache status` show the budget, the reserve state and when it refills; once the window
/// has passed, tags are revalidated again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_backs_off_at_the_reserve_while_cold_pulls_go_upstream() {
    let up = FakeUpstream::start(300).await;
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        up.add_image(&format!("library/{name}"), "latest", 100, 70 + i as u64);
    }
    up.set_faults(Faults {
        rate_budget: Some((4, 3)),
        ..Default::default()
    });
    let m = Mirror::start_with_config(&config(
        &up,
        "tag_ttl = \"0s\"\nrate_limit_reserve = 2",
        "",
        "",
    ))
    .await;
    let started = Instant::now();
    let pull = |name: &str| get_owned(m.url(&format!("/v2/library/{name}/manifests/latest")));
    assert_eq!(pull("a").await.status, 200);
    let t = metrics(&m).await;
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_ratelimit_remaining{registry=\"docker.io\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_ratelimit_at_reserve{registry=\"docker.io\"}"
        ),
        0.0
    );
    assert_eq!(
        pull("b").await.status,
        200,
        "remaining 2: at the reserve now"
    );
    let heads = n(&up.counters.manifest_head);
    // A cached tag: no revalidation while at the reserve.
    for _ in 0..3 {
        assert_eq!(pull("a").await.status, 200);
    }
    assert_eq!(
        n(&up.counters.manifest_head),
        heads,
        "no HEAD at the reserve"
    );
    // An uncached image still goes upstream.
    assert_eq!(
        pull("c").await.status,
        200,
        "a cold pull still goes upstream"
    );
    assert_eq!(n(&up.counters.manifest_get), 3);
    let t = metrics(&m).await;
    assert_eq!(
        metric(&t, "regcache_stale_answers_total{cause=\"rate_budget\"}"),
        3.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_ratelimit_remaining{registry=\"docker.io\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_ratelimit_limit{registry=\"docker.io\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_ratelimit_reserve{registry=\"docker.io\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_ratelimit_at_reserve{registry=\"docker.io\"}"
        ),
        1.0
    );
    let refill = metric(
        &t,
        "regcache_upstream_ratelimit_refill_seconds{registry=\"docker.io\"}",
    );
    assert!((1.0..=3.0).contains(&refill), "refill in {refill}s: {t}");
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_manifest_requests_total{registry=\"docker.io\",method=\"GET\"}"
        ),
        3.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_manifest_requests_total{registry=\"docker.io\",method=\"HEAD\"}"
        ),
        0.0,
        "{t}"
    );
    // `regcache status` says it too.
    let status = regcache::live::LiveStatus::of(&m.app);
    let text = status.render();
    assert!(
        text.contains("rate limit 1 left of 4, whole again within"),
        "{text}"
    );
    assert!(text.contains("AT THE RESERVE (2)"), "{text}");
    assert!(text.contains("3 manifest GETs counted"), "{text}");
    // The window passes: revalidation resumes (and the fake's budget has refilled).
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_millis(300),
    )
    .await;
    assert_eq!(pull("a").await.status, 200);
    assert_eq!(
        n(&up.counters.manifest_head),
        heads + 1,
        "revalidated after the window"
    );
    let t = metrics(&m).await;
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_ratelimit_at_reserve{registry=\"docker.io\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            &t,
            "regcache_upstream_ratelimit_remaining{registry=\"docker.io\"}"
        ),
        4.0
    );
}

async fn get_owned(url: String) -> Got {
    get(&url).await
}

/// `regcache prefetch` pauses when the budget reaches the reserve, says until when, and goes on
/// once the window refills: every image is prefetched and the registry never answers 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_pauses_at_the_reserve_until_the_window_refills() {
    let up = FakeUpstream::start(300).await;
    let names: Vec<String> = (0..5).map(|i| format!("library/p{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        up.add_image(name, "v1", 1000, 80 + i as u64);
    }
    up.set_faults(Faults {
        rate_budget: Some((5, 2)),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("regcache.toml");
    std::fs::write(&cfg, config(&up, "rate_limit_reserve = 2", "", "")).unwrap();
    let t = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("prefetch")
        .args(names.iter().map(|n| format!("{n}:v1")))
        .arg("--config")
        .arg(&cfg)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .output()
        .await
        .unwrap();
    let took = t.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("prefetched 5 images: 5 manifests"),
        "{stdout}"
    );
    assert!(
        stderr.contains("docker.io rate-limit budget is down to the reserve (2 of 5 left, rate_limit_reserve = 2); paused until"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rate-limit window passed; going on"),
        "{stderr}"
    );
    assert!(took >= Duration::from_millis(1500), "paused: {took:?}");
    assert_eq!(n(&up.counters.manifest_get), 5, "no 429, no retry");

    // --no-wait: at the reserve it stops with an error saying until when, at once.
    let more: Vec<String> = (5..9).map(|i| format!("library/p{i}")).collect();
    for (i, name) in more.iter().enumerate() {
        up.add_image(name, "v1", 1000, 90 + i as u64);
    }
    let t = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("prefetch")
        .arg("--no-wait")
        .args(more.iter().map(|n| format!("{n}:v1")))
        .arg("--config")
        .arg(&cfg)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rate-limit budget is down to the reserve")
            && stderr.contains("run again then, or without --no-wait to wait"),
        "{stderr}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "did not wait: {:?}",
        t.elapsed()
    );
}

/// `immutable_tags`: the first answer of a matching tag is kept, never revalidated, even with
/// `tag_ttl = "0s"`; other tags are revalidated as before; digests never are.
#[tokio::test]
async fn immutable_tags_cost_nothing_after_the_first_pull() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/app", "v1.2.3", 100, 90);
    up.add_image("library/app", "latest", 100, 91);
    let m = Mirror::start_with_config(&config(
        &up,
        "tag_ttl = \"0s\"",
        "immutable_tags = [\"v*.*.*\", \"sha256-*\"]",
        "",
    ))
    .await;
    for _ in 0..5 {
        let r = get(&m.url("/v2/library/app/manifests/v1.2.3")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    }
    assert_eq!(n(&up.counters.manifest_get), 1, "the first pull only");
    assert_eq!(n(&up.counters.manifest_head), 0, "never revalidated");
    // Retagged upstream: the mirror keeps the first answer (that is what immutable means).
    let other = up.add_image("library/app", "v1.2.3", 100, 92);
    let r = get(&m.url("/v2/library/app/manifests/v1.2.3")).await;
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    assert_ne!(other.manifest_digest, img.manifest_digest);
    for _ in 0..3 {
        assert_eq!(
            get(&m.url("/v2/library/app/manifests/latest")).await.status,
            200
        );
    }
    assert_eq!(
        n(&up.counters.manifest_head),
        2,
        "latest is revalidated (tag_ttl 0s)"
    );
}

/// `[[registries."docker.io".policy]]`: a repository pattern gets its own `tag_ttl` (first
/// match wins); other repositories keep the registry's (here the top-level `0s`).
#[tokio::test]
async fn a_policy_gives_matching_repositories_their_own_tag_ttl() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/base", "latest", 100, 93);
    up.add_image("team/app", "latest", 100, 94);
    let policy = "[[registries.\"docker.io\".policy]]\nrepositories = \"library/*\"\ntag_ttl = \"1h\"\n\n[[registries.\"docker.io\".policy]]\nrepositories = [\"library/base\", \"team/**\"]\ntag_ttl = \"0s\"\n";
    let m = Mirror::start_with_config(&config(&up, "tag_ttl = \"0s\"", "", policy)).await;
    for _ in 0..5 {
        assert_eq!(
            get(&m.url("/v2/library/base/manifests/latest"))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        (n(&up.counters.manifest_get), n(&up.counters.manifest_head)),
        (1, 0),
        "library/* is trusted for 1h: the 2nd..5th pulls ask nothing"
    );
    // `base` is short for `library/base`: the policy sees canonical names.
    assert_eq!(get(&m.url("/v2/base/manifests/latest")).await.status, 200);
    assert_eq!(n(&up.counters.manifest_head), 0);
    for _ in 0..3 {
        assert_eq!(
            get(&m.url("/v2/team/app/manifests/latest")).await.status,
            200
        );
    }
    assert_eq!(
        n(&up.counters.manifest_head),
        2,
        "team/app: revalidated every time"
    );
}

/// `max_stale`: during an outage a cached tag is served stale only while it is younger than
/// `max_stale` (time since upstream last confirmed it); after that the pull fails with the
/// upstream's error instead of serving an arbitrarily old answer.
#[tokio::test]
async fn max_stale_bounds_how_old_a_stale_answer_may_be() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/old", "latest", 100, 95);
    let m = Mirror::start_with_config(&config(&up, "tag_ttl = \"0s\"\nmax_stale = \"1s\"", "", ""))
        .await;
    let url = m.url("/v2/library/old/manifests/latest");
    assert_eq!(get(&url).await.status, 200);
    up.set_faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    assert_eq!(get(&url).await.status, 200, "young enough: served stale");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(&url).await;
    assert_eq!(r.status, 503, "older than max_stale: the upstream's error");
    up.set_faults(Faults::default());
    assert_eq!(get(&url).await.status, 200, "back once the upstream is");
}

/// Bad policy keys are named with their table and the fix; nothing starts.
#[test]
fn bad_policies_are_refused_with_the_table_and_fix() {
    let check = |toml: &str| -> String {
        let (ok, stderr) = check_config(toml);
        assert!(!ok, "{toml}");
        stderr
    };
    let e = check("[[registries.\"docker.io\".policy]]\ntag_ttl = \"1h\"\n");
    assert!(e.contains("[[registries.\"docker.io\".policy]] #1: no repositories; write e.g. repositories = \"library/*\""), "{e}");
    // An empty list would match nothing: the entry would silently do nothing.
    let e = check("[[registries.\"docker.io\".policy]]\nrepositories = []\ntag_ttl = \"1h\"\n");
    assert!(
        e.contains(
            "[[registries.\"docker.io\".policy]] #1: repositories = [] matches no repository"
        ),
        "{e}"
    );
    let e = check("[[registries.\"docker.io\".policy]]\nrepositories = \"library/*\"\n");
    assert!(e.contains("sets nothing"), "{e}");
    let e = check("[registries.\"docker.io\"]\nimmutable_tags = [\"v[1\"]\n");
    assert!(e.contains("\"v[1\" is not a pattern"), "{e}");
    let e = check("max_stale = \"0s\"\n");
    assert!(e.contains("would never serve a stale answer"), "{e}");
    let e = check("immutable_tags = \"v*\"\nrate_limit_reserve = \"10\"\n");
    assert!(e.contains("rate_limit_reserve"), "{e}");
}

/// The figure in README.md ("Freshness and rate limits"): counted upstream manifest GETs for a
/// scripted day of a CI fleet, with the default settings and with a policy. Scaled: one second
/// stands for one hour, so the day takes 24 s (run it by name:
/// `cargo test --release --test freshness -- --ignored --nocapture ci_fleet_day`).
///
/// 50 CI runs over the day each pull the same 10 images by tag: 4 floating tags (`latest`-style,
/// retagged every 6 hours) and 6 full version tags (`1.2.3`), 3 of which are rebuilt and
/// re-pushed under the same tag once, at noon (as official images are when their base updates).
/// The policy: `immutable_tags = ["*.*.*"]` and `tag_ttl = "1h"` for `library/*`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes 24 s; prints the figure for README.md"]
async fn ci_fleet_day() {
    const RUNS: u32 = 50;
    let hour = Duration::from_secs(1);
    let day = hour * 24;
    let floating: Vec<String> = (0..4).map(|i| format!("library/float{i}")).collect();
    let versioned: Vec<String> = (0..6).map(|i| format!("library/ver{i}")).collect();
    let scenario = |policy: bool| {
        let (floating, versioned) = (floating.clone(), versioned.clone());
        async move {
            let up = FakeUpstream::start(86400).await;
            let mut seed = 1000;
            let mut push = |up: &FakeUpstream, name: &str, tag: &str| {
                seed += 1;
                up.add_image(name, tag, 100, seed);
            };
            for n in &floating {
                push(&up, n, "latest");
            }
            for n in &versioned {
                push(&up, n, "1.2.3");
            }
            let (top, policy_table) = match policy {
                // "1h" in the scaled day.
                true => (
                    "tag_ttl = \"0s\"",
                    "immutable_tags = [\"*.*.*\"]\n[[registries.\"docker.io\".policy]]\nrepositories = \"library/*\"\ntag_ttl = \"1s\"\n",
                ),
                false => ("", ""),
            };
            let m = Mirror::start_with_config(&config(&up, top, policy_table, "")).await;
            let start = Instant::now();
            let (mut retags_done, mut rebuilt) = (0, false);
            for run in 0..RUNS {
                let at = day * run / RUNS;
                tokio::time::sleep(at.saturating_sub(start.elapsed())).await;
                // Floating tags move every 6 hours; three version tags are rebuilt at noon.
                while retags_done < at.as_secs() / (6 * hour.as_secs()) {
                    for n in &floating {
                        push(&up, n, "latest");
                    }
                    retags_done += 1;
                }
                if !rebuilt && at >= hour * 12 {
                    for n in &versioned[..3] {
                        push(&up, n, "1.2.3");
                    }
                    rebuilt = true;
                }
                for n in &floating {
                    let r = get(&m.url(&format!("/v2/{n}/manifests/latest"))).await;
                    assert_eq!(r.status, 200);
                }
                for n in &versioned {
                    let r = get(&m.url(&format!("/v2/{n}/manifests/1.2.3"))).await;
                    assert_eq!(r.status, 200);
                }
            }
            (n(&up.counters.manifest_get), n(&up.counters.manifest_head))
        }
    };
    let (defaults, with_policy) = tokio::join!(scenario(false), scenario(true));
    let pulls = RUNS * 10;
    println!("| | counted manifest GETs | HEADs (not counted) |");
    println!("|---|---:|---:|");
    println!("| no mirror (every pull asks the Hub) | {pulls} | 0 |");
    println!(
        "| regcache, defaults (`tag_ttl = \"0s\"`) | {} | {} |",
        defaults.0, defaults.1
    );
    println!(
        "| regcache, policy | {} | {} |",
        with_policy.0, with_policy.1
    );
    assert!(
        with_policy.0 < defaults.0,
        "{with_policy:?} vs {defaults:?}"
    );
    assert!(with_policy.1 < defaults.1);
}

/// Odd `ratelimit-*` values from the registry: numbers beyond `i64` are not shown as negative
/// gauges (an alert on a low `regcache_upstream_ratelimit_remaining` would fire on `-1`), a
/// window of centuries is bounded, and a value that is not UTF-8 is ignored; pulls go on.
#[tokio::test]
async fn odd_ratelimit_headers_neither_break_pulls_nor_metrics() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/odd", "latest", 100, 96);
    let m = Mirror::start_with_config(&config(&up, "tag_ttl = \"0s\"", "", "")).await;
    let url = m.url("/v2/library/odd/manifests/latest");
    let remaining_line = "regcache_upstream_ratelimit_remaining{registry=\"docker.io\"}";
    let limit_line = "regcache_upstream_ratelimit_limit{registry=\"docker.io\"}";
    let set = |l: &[u8], r: &[u8]| {
        up.set_faults(Faults {
            ratelimit_values: Some((l.to_vec(), r.to_vec())),
            ..Default::default()
        })
    };
    set(b"18446744073709551615", b"18446744073709551615;w=60");
    assert_eq!(get(&url).await.status, 200);
    let t = metrics(&m).await;
    assert!(metric(&t, remaining_line) > 0.0, "{t}");
    assert!(metric(&t, limit_line) > 0.0, "{t}");
    // A window of centuries, at the reserve: cached tags are served (stale), nothing panics.
    set(b"100;w=99999999999999", b"0;w=99999999999999");
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(get(&url).await.status, 200);
    let t = metrics(&m).await;
    let refill = metric(
        &t,
        "regcache_upstream_ratelimit_refill_seconds{registry=\"docker.io\"}",
    );
    assert!(refill <= 86400.0, "{t}");
    let status = regcache::live::LiveStatus::of(&m.app).render();
    assert!(status.contains("AT THE RESERVE"), "{status}");
    // Not UTF-8: ignored (the last good report stays).
    set(b"100;w=60", b"\xff7;w=60");
    let before = n(&up.counters.manifest_get);
    up.add_image("library/odd2", "latest", 100, 97);
    assert_eq!(
        get(&m.url("/v2/library/odd2/manifests/latest"))
            .await
            .status,
        200
    );
    assert_eq!(n(&up.counters.manifest_get), before + 1);
    assert_eq!(metric(&metrics(&m).await, remaining_line), 0.0);
}

/// Concurrent first pulls of an immutable tag: one GET, and the pulls that waited for it are
/// answered from it, not revalidated (no HEAD: an immutable tag's first answer is kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_pulls_of_an_immutable_tag_are_not_revalidated() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/imm", "v1.0.0", 100, 98);
    let m = Mirror::start_with_config(&config(
        &up,
        "tag_ttl = \"0s\"\nimmutable_tags = \"v*.*.*\"",
        "",
        "",
    ))
    .await;
    let url = m.url("/v2/library/imm/manifests/v1.0.0");
    let pulls: Vec<_> = (0..16)
        .map(|_| tokio::spawn(get_owned(url.clone())))
        .collect();
    for p in pulls {
        let r = p.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    }
    assert_eq!(n(&up.counters.manifest_get), 1);
    assert_eq!(n(&up.counters.manifest_head), 0, "never revalidated");
}

/// `repositories` patterns that are not canonical repository names match nothing: check-config
/// says so, with the name it probably meant (and still accepts the file).
#[test]
fn policy_patterns_that_match_nothing_are_warned_about() {
    let check = |pattern: &str| {
        check_config(&format!(
            "[[upstream.policy]]\nrepositories = \"{pattern}\"\ntag_ttl = \"1h\"\n"
        ))
    };
    let (ok, e) = check("alpine");
    assert!(ok && e.contains("did you mean \"library/alpine\"?"), "{e}");
    let (ok, e) = check("docker.io/library/*");
    assert!(
        ok && e.contains("names a registry") && e.contains("\"library/*\""),
        "{e}"
    );
    let (ok, e) = check("library/*");
    assert!(ok && !e.contains("warning"), "{e}");
}
