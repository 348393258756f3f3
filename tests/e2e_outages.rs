//! End-to-end: edge links and outages (issue "Edge links and outages"), with real clients.
//! See `tests/lab/mod.rs` for the lab and its environment variables.
//!
//! The lab puts fault proxies ([`lab::faults`]) between regcache and the upstream registry and
//! in front of the CDN stand-in (the registry redirects blob GETs to that proxy, so blob bytes
//! pass through it). regcache runs with `--tag-ttl 0s --revalidate-timeout 2s
//! --idle-timeout 3s`. The checks, in order (each runs even if an earlier one failed; all
//! failures are reported at the end):
//!
//! 1. a cut at 50% of the big layer on its first download: `docker pull` still gets the
//!    right digests, and the upstream bytes for that blob stay under 1.1x its size (resume
//!    with `Range`, not a fresh download);
//! 2. concurrent `Range` requests while a throttled fill is in progress get the right bytes;
//! 3. for each fault (blackhole, refused, 502, 429 `Retry-After: 7`) on both proxies, each
//!    phase starting with a freshly restarted regcache (so no state, e.g. its circuit
//!    breaker, carries over from the previous fault; cached tags must survive the restart):
//!    the cached image stays pullable by docker, ctr and skopeo, each in < 15 s; an uncached
//!    image fails within 15 s, regcache answering 503 (for a 429: first 429 with upstream's
//!    `Retry-After: 7`, then 429 or 503 with a `Retry-After`); after the blackhole ends,
//!    regcache fetches from upstream again within 30 s;
//! 4. a blob download that stalls (no bytes) is abandoned after the idle timeout, the pull
//!    still succeeds within 15 s, and the download is resumed with `Range` (< 1.1x bytes);
//! 5. 50 warm pulls: with `--tag-ttl 1h` no request at all reaches upstream (real clients
//!    too), with `--tag-ttl 0s` only manifest HEADs do;
//! 6. `regcache prefetch` into a fresh cache directory, then `regcache serve --offline` on it:
//!    docker and ctr pull with the upstream blackholed, and nothing connects upstream;
//! 7. (extra) `--max-upstream-bandwidth 1MiB/s`: concurrent cold fills stay under the cap.

mod lab;

use std::process::Command;
use std::time::{Duration, Instant};

use lab::faults::{self, FaultProxy, Mode};
use lab::http::{self, ACCEPT_MANIFESTS};
use lab::images::TestImage;
use lab::mirror::{regcache_bin, regcache_help_mentions, Access};
use lab::pulls;
use lab::{proc, say, Findings, Lab, LabOptions};

/// Longest a pull (or a failure) may take while upstream is in trouble.
const BOUND: Duration = Duration::from_secs(15);
/// Hard deadline for a client, so a hang fails the check instead of the whole run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
const REVALIDATE_TIMEOUT: &str = "2s";
const IDLE_TIMEOUT: &str = "3s";
const WARM_PULLS: usize = 50;
const FAULTS: [Mode; 4] = [
    Mode::Blackhole,
    Mode::Refuse,
    Mode::Status502,
    Mode::Status429,
];

/// Which of the features under test this regcache build has (from its `--help`).
struct Features {
    revalidate_timeout: bool,
    idle_timeout: bool,
    offline: bool,
    prefetch: bool,
    max_upstream_bandwidth: bool,
}

impl Features {
    fn probe() -> Features {
        Features {
            revalidate_timeout: regcache_help_mentions(Some("serve"), "--revalidate-timeout"),
            idle_timeout: regcache_help_mentions(Some("serve"), "--idle-timeout"),
            offline: regcache_help_mentions(Some("serve"), "--offline"),
            prefetch: regcache_help_mentions(None, "prefetch"),
            max_upstream_bandwidth: regcache_help_mentions(
                Some("serve"),
                "--max-upstream-bandwidth",
            ),
        }
    }
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

fn fronts(lab: &Lab) -> [&FaultProxy; 2] {
    lab.upstream().fronts()
}

fn set_fault(lab: &Lab, mode: Mode) {
    for p in fronts(lab) {
        p.set_mode(mode);
    }
}

fn reset_faults(lab: &Lab) {
    for p in fronts(lab) {
        p.reset();
    }
}

/// regcache's access-log entries since `mark`, one per line, for reports.
fn access_report(lab: &Lab, mark: usize, filter: impl Fn(&Access) -> bool) -> String {
    lab.mirror()
        .access_since(mark)
        .iter()
        .filter(|a| filter(a))
        .map(|a| format!("    {}", a.short()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Upstream requests (both proxies) since the marks, for reports.
fn proxy_report(lab: &Lab, marks: &[faults::ProxyMark; 2]) -> String {
    let mut s = String::new();
    for (p, m) in fronts(lab).iter().zip(marks) {
        let recs = p.since(m);
        s.push_str(&format!(
            "  at the {} proxy: {} requests, {} connections\n{}",
            p.name,
            recs.len(),
            p.connections_since(m),
            faults::listing(&recs)
        ));
    }
    s
}

fn marks(lab: &Lab) -> [faults::ProxyMark; 2] {
    let [r, c] = fronts(lab);
    [r.mark(), c.mark()]
}

/// Check 1: The first download of the big layer is cut at 50%; docker pull still succeeds and the
/// upstream bytes for the layer stay under 1.1x its size.
fn cut_at_half_is_resumed(lab: &Lab, single: &TestImage) {
    let big = single.biggest_layer();
    let size = big.bytes.len() as u64;
    let [reg, cdn] = fronts(lab);
    let m = marks(lab);
    let log = lab.mirror().log_mark();
    cdn.cut_first(hex(&big.digest), size / 2);
    let took = pulls::docker_pull(lab, single, CLIENT_TIMEOUT);
    let pending = cdn.pending_rules();
    assert!(
        pending.is_empty(),
        "the cut never happened (no CDN download of {}?): {pending:?}\n{}",
        big.digest,
        proxy_report(lab, &m)
    );
    let upstream_bytes =
        reg.body_bytes_for(&m[0], hex(&big.digest)) + cdn.body_bytes_for(&m[1], hex(&big.digest));
    let ratio = upstream_bytes as f64 / size as f64;
    say(format!(
        "    docker pull {} in {:.1}s; upstream bytes for the {} byte layer: {upstream_bytes} ({ratio:.2}x); requests for it:\n{}",
        single.short_ref(),
        took.as_secs_f64(),
        size,
        faults::listing(
            &cdn.since(&m[1])
                .into_iter()
                .filter(|r| r.path.contains(hex(&big.digest)))
                .collect::<Vec<_>>()
        )
    ));
    assert!(
        ratio < 1.1,
        "after a cut at 50%, {upstream_bytes} upstream bytes ({ratio:.2}x the layer's {size}) were \
         downloaded for {}: the broken download was not resumed with Range.\nupstream:\n{}\nregcache:\n{}",
        big.digest,
        proxy_report(lab, &m),
        access_report(lab, log, |a| a.path.contains(hex(&big.digest)))
    );
}

/// Check 2: Range requests while a throttled fill is in progress.
fn ranges_during_slow_fill(lab: &Lab, conc: &TestImage) -> (u64, u64) {
    let big = conc.biggest_layer();
    let size = big.bytes.len();
    let [_, cdn] = fronts(lab);
    let m = cdn.mark();
    let mirror = lab.mirror_addr();
    let path = format!("/v2/{}/blobs/{}", conc.repo, big.digest);
    // ~10 MiB at 2 MiB/s: the fill takes about 5 s.
    cdn.set_throttle(Some(2 * 1024 * 1024));
    let ranges: Vec<(String, usize, usize)> = vec![
        ("bytes=0-1023".into(), 0, 1024),
        ("bytes=1000-70999".into(), 1000, 71000),
        (
            format!("bytes={}-{}", size / 2, size / 2 + 65535),
            size / 2,
            size / 2 + 65536,
        ),
        (format!("bytes={}-", size * 3 / 4), size * 3 / 4, size),
        ("bytes=-4096".into(), size - 4096, size),
        (
            format!("bytes={}-{}", size - 10, size + 1000),
            size - 10,
            size,
        ),
        ("bytes=0-".into(), 0, size),
    ];
    let started = Instant::now();
    let problems = std::thread::scope(|s| {
        let full = s.spawn(|| {
            let r = http::must(mirror, "GET", &path, &[], HTTP_TIMEOUT);
            (r, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(800));
        let handles: Vec<_> = ranges
            .iter()
            .map(|(range, a, b)| {
                let path = &path;
                s.spawn(move || {
                    let at = started.elapsed();
                    let r = http::must(mirror, "GET", path, &[("Range", range)], HTTP_TIMEOUT);
                    (range.clone(), *a, *b, r, at)
                })
            })
            .collect();
        let mut problems = Vec::new();
        for h in handles {
            let (range, a, b, r, at) = h.join().expect("range thread");
            let want_cr = format!("bytes {a}-{}/{size}", b - 1);
            let ok = r.status == 206
                && r.header("content-range") == Some(want_cr.as_str())
                && r.body == big.bytes[a..b];
            say(format!(
                "    Range {range} sent at {:.1}s: {} Content-Range {:?} ({} bytes) in {:.1}s{}",
                at.as_secs_f64(),
                r.status,
                r.header("content-range"),
                r.body.len(),
                r.elapsed.as_secs_f64(),
                if ok { "" } else { "  <-- WRONG" }
            ));
            if !ok {
                problems.push(format!(
                    "Range {range}: want 206, Content-Range {want_cr}, {} bytes of the blob; got {} Content-Range {:?}, {} bytes{}",
                    b - a,
                    r.status,
                    r.header("content-range"),
                    r.body.len(),
                    if r.status == 206 && r.body.len() == b - a { " (content differs)" } else { "" }
                ));
            }
        }
        let (r, done) = full.join().expect("full GET thread");
        say(format!(
            "    full GET (the fill): {} {} bytes, done at {:.1}s",
            r.status,
            r.body.len(),
            done.as_secs_f64()
        ));
        if r.status != 200 || r.body != big.bytes {
            problems.push(format!(
                "the full GET got {} with {} bytes (want 200 and the blob's {size})",
                r.status,
                r.body.len()
            ));
        }
        problems
    });
    cdn.set_throttle(None);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    (cdn.body_bytes_for(&m, hex(&big.digest)), size as u64)
}

/// Check 3a: The cached image stays pullable by docker, ctr and skopeo, each within BOUND.
fn cached_image_survives(lab: &Lab, single: &TestImage, mode: Mode) {
    let log = lab.mirror().log_mark();
    let m = marks(lab);
    let mut problems = Vec::new();
    let mut times = Vec::new();
    let mut timed = |name: &str, f: &dyn Fn() -> Duration| match std::panic::catch_unwind(
        std::panic::AssertUnwindSafe(f),
    ) {
        Ok(t) => {
            times.push(format!("{name} {:.1}s", t.as_secs_f64()));
            if t > BOUND {
                problems.push(format!(
                    "{name} took {:.1}s (bound {BOUND:?})",
                    t.as_secs_f64()
                ));
            }
        }
        Err(e) => problems.push(format!("{name}: {}", lab::panic_message(&*e))),
    };
    lab.dockerd().remove_everything();
    timed("docker pull", &|| {
        pulls::docker_pull(lab, single, CLIENT_TIMEOUT)
    });
    lab.containerd().remove_everything();
    timed("ctr pull", &|| ctr_pull_image(lab, single));
    timed("skopeo copy", &|| {
        pulls::skopeo_copy(
            lab,
            &format!("{}/{}:{}", lab.mirror_addr(), single.repo, single.tag),
            single,
            CLIENT_TIMEOUT,
        )
    });
    let acc = lab.mirror().access_since(log);
    let manifests: Vec<String> = acc
        .iter()
        .filter(|a| a.path.contains("/manifests/"))
        .map(|a| {
            format!(
                "{} {} -> {} {} {:.0}ms",
                a.method, a.path, a.status, a.cache, a.ms
            )
        })
        .collect();
    say(format!(
        "    upstream {}: {}; regcache manifest answers:\n      {}",
        mode.name(),
        times.join(", "),
        manifests.join("\n      ")
    ));
    assert!(
        problems.is_empty(),
        "cached {} during upstream {}:\n{}\nregcache access log:\n{}\n{}",
        single.short_ref(),
        mode.name(),
        problems.join("\n"),
        access_report(lab, log, |_| true),
        proxy_report(lab, &m)
    );
}

/// `ctr images pull` of `img` (a docker.io name) through the lab's hosts dir, checked.
fn ctr_pull_image(lab: &Lab, img: &TestImage) -> Duration {
    pulls::ctr_pull(
        lab,
        &lab.containerd().hosts_dir,
        &img.docker_io_ref(),
        img,
        None,
        CLIENT_TIMEOUT,
    )
}

/// Check 3b: An uncached image fails within BOUND: regcache answers 503 UNAVAILABLE to a manifest
/// and a blob GET, and `ctr pull` gives up. For an upstream 429 the first answer is 429
/// TOOMANYREQUESTS with upstream's `Retry-After: 7`; later ones (regcache may remember the
/// rate limit) 429 or 503, with a `Retry-After`.
fn uncached_image_fails_fast(lab: &Lab, multi: &TestImage, mode: Mode) {
    let mirror = lab.mirror_addr();
    let blob = &multi.platforms[0].layers[1].digest;
    let mut problems = Vec::new();
    for (i, (what, path, headers)) in [
        (
            "manifest by tag",
            format!("/v2/{}/manifests/{}", multi.repo, multi.tag),
            vec![("Accept", ACCEPT_MANIFESTS)],
        ),
        ("blob", format!("/v2/{}/blobs/{blob}", multi.repo), vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        let r = http::request(mirror, "GET", &path, &headers, HTTP_TIMEOUT);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("GET {path} ({what}): {e}"));
                continue;
            }
        };
        say(format!(
            "    uncached {what}: GET {path} -> {}",
            r.summary()
        ));
        let mut bad = Vec::new();
        let code = r.error_code();
        if mode != Mode::Status429 {
            if (r.status, code.as_deref()) != (503, Some("UNAVAILABLE")) {
                bad.push(format!("got {} {code:?} (want 503 UNAVAILABLE)", r.status));
            }
        } else if i == 0 {
            if (r.status, code.as_deref()) != (429, Some("TOOMANYREQUESTS")) {
                bad.push(format!(
                    "got {} {code:?} (want 429 TOOMANYREQUESTS)",
                    r.status
                ));
            }
            if r.header("retry-after") != Some("7") {
                bad.push(format!(
                    "Retry-After {:?} (want upstream's \"7\")",
                    r.header("retry-after")
                ));
            }
        } else {
            if !matches!(
                (r.status, code.as_deref()),
                (429, Some("TOOMANYREQUESTS")) | (503, Some("UNAVAILABLE"))
            ) {
                bad.push(format!(
                    "got {} {code:?} (want 429 TOOMANYREQUESTS or 503 UNAVAILABLE)",
                    r.status
                ));
            }
            if r.header("retry-after").is_none() {
                bad.push("no Retry-After".to_owned());
            }
        }
        if r.elapsed > BOUND {
            bad.push(format!(
                "took {:.1}s (bound {BOUND:?})",
                r.elapsed.as_secs_f64()
            ));
        }
        if !bad.is_empty() {
            problems.push(format!(
                "GET {path} ({what}): {} — regcache answered {}",
                bad.join(", "),
                r.summary()
            ));
        }
    }
    let ctrd = lab.containerd();
    let started = Instant::now();
    let out = ctrd.try_pull(
        &ctrd.hosts_dir,
        &multi.docker_io_ref(),
        true,
        None,
        CLIENT_TIMEOUT,
    );
    let took = started.elapsed();
    let last = out.stderr.lines().last().unwrap_or_default().to_owned();
    say(format!(
        "    uncached ctr pull {}: {} after {:.1}s: {last}",
        multi.docker_io_ref(),
        if out.ok() { "succeeded" } else { "failed" },
        took.as_secs_f64()
    ));
    if out.ok() {
        problems.push(format!(
            "ctr pull {} succeeded while upstream is {}",
            multi.docker_io_ref(),
            mode.name()
        ));
    }
    if took > BOUND {
        problems.push(format!(
            "ctr pull {} took {:.1}s to fail (bound {BOUND:?}): {last}",
            multi.docker_io_ref(),
            took.as_secs_f64()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Check 3c: After an outage ends, regcache goes back to upstream for what it does not have:
/// polls a missing tag until upstream's 404 comes through (instead of a 503). Returns the
/// time that took.
fn recovers_after_outage(lab: &Lab, multi: &TestImage) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    for i in 0.. {
        let path = format!("/v2/{}/manifests/recovery-probe-{i}", multi.repo);
        let r = http::must(
            lab.mirror_addr(),
            "GET",
            &path,
            &[("Accept", ACCEPT_MANIFESTS)],
            HTTP_TIMEOUT,
        );
        if r.status == 404 {
            let took = started.elapsed();
            say(format!(
                "    upstream back: regcache passes upstream's 404 again after {:.1}s (before: {last})",
                took.as_secs_f64()
            ));
            return took;
        }
        last = format!("GET {path} -> {}", r.summary());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "30s after the upstream came back, regcache still does not ask it: {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    unreachable!()
}

/// Check 4: A blob download that stalls (no bytes) is abandoned after the idle timeout; ctr gets
/// the image within BOUND. Returns (upstream bytes for the layer, its size, report).
fn stalled_fill_is_abandoned(lab: &Lab, multi: &TestImage) -> (u64, u64, String) {
    let layer = multi.platforms[0]
        .layers
        .iter()
        .max_by_key(|l| l.bytes.len())
        .expect("layer");
    let size = layer.bytes.len() as u64;
    let [reg, cdn] = fronts(lab);
    let m = marks(lab);
    let log = lab.mirror().log_mark();
    cdn.stall_first(hex(&layer.digest), 1024 * 1024);
    lab.containerd().remove_everything();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pulls::ctr_pull(
            lab,
            &lab.containerd().hosts_dir,
            &multi.docker_io_ref(),
            multi,
            None,
            Duration::from_secs(45),
        )
    }));
    let pending = cdn.pending_rules();
    let bytes = reg.body_bytes_for(&m[0], hex(&layer.digest))
        + cdn.body_bytes_for(&m[1], hex(&layer.digest));
    let report = format!(
        "upstream bytes for the {size} byte layer: {bytes} ({:.2}x); upstream:\n{}regcache:\n{}",
        bytes as f64 / size as f64,
        proxy_report(lab, &m),
        access_report(lab, log, |a| a.path.contains(hex(&layer.digest)))
    );
    let took = match result {
        Ok(t) => t,
        Err(e) => panic!(
            "ctr pull with a stalled blob download failed: {}\n{report}",
            lab::panic_message(&*e)
        ),
    };
    assert!(
        pending.is_empty(),
        "the stall never happened: {pending:?}\n{report}"
    );
    say(format!(
        "    ctr pull in {:.1}s; {report}",
        took.as_secs_f64()
    ));
    assert!(
        took < BOUND,
        "ctr pull took {:.1}s with a stalled download (idle timeout {IDLE_TIMEOUT}; bound {BOUND:?})",
        took.as_secs_f64()
    );
    (bytes, size, report)
}

/// Check 7 (extra): `--max-upstream-bandwidth 1MiB/s` on a fresh cache: two blobs filled at once
/// (~3.8 MiB) arrive no faster than the cap allows (1.5x slack for bursts).
fn bandwidth_is_capped(lab: &Lab, multi: &TestImage) {
    let blobs: Vec<&lab::images::Blob> = multi
        .platforms
        .iter()
        .map(|p| {
            p.layers
                .iter()
                .max_by_key(|l| l.bytes.len())
                .expect("layer")
        })
        .collect();
    let total: usize = blobs.iter().map(|b| b.bytes.len()).sum();
    let [_, cdn] = fronts(lab);
    let m = cdn.mark();
    let started = Instant::now();
    let results: Vec<http::Response> = std::thread::scope(|s| {
        let hs: Vec<_> = blobs
            .iter()
            .map(|b| {
                let path = format!("/v2/{}/blobs/{}", multi.repo, b.digest);
                s.spawn(move || http::must(lab.mirror_addr(), "GET", &path, &[], HTTP_TIMEOUT))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("GET thread"))
            .collect()
    });
    let took = started.elapsed().as_secs_f64();
    for (b, r) in blobs.iter().zip(&results) {
        assert!(
            r.status == 200 && r.body == b.bytes,
            "GET {}: {} with {} bytes (want 200 and {})",
            b.digest,
            r.status,
            r.body.len(),
            b.bytes.len()
        );
    }
    let upstream = cdn.bytes_since(&m);
    let rate = upstream as f64 / took / 1048576.0;
    say(format!(
        "    {total} bytes in 2 concurrent fills took {took:.1}s: {rate:.2} MiB/s upstream (cap 1 MiB/s; unthrottled the CDN gives ~3.4 MiB/s per connection)"
    ));
    assert!(
        rate <= 1.5,
        "with --max-upstream-bandwidth 1MiB/s, fills ran at {rate:.2} MiB/s ({upstream} bytes in {took:.1}s)"
    );
}

/// Check 5: WARM_PULLS pulls (manifest by tag + every blob, checked) plus docker, ctr and skopeo;
/// returns the upstream requests they caused.
fn warm_pulls(lab: &Lab, single: &TestImage, real_clients: bool) -> Vec<faults::Record> {
    let m = marks(lab);
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..WARM_PULLS {
        bytes += http::pull_single(lab.mirror_addr(), single, "", "", HTTP_TIMEOUT);
    }
    say(format!(
        "    {WARM_PULLS} pulls of {} (manifest + blobs, {:.0} MiB) in {:.1}s",
        single.short_ref(),
        bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    ));
    if real_clients {
        lab.dockerd().remove_everything();
        pulls::docker_pull(lab, single, CLIENT_TIMEOUT);
        lab.containerd().remove_everything();
        ctr_pull_image(lab, single);
        pulls::skopeo_copy(
            lab,
            &format!("{}/{}:{}", lab.mirror_addr(), single.repo, single.tag),
            single,
            CLIENT_TIMEOUT,
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let [r, c] = fronts(lab);
    let mut recs = r.since(&m[0]);
    recs.extend(c.since(&m[1]));
    say(format!(
        "    upstream during them: {} requests ({} HEAD manifest, {} GET), {} connections",
        recs.len(),
        recs.iter()
            .filter(|x| x.method == "HEAD" && x.is_manifest())
            .count(),
        recs.iter().filter(|x| x.method == "GET").count(),
        r.connections_since(&m[0]) + c.connections_since(&m[1])
    ));
    recs
}

/// Check 6a: `regcache prefetch` into a fresh cache directory.
fn prefetch(lab: &Lab, dir: &std::path::Path) {
    let m = marks(lab);
    let mut c = Command::new(regcache_bin());
    c.args([
        "prefetch",
        "library/e2e-single:v1",
        "docker.io/library/e2e-multi:v1",
        "--platform",
        "linux/amd64",
        "--cache-dir",
    ])
    .arg(dir)
    .arg("--upstream")
    .arg(lab.upstream().mirror_url());
    for h in &lab.upstream().redirect_hosts {
        c.arg("--redirect-host").arg(h);
    }
    let started = Instant::now();
    let out = proc::run(&mut c, Duration::from_secs(120));
    say(format!(
        "    `{}` exited {} in {:.1}s\n    stdout: {}\n    stderr (last lines):\n{}",
        proc::describe(&c),
        out.status,
        started.elapsed().as_secs_f64(),
        out.stdout.trim(),
        out.stderr
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    ));
    say(format!(
        "    upstream during prefetch:\n{}",
        proxy_report(lab, &m)
    ));
    assert!(
        out.ok(),
        "regcache prefetch failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// Check 6b: regcache --offline on the prefetched directory, upstream blackholed: docker and ctr
/// pull; nothing connects upstream; what was not prefetched fails fast.
fn offline_pulls(lab: &Lab, single: &TestImage, multi: &TestImage, conc: &TestImage) {
    set_fault(lab, Mode::Blackhole);
    let m = marks(lab);
    let mut problems = Vec::new();
    let mut note = |r: Result<Duration, Box<dyn std::any::Any + Send>>, what: &str| match r {
        Ok(t) if t > BOUND => problems.push(format!("{what} took {:.1}s", t.as_secs_f64())),
        Ok(t) => say(format!("    offline {what}: ok in {:.1}s", t.as_secs_f64())),
        Err(e) => problems.push(format!("{what}: {}", lab::panic_message(&*e))),
    };
    let catch =
        |f: &dyn Fn() -> Duration| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    lab.dockerd().remove_everything();
    note(
        catch(&|| pulls::docker_pull(lab, single, CLIENT_TIMEOUT)),
        "docker pull e2e-single:v1",
    );
    lab.containerd().remove_everything();
    let hosts = lab.containerd().hosts_dir.clone();
    note(
        catch(&|| {
            pulls::ctr_pull(
                lab,
                &hosts,
                &single.docker_io_ref(),
                single,
                None,
                CLIENT_TIMEOUT,
            )
        }),
        "ctr pull docker.io/library/e2e-single:v1",
    );
    note(
        catch(&|| {
            pulls::ctr_pull(
                lab,
                &hosts,
                &multi.docker_io_ref(),
                multi,
                Some("linux/amd64"),
                CLIENT_TIMEOUT,
            )
        }),
        "ctr pull --platform linux/amd64 docker.io/library/e2e-multi:v1",
    );
    note(
        catch(&|| {
            pulls::skopeo_copy(
                lab,
                &format!("{}/{}:{}", lab.mirror_addr(), single.repo, single.tag),
                single,
                CLIENT_TIMEOUT,
            )
        }),
        "skopeo copy e2e-single:v1",
    );
    // Not prefetched: an uncached tag, and the arm64 manifest of e2e-multi.
    let arm = &multi.platforms[1].manifest.digest;
    for path in [
        format!("/v2/{}/manifests/{}", conc.repo, conc.tag),
        format!("/v2/{}/manifests/{arm}", multi.repo),
    ] {
        match http::request(
            lab.mirror_addr(),
            "GET",
            &path,
            &[("Accept", ACCEPT_MANIFESTS)],
            HTTP_TIMEOUT,
        ) {
            Ok(r) => {
                say(format!(
                    "    offline, not prefetched: GET {path} -> {}",
                    r.summary()
                ));
                if r.status < 400 || r.elapsed > Duration::from_secs(5) {
                    problems.push(format!(
                        "offline GET {path} (not prefetched): want a quick error, got {}",
                        r.summary()
                    ));
                }
            }
            Err(e) => problems.push(format!("offline GET {path}: {e}")),
        }
    }
    let conns: u64 = fronts(lab)
        .iter()
        .zip(&m)
        .map(|(p, m)| p.connections_since(m))
        .sum();
    if conns != 0 {
        problems.push(format!(
            "regcache --offline connected upstream {conns} times:\n{}",
            proxy_report(lab, &m)
        ));
    }
    reset_faults(lab);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn edge_links_and_outages() {
    let test = "e2e edge_links_and_outages";
    let Some(tools) = lab::preflight_regcache(test) else {
        return;
    };
    let started = Instant::now();
    let features = Features::probe();
    let mut mirror_args = Vec::new();
    if features.revalidate_timeout {
        mirror_args.extend([
            "--revalidate-timeout".to_owned(),
            REVALIDATE_TIMEOUT.to_owned(),
        ]);
    }
    if features.idle_timeout {
        mirror_args.extend(["--idle-timeout".to_owned(), IDLE_TIMEOUT.to_owned()]);
    }
    let lab = Lab::start_with(
        tools,
        LabOptions {
            fault_proxies: true,
            mirror_args,
            ..LabOptions::default()
        },
    );
    let mut f = Findings::new(test);
    for (have, what) in [
        (
            features.revalidate_timeout,
            "regcache serve --revalidate-timeout",
        ),
        (features.idle_timeout, "regcache serve --idle-timeout"),
        (features.offline, "regcache serve --offline"),
        (features.prefetch, "regcache prefetch"),
    ] {
        if !have {
            f.fail(
                &format!("{what} exists"),
                format!("this regcache build has no `{what}` (not in --help)"),
            );
        }
    }
    let single = lab.image("library/e2e-single").clone();
    let multi = lab.image("library/e2e-multi").clone();
    let conc = lab.image("library/e2e-concurrent").clone();

    f.check(
        "cut at 50% of the big layer on its first download: docker pull ok, upstream bytes < 1.1x",
        || cut_at_half_is_resumed(&lab, &single),
    );
    reset_faults(&lab);
    let fill = f.check(
        "concurrent Range requests during a throttled (2 MiB/s) fill get the right bytes",
        || ranges_during_slow_fill(&lab, &conc),
    );
    reset_faults(&lab);
    if let Some((bytes, size)) = fill {
        f.check(
            "the throttled fill and the Range requests cost < 1.1x the blob upstream",
            || {
                assert!(
                    (bytes as f64) < 1.1 * size as f64,
                    "{bytes} upstream bytes for a {size} byte blob ({:.2}x): Range requests during a fill went upstream separately",
                    bytes as f64 / size as f64
                )
            },
        );
    }
    // Whatever happened above, e2e-single must be cached before the outages.
    f.check("e2e-single cached (pass-through pull)", || {
        http::pull_single(lab.mirror_addr(), &single, "", "", HTTP_TIMEOUT)
    });
    let mut lab = lab;
    for mode in FAULTS {
        // A fresh regcache for each phase: nothing learnt about upstream carries over.
        lab.mirror_mut().restart(|_| {});
        set_fault(&lab, mode);
        f.check(
            &format!(
                "upstream {} (regcache just restarted): cached e2e-single pullable by docker, ctr, skopeo (< {}s each)",
                mode.name(),
                BOUND.as_secs()
            ),
            || cached_image_survives(&lab, &single, mode),
        );
        lab.mirror_mut().restart(|_| {});
        f.check(
            &format!(
                "upstream {}: uncached e2e-multi fails within {}s with {}",
                mode.name(),
                BOUND.as_secs(),
                if mode == Mode::Status429 {
                    "429 + Retry-After"
                } else {
                    "503"
                }
            ),
            || uncached_image_fails_fast(&lab, &multi, mode),
        );
        reset_faults(&lab);
        if mode == Mode::Blackhole {
            f.check(
                "after the blackhole ends, regcache asks upstream again within 30s",
                || recovers_after_outage(&lab, &multi),
            );
        }
    }
    lab.mirror_mut().restart(|_| {});
    if features.idle_timeout {
        let stalled = f.check(
            "a blob download stalled after 1 MiB is abandoned after --idle-timeout 3s; ctr pull e2e-multi ok in < 15s",
            || stalled_fill_is_abandoned(&lab, &multi),
        );
        reset_faults(&lab);
        if let Some((bytes, size, report)) = stalled {
            f.check(
                "the stalled download was resumed with Range (upstream bytes < 1.1x)",
                || {
                    assert!(
                        (bytes as f64) < 1.1 * size as f64,
                        "after the idle timeout the download was not resumed with Range: {report}"
                    )
                },
            );
        }
    }

    lab.mirror_mut().restart(|s| s.tag_ttl = "1h".into());
    f.check("warm-up after restart with --tag-ttl 1h", || {
        http::pull_single(lab.mirror_addr(), &single, "", "", HTTP_TIMEOUT)
    });
    f.check(
        &format!("{WARM_PULLS} warm pulls + docker/ctr/skopeo with --tag-ttl 1h: no upstream request at all"),
        || {
            let recs = warm_pulls(&lab, &single, true);
            assert!(
                recs.is_empty(),
                "upstream requests during warm pulls with --tag-ttl 1h:\n{}",
                faults::listing(&recs)
            );
        },
    );
    lab.mirror_mut().restart(|s| s.tag_ttl = "0s".into());
    f.check(
        &format!("{WARM_PULLS} warm pulls with --tag-ttl 0s: manifest HEADs only upstream"),
        || {
            let recs = warm_pulls(&lab, &single, false);
            let other: Vec<_> = recs
                .iter()
                .filter(|r| !(r.method == "HEAD" && r.is_manifest()))
                .cloned()
                .collect();
            assert!(
                other.is_empty(),
                "upstream requests other than manifest HEADs during warm pulls (tag-ttl 0s):\n{}",
                faults::listing(&other)
            );
            let heads = recs.iter().filter(|r| r.status == Some(200)).count();
            assert_eq!(
                heads,
                WARM_PULLS,
                "successful manifest HEADs upstream for {WARM_PULLS} tag requests:\n{}",
                faults::listing(&recs)
            );
        },
    );

    if features.prefetch {
        let dir = lab.fresh_dir("prefetch-cache");
        let prefetched = f.check(
            "regcache prefetch library/e2e-single:v1 docker.io/library/e2e-multi:v1 --platform linux/amd64 into a fresh cache dir",
            || prefetch(&lab, &dir),
        );
        if prefetched.is_some() && features.offline {
            lab.mirror_mut().restart(|s| {
                s.cache_dir = dir.clone();
                s.extra_args.push("--offline".into());
            });
            f.check(
                "regcache --offline on the prefetched dir, upstream blackholed: docker/ctr/skopeo pull, no upstream connection",
                || offline_pulls(&lab, &single, &multi, &conc),
            );
        }
    }
    reset_faults(&lab);
    if features.max_upstream_bandwidth {
        let dir = lab.fresh_dir("bandwidth-cache");
        lab.mirror_mut().restart(|s| {
            s.cache_dir = dir.clone();
            s.extra_args.retain(|a| a != "--offline");
            s.extra_args
                .extend(["--max-upstream-bandwidth".to_owned(), "1MiB/s".to_owned()]);
        });
        f.check(
            "--max-upstream-bandwidth 1MiB/s: two concurrent cold fills stay under the cap (extra)",
            || bandwidth_is_capped(&lab, &multi),
        );
    } else {
        f.fail(
            "regcache serve --max-upstream-bandwidth exists",
            "this regcache build has no `--max-upstream-bandwidth` (not in --help)".into(),
        );
    }
    lab.assert_alive();
    say(format!("{test}: {:.1}s", started.elapsed().as_secs_f64()));
    f.finish();
}
