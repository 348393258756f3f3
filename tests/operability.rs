//! What an operator sees and checks: `/healthz`, `/readyz`, the access log's fields (text and
//! JSON), the startup line.

mod support;

use std::time::Duration;

use regcache::config::ServeArgs;
use support::*;

/// `/healthz` answers; `/readyz` is 200 with the upstream unreachable (a mirror keeps serving
/// what it has) and says so in its body: the registry's state and last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_does_not_depend_on_the_upstream_but_reports_it() {
    let m = Mirror::start_args(ServeArgs {
        upstream: Some("http://127.0.0.1:9".into()),
        revalidate_timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    })
    .await;
    let h = get(&m.url("/healthz")).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    eventually_async("index loaded: ready", || async {
        get(&m.url("/readyz")).await.status == 200
    })
    .await;
    let r = get(&m.url("/readyz")).await.json();
    assert_eq!(r["registries"]["docker.io"]["state"], "untried", "{r}");
    // A pull fails: the upstream refuses connections.
    let p = get(&m.url("/v2/library/down/manifests/v1")).await;
    assert_eq!(p.status, 503);
    let r = get(&m.url("/readyz")).await;
    assert_eq!(r.status, 200, "readiness ignores the upstream");
    let r = r.json();
    let reg = &r["registries"]["docker.io"];
    assert_eq!(reg["state"], "failing", "{r}");
    assert_eq!(reg["upstream"], "127.0.0.1:9");
    assert!(
        reg["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach upstream 127.0.0.1:9"),
        "{r}"
    );
    assert!(reg["last_error_seconds_ago"].as_u64().unwrap() < 5);
    assert_eq!(r["cache"]["index_loaded"], true);
    assert!(r["cache"]["write_error"].is_null());
}

/// `/readyz` is 503 while the cache cannot be written (here `tmp/` replaced by a file), naming
/// the path and the error, and 200 again once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_cache_is_not_writable() {
    let up = FakeUpstream::start(300).await;
    let m = Mirror::start(&up, Duration::ZERO).await;
    eventually_async("ready", || async {
        get(&m.url("/readyz")).await.status == 200
    })
    .await;
    let tmp = m.store().root().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let r = get(&m.url("/readyz")).await;
    assert_eq!(r.status, 503);
    let body = r.json();
    assert_eq!(body["status"], "not ready");
    let why = body["cache"]["write_error"].as_str().unwrap().to_owned();
    assert_eq!(body["cache"]["problems"][0].as_str(), Some(why.as_str()));
    assert!(why.contains(&tmp.display().to_string()), "{why}");
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(get(&m.url("/readyz")).await.status, 200);
}

/// `/readyz` is 503 while free space is below `min_free`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_below_min_free() {
    let up = FakeUpstream::start(300).await;
    let m = Mirror::start_args(ServeArgs {
        upstream: Some(up.url()),
        min_free: Some(regcache::cache::eviction::MinFree::Percent(100.0)),
        ..Default::default()
    })
    .await;
    let r = get(&m.url("/readyz")).await;
    assert_eq!(r.status, 503);
    let c = &r.json()["cache"];
    assert!(c["free_bytes"].as_u64().unwrap() < c["min_free_bytes"].as_u64().unwrap());
    assert!(
        c["problems"][0]
            .as_str()
            .unwrap()
            .contains("below min_free"),
        "the body says why: {c}"
    );
}

/// With `--log-format json` every log line is a JSON object; the access line carries method,
/// path, status, cache result, bytes, time, registry, client address and request id (also sent
/// as `X-Request-Id`), and `counted` (a manifest GET went upstream); health probes are not in the access log at info; the startup line says
/// offline mode, TLS, the disk budget and which registries have credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_access_fields() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/json", "v1", 1000, 60);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = ServeProcess::start(
        &up,
        &dir.path().join("cache"),
        &["--log-format", "json", "--max-size", "1GiB"],
        Some(&log),
    )
    .await;
    let base = child.base();
    let r = get(&format!(
        "{base}/v2/library/json/blobs/{}",
        img.layer_digest
    ))
    .await;
    assert_eq!(r.status, 200);
    let request_id = r.header("x-request-id").to_owned();
    assert_eq!(request_id.len(), 16, "{request_id}");
    let manifest_url = format!("{base}/v2/library/json/manifests/v1");
    let cold = get(&manifest_url).await.header("x-request-id").to_owned();
    let warm = get(&manifest_url).await.header("x-request-id").to_owned();
    assert_eq!(get(&format!("{base}/readyz")).await.status, 200);
    let _ = get(&format!("{base}/healthz")).await;
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    eventually("the access lines are written", || {
        let all = lines();
        [&request_id, &warm]
            .iter()
            .all(|id| all.iter().any(|l| l["fields"]["request_id"] == id.as_str()))
    })
    .await;
    child.kill();
    let all = lines();
    let access: Vec<_> = all
        .iter()
        .filter(|l| l["target"] == "regcache::access")
        .collect();
    let line = access
        .iter()
        .find(|l| l["fields"]["request_id"] == request_id.as_str())
        .unwrap();
    let f = &line["fields"];
    assert_eq!(
        f["counted"], false,
        "a blob GET is not counted by rate limits"
    );
    let counted = |id: &str| {
        access
            .iter()
            .find(|l| l["fields"]["request_id"] == id)
            .map(|l| l["fields"]["counted"].clone())
    };
    assert_eq!(
        counted(&cold),
        Some(true.into()),
        "the cold manifest GET went upstream"
    );
    assert_eq!(
        counted(&warm),
        Some(false.into()),
        "a HEAD revalidated the warm one"
    );
    assert_eq!(f["method"], "GET");
    assert_eq!(f["status"], 200);
    assert_eq!(f["cache"], "miss");
    assert_eq!(f["registry"], "docker.io");
    assert_eq!(f["bytes"], 1000);
    assert_eq!(f["user"], "-", "no client auth on this listener");
    assert!(
        f["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{f}"
    );
    assert!(f["ms"].is_number());
    assert_eq!(line["level"], "INFO");
    assert!(
        !access
            .iter()
            .any(|l| l["fields"]["path"] == "/readyz" || l["fields"]["path"] == "/healthz"),
        "health probes are not logged at info"
    );
    let start = all
        .iter()
        .find(|l| l["fields"]["message"] == "regcache serving")
        .unwrap();
    let f = &start["fields"];
    assert_eq!(f["offline"], false);
    assert!(
        f["listeners"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{f}"
    );
    assert_eq!(f["shutdown_grace"], "5m", "{f}");
    assert_eq!(f["max_size"], "1.0 GiB");
    assert!(f.get("credentials_for").is_some(), "{f}");
}

/// A `REGCACHE_LOG` that does not parse is said, not silently ignored.
#[test]
fn a_bad_log_filter_is_said() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["status", "--cache-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .env("REGCACHE_LOG", "regcache=loud")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("REGCACHE_LOG") && err.contains("not a log filter"),
        "{err}"
    );
}

/// `serve` refuses to start on a cache directory it cannot write, naming the path, rather than
/// running as a silent non-caching proxy.
#[test]
fn serve_refuses_an_unwritable_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for d in ["blobs", "manifests", "tags"] {
        std::fs::create_dir_all(cache.join(d)).unwrap();
    }
    std::fs::write(cache.join("tmp"), b"not a directory").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cache.display().to_string()), "{err}");
}

/// `regcache status` asks the running mirror over its admin socket: during a slow fill it shows
/// that fill's progress, the hit ratio and what was saved, and `--json` gives the same for
/// scripts; with the mirror gone it says so and falls back to the offline report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_running_mirrors_fills() {
    let up = FakeUpstream::start(300).await;
    let (d, _) = up.add_random_blob(3_000_000, 61);
    let (warm, _) = up.add_random_blob(100_000, 62);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut child = ServeProcess::start(&up, &cache, &[], None).await;
    let base = child.base();
    let warm_url = format!("{base}/v2/library/st/blobs/{warm}");
    assert_eq!(get(&warm_url).await.status, 200);
    assert_eq!(get(&warm_url).await.status, 200, "a hit");
    up.set_faults(Faults {
        throttle: Some((100_000, Duration::from_millis(100))), // ~3 s for the blob
        ..Default::default()
    });
    let slow_url = format!("{base}/v2/library/st/blobs/{d}");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    let status = |json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"));
        c.args(["status", "--cache-dir"]).arg(&cache);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually("the fill shows in status", || {
        let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
        v["fills"].as_array().is_some_and(|f| {
            f.iter()
                .any(|f| f["digest"] == d.as_str() && f["received"].as_u64() > Some(0))
        })
    })
    .await;
    let text = status(false);
    assert!(text.contains(&d) && text.contains("of 2.9 MiB"), "{text}");
    assert!(
        text.contains("hit ratio:") && text.contains("saved:"),
        "{text}"
    );
    assert!(
        text.contains("docker.io →") && text.contains("reachable"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let served_cached = |k: &str| v["requests"][k]["requests"].as_u64().unwrap();
    assert_eq!(served_cached("hit") + served_cached("coalesced"), 1, "{v}");
    assert!(v["hit_ratio_requests"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["fetched_upstream_bytes"].as_u64().unwrap() >= 100_000);
    assert_eq!(slow.await.unwrap().status, 200);
    // The fill commits just after its client has the last byte.
    eventually("the slow blob committed", || {
        let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
        v["fills"].as_array().is_some_and(|f| f.is_empty())
    })
    .await;
    // Killed (the socket is left behind): the offline report, and it says why.
    child.kill();
    let text = status(false);
    assert!(text.contains("no running mirror answers"), "{text}");
    assert!(text.contains("objects:"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(v["running"], false);
    assert!(
        v["disk"]["objects"].as_u64().unwrap() >= 2,
        "figures, not text: {v}"
    );
    assert!(v["disk"]["bytes"].as_u64().unwrap() >= 100_000, "{v}");
}

/// The value of the metric line starting with `line` (`name{labels}`), or 0 when absent.
fn metric(text: &str, line: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line) && l[line.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// `/metrics` after a scripted sequence — cold pull, warm pull, coalesced pull, a corrupt blob,
/// a stale answer during an outage — moved each counter by exactly what happened: requests
/// and bytes by cache result, fill failures by reason, stale answers by cause, token fetches,
/// and the upstream latency histogram; "saved" is served minus upstream blob bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_scripted_sequence() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/seq", "v1", 10_000, 63);
    let (slow, _) = up.add_random_blob(400_000, 64);
    let (bad, _) = up.add_random_blob(5_000, 65);
    let m = Mirror::start(&up, Duration::ZERO).await;
    let scrape =
        || async { String::from_utf8(get(&m.url("/metrics")).await.bytes().to_vec()).unwrap() };
    let blob = m.url(&format!("/v2/library/seq/blobs/{}", img.layer_digest));
    // Cold, then warm.
    assert_eq!(
        get(&m.url("/v2/library/seq/manifests/v1")).await.status,
        200
    );
    assert_eq!(get(&blob).await.status, 200);
    eventually("committed", || m.has_blob(&img.layer_digest)).await;
    assert_eq!(get(&blob).await.status, 200);
    // Coalesced: two clients of one slow blob.
    up.set_faults(Faults {
        throttle: Some((50_000, Duration::from_millis(50))),
        ..Default::default()
    });
    let slow_url = m.url(&format!("/v2/library/seq/blobs/{slow}"));
    let (a, b) = tokio::join!(get(&slow_url), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        get(&slow_url).await
    });
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    eventually("the slow blob committed", || m.has_blob(&slow)).await;
    // A corrupt blob: a digest mismatch, nothing cached.
    up.set_faults(Faults {
        corrupt: vec![bad.clone()],
        ..Default::default()
    });
    let _ = get(&m.url(&format!("/v2/library/seq/blobs/{bad}"))).await;
    // An outage: the cached tag is served stale.
    up.set_faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    let r = get(&m.url("/v2/library/seq/manifests/v1")).await;
    assert_eq!(r.status, 200);
    let t = scrape().await;
    let v = |l: &str| metric(&t, l);
    assert_eq!(
        v("regcache_requests_total{cache=\"miss\"}"),
        4.0,
        "manifest, blob, slow, corrupt\n{t}"
    );
    assert_eq!(v("regcache_requests_total{cache=\"hit\"}"), 1.0, "{t}");
    assert_eq!(
        v("regcache_requests_total{cache=\"coalesced\"}"),
        1.0,
        "{t}"
    );
    assert_eq!(v("regcache_requests_total{cache=\"stale\"}"), 1.0, "{t}");
    assert_eq!(v("regcache_served_bytes_total{cache=\"hit\"}"), 10_000.0);
    assert_eq!(
        v("regcache_served_bytes_total{cache=\"coalesced\"}"),
        400_000.0
    );
    assert_eq!(
        v("regcache_fill_failures_total{reason=\"digest_mismatch\"}"),
        1.0,
        "{t}"
    );
    assert_eq!(v("regcache_fill_failures_total{reason=\"disk\"}"), 0.0);
    assert_eq!(
        v("regcache_stale_answers_total{cause=\"upstream_error\"}"),
        1.0,
        "{t}"
    );
    assert_eq!(v("regcache_fills_committed_total"), 2.0);
    assert!(
        v("regcache_upstream_token_fetches_total{registry=\"docker.io\",result=\"ok\"}") >= 1.0,
        "{t}"
    );
    let answered = v("regcache_upstream_request_duration_seconds_count{registry=\"docker.io\"}");
    assert!(answered >= 5.0, "{t}");
    assert_eq!(
        v("regcache_upstream_request_duration_seconds_bucket{le=\"+Inf\",registry=\"docker.io\"}"),
        answered,
        "{t}"
    );
    // The saving: served bytes minus upstream blob bytes (one fetch per blob, the corrupt one too).
    let upstream = v("regcache_upstream_blob_bytes_total");
    assert_eq!(upstream, 10_000.0 + 400_000.0 + 5_000.0, "{t}");
    let mut types: Vec<&str> = t.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let n = types.len();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), n, "a family declared twice:\n{t}");
}

/// Every `regcache_*` metric the Grafana dashboard and the alert rules in `contrib/` use is one
/// the mirror exports (with every family present: a budget, a token realm, Hub rate-limit
/// headers), and the dashboard is valid JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contrib_dashboards_and_alerts_use_existing_metrics() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/dash", "v1", 1000, 66);
    up.set_faults(Faults {
        ratelimit_headers: true,
        ..Default::default()
    });
    let m = Mirror::start_args(ServeArgs {
        upstream: Some(up.url()),
        redirect_host: up.redirect_hosts(),
        max_size: Some(1 << 30),
        ..Default::default()
    })
    .await;
    assert_eq!(
        get(&m.url("/v2/library/dash/manifests/v1")).await.status,
        200
    );
    let text = String::from_utf8(get(&m.url("/metrics")).await.bytes().to_vec()).unwrap();
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let dashboard = std::fs::read_to_string(root.join("grafana/regcache-dashboard.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let alerts = std::fs::read_to_string(root.join("prometheus/regcache-alerts.yml")).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for text in [&dashboard, &alerts] {
        for (i, _) in text.match_indices("regcache_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.len() > "regcache_".len() {
                used.insert(name);
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<_> = used
        .iter()
        .filter(|u| !exported.contains(u.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
}

/// An upstream that refuses the configured credentials gives clients a 502 DENIED that names
/// the registry, the user and the password file (never the password) and is not "retry later".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_upstream_credentials_are_named_not_retried() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/creds", "v1", 100, 67);
    up.set_faults(Faults {
        token_status: Some(401),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("hub.secret");
    std::fs::write(&pw, "s3cret-password\n").unwrap();
    let m = Mirror::start_with_config(&format!(
        "[upstream]\nurl = \"{}\"\nredirect_hosts = [\"{}\"]\nusername = \"bot\"\npassword_file = {:?}\n",
        up.url(),
        up.cdn,
        pw.display().to_string()
    ))
    .await;
    let r = get(&m.url("/v2/library/creds/manifests/v1")).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert!(r.header("retry-after").is_empty());
    let e = &r.json()["errors"][0];
    assert_eq!(e["code"], "DENIED");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("rejected the configured credentials"), "{msg}");
    assert!(
        msg.contains("\"bot\"") && msg.contains("hub.secret"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(!msg.contains("retry later"), "{msg}");
}

/// Runs the regcache binary with `args` on `cache`; returns (exit code, stdout).
fn run_on(cache: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `regcache ls` lists cached repositories and tags with digest, age and size; `gc --dry-run`
/// names the tags that go with a manifest and counts them; `verify` checks as many objects as
/// `status` counts, the damaged ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_gc_and_verify_say_what_is_cached() {
    let up = FakeUpstream::start(300).await;
    let img = up.add_image("library/lsme", "v1", 20_000, 68);
    let other = up.add_image("library/other", "v2", 5_000, 69);
    let m = Mirror::start(&up, Duration::from_secs(3600)).await;
    assert_eq!(
        get(&m.url("/v2/library/lsme/manifests/v1")).await.status,
        200
    );
    m.fill_blobs(
        "library/lsme",
        &[img.layer_digest.clone(), img.config_digest.clone()],
    )
    .await;
    assert_eq!(
        get(&m.url("/v2/library/other/manifests/v2")).await.status,
        200
    );
    let cache = m.store().root().to_path_buf();
    let (code, text) = run_on(&cache, &["ls"]);
    assert_eq!(code, 0);
    assert!(text.contains("docker.io/library/lsme"), "{text}");
    assert!(
        text.contains("v1") && text.contains(&img.manifest_digest),
        "{text}"
    );
    assert!(text.contains("2/2 blobs cached"), "{text}");
    assert!(
        text.contains("docker.io/library/other") && text.contains("0/2 blobs cached"),
        "{text}"
    );
    let (_, json) = run_on(&cache, &["ls", "library/lsme", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert!(v[0]["cached_bytes"].as_u64().unwrap() >= 20_000);
    let _ = other;
    // gc --dry-run with a budget of nothing: every object would go, and the tags with them.
    let (code, text) = run_on(&cache, &["gc", "--dry-run", "--max-size", "1B"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("tags docker.io/library/lsme:v1"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("would remove blob")
                && l.contains("used by docker.io/library/lsme:v1")),
        "blobs name the tags using them: {text}"
    );
    assert!(text.contains("2 tags"), "{text}");
    // A damaged blob (wrong size) is checked (and removed) like the rest.
    let (_, status) = run_on(&cache, &["status", "--json"]);
    let objects = serde_json::from_str::<serde_json::Value>(&status).unwrap()["cache_objects"]
        .as_u64()
        .unwrap();
    let mut walk = vec![cache.join("blobs")];
    let mut victim = None;
    while let (None, Some(d)) = (&victim, walk.pop()) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                walk.push(e.path());
            } else {
                victim = Some(e.path());
            }
        }
    }
    let victim = victim.expect("a blob file");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap();
    f.set_len(10).unwrap();
    let (code, text) = run_on(&cache, &["verify"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("checked {objects} objects")),
        "{status}\n{text}"
    );
}

/// `regcache rm` removes a tag and what only it uses, keeps what another tag shares, is safe
/// beside the serving mirror (which fetches removed content again), and says clearly when
/// nothing matches or the reference is malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_removes_a_tag_and_what_only_it_uses() {
    let up = FakeUpstream::start(300).await;
    let a = up.add_image("library/rma", "v1", 20_000, 70);
    up.add_image("library/rmb", "v1", 8_000, 71);
    let m = Mirror::start(&up, Duration::from_secs(3600)).await;
    for (repo, img) in [("library/rma", &a)] {
        assert_eq!(
            get(&m.url(&format!("/v2/{repo}/manifests/v1")))
                .await
                .status,
            200
        );
        m.fill_blobs(repo, &[img.layer_digest.clone(), img.config_digest.clone()])
            .await;
    }
    assert_eq!(
        get(&m.url("/v2/library/rmb/manifests/v1")).await.status,
        200
    );
    // A second tag of the same image shares all of its content.
    up.put_manifest(
        "library/rma",
        "v2",
        "application/vnd.oci.image.manifest.v1+json",
        a.manifest.clone(),
    );
    assert_eq!(
        get(&m.url("/v2/library/rma/manifests/v2")).await.status,
        200
    );
    let cache = m.store().root().to_path_buf();
    let (code, text) = run_on(&cache, &["rm", "rma:v1"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("removed tag docker.io/library/rma:v1"),
        "{text}"
    );
    assert!(
        text.contains("removed 0 objects") && text.contains("kept 3 shared"),
        "{text}"
    );
    let objects = || m.app.figures().cache_objects;
    let before = objects();
    let (code, text) = run_on(&cache, &["rm", "docker.io/library/rma:v2"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("removed 3 objects"), "{text}");
    assert_eq!(
        objects(),
        before - 3,
        "done by the serving mirror: its index follows"
    );
    let (_, ls) = run_on(&cache, &["ls"]);
    assert!(
        !ls.contains("library/rma") && ls.contains("library/rmb"),
        "{ls}"
    );
    // The serving mirror fetches it again, correctly.
    let before = n(&up.counters.cdn_get);
    let r = get(&m.url(&format!("/v2/library/rma/blobs/{}", a.layer_digest))).await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), a.layer_digest);
    assert_eq!(n(&up.counters.cdn_get), before + 1, "a miss again");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["rm", "nothing:here", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("nothing cached for docker.io/library/nothing:here"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["rm", "Bad Name", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a repository name"));
    // gc beside the serving mirror: done by it, so its index (and status) follow.
    let (code, text) = run_on(&cache, &["gc", "--max-size", "1B"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(objects(), 0, "{text}");
}

/// Requests are counted by client kind from the User-Agent, and the last ones of each kind are
/// on the admin socket (`GET /-/clients`) for `regcache doctor`; probes and /metrics are
/// counted but not kept.
#[tokio::test]
async fn client_kinds_are_counted_and_the_recent_ones_kept() {
    let up = FakeUpstream::start(300).await;
    up.add_image("library/ua", "v1", 1_000, 66);
    let m = Mirror::start(&up, Duration::ZERO).await;
    let path = "/v2/library/ua/manifests/v1";
    for ua in [
        "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/amd64 UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))",
        "docker/28.2.2 go/go1.24.3",
        "containerd/1.6.20~ds1",
        "containers/5.24.2 (github.com/containers/image)",
        "buildkit/v0.12.5",
        "curl/7.88.1",
    ] {
        let r = request("HEAD", &m.url(path), &[("user-agent", ua)]).await;
        assert_eq!(r.status, 200, "{ua}");
    }
    assert_eq!(
        request(
            "GET",
            &m.url("/healthz"),
            &[("user-agent", "containerd/1.6")]
        )
        .await
        .status,
        200
    );
    let text = String::from_utf8(get(&m.url("/metrics")).await.bytes().to_vec()).unwrap();
    for (kind, n) in [
        ("docker", 2),
        ("containerd", 2),
        ("podman", 1),
        ("buildkit", 1),
    ] {
        let line = format!("regcache_client_requests_total{{client=\"{kind}\"}} {n}");
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    // (A blocking client: off the runtime, which serves the admin socket.)
    let root = m.store().root().to_owned();
    let recent = tokio::task::spawn_blocking(move || regcache::clients::fetch_recent(&root))
        .await
        .unwrap()
        .expect("GET /-/clients");
    let docker = &recent["docker"];
    assert_eq!(docker.len(), 2);
    assert_eq!(
        (
            docker[0].method.as_str(),
            docker[0].path.as_str(),
            docker[0].status
        ),
        ("HEAD", path, 200)
    );
    assert!(docker[1].user_agent.starts_with("docker/28.2.2"));
    assert_eq!(
        recent["containerd"].len(),
        1,
        "the /healthz probe is not kept"
    );
    assert!(
        recent["other"].iter().all(|s| s.path != "/metrics"),
        "/metrics not kept"
    );
}
