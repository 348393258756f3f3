//! Site tier benchmark (`scripts/bench --tier`, or `cargo bench --bench tier` as root with the
//! lab's tools and haproxy): the lab's Hub-like upstream, three regcache nodes behind HAProxy
//! (`contrib/haproxy/haproxy.cfg`) and three independent regcache mirrors, all on this machine.
//!
//! - upstream bytes for the site: the test images pulled once through the tier, against once
//!   through each of the N = 3 independent mirrors (hosts spread over mirrors without content
//!   routing: every mirror ends up fetching everything);
//! - aggregate warm throughput (wrk, every blob of the images in turn): the tier against one
//!   mirror. Same machine: this measures the tier's overhead (HAProxy's copy, the hash), not
//!   its scale.
//!
//! Env: BENCH_WRK_SECS (default 10), BENCH_WRK_CONNS (32), BENCH_WRK_THREADS (2),
//! BENCH_OUT_DIR (target/bench): writes tier.md there.

#[path = "../tests/lab/mod.rs"]
#[allow(unused_imports)]
mod lab;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use lab::tier::{site_certs, start_haproxy, start_node};
use lab::{say, Lab, LabOptions};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Upstream (CDN) bytes of the blob GETs since `mark`, from the images' blob sizes.
fn upstream_bytes(lab: &Lab, mark: &lab::upstream::Mark) -> u64 {
    let t = lab.upstream().since(mark);
    let (_, cdn) = lab::pulls::blob_gets(&t);
    cdn.iter()
        .map(|(d, n)| {
            let size = lab
                .images
                .iter()
                .flat_map(|i| i.all_blobs())
                .find(|b| &b.digest == d)
                .map_or(0, |b| b.bytes.len() as u64);
            size * *n as u64
        })
        .sum()
}

/// Every blob of every image, once, through `addr` (plain HTTP).
fn pull_all(lab: &Lab, addr: SocketAddr) {
    for img in &lab.images {
        for d in img.blob_digests() {
            let r = lab::http::must(
                addr,
                "GET",
                &format!("/v2/{}/blobs/{d}", img.repo),
                &[],
                Duration::from_secs(120),
            );
            assert_eq!(r.status, 200, "{}", r.summary());
        }
    }
}

/// wrk over every blob path at `addr`: (requests/s, MiB/s).
fn wrk(lab: &Lab, addr: SocketAddr, secs: u64, conns: u64, threads: u64) -> (f64, f64) {
    let paths: Vec<String> = lab
        .images
        .iter()
        .flat_map(|i| {
            i.blob_digests()
                .into_iter()
                .map(move |d| format!("\"/v2/{}/blobs/{d}\"", i.repo))
        })
        .collect();
    let script = lab.root().join("tier-wrk.lua");
    std::fs::write(
        &script,
        format!(
            "local paths = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n",
            paths.join(", ")
        ),
    )
    .expect("write wrk script");
    let out = lab::proc::run_ok(
        Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{conns}"))
            .arg(format!("-d{secs}s"))
            .arg("-s")
            .arg(&script)
            .arg(format!("http://{addr}/")),
        Duration::from_secs(secs + 60),
    );
    let field = |key: &str| -> String {
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let rps: f64 = field("Requests/sec:").parse().unwrap_or(0.0);
    let t = field("Transfer/sec:");
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let v: f64 = num.parse().unwrap_or(0.0);
    let mib = match unit {
        "GB" => v * 1024.0,
        "MB" => v,
        "KB" => v / 1024.0,
        _ => v / 1048576.0,
    };
    (rps, mib)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(tools) = lab::preflight_regcache("bench tier") else {
        return;
    };
    let Some(haproxy_bin) = lab::proc::which("haproxy") else {
        say("SKIP bench tier: haproxy not found (apt-get install haproxy)");
        return;
    };
    if lab::proc::which("wrk").is_none() {
        say("SKIP bench tier: wrk not found (apt-get install wrk)");
        return;
    }
    let secs = env_num("BENCH_WRK_SECS", 10);
    let conns = env_num("BENCH_WRK_CONNS", 32);
    let threads = env_num("BENCH_WRK_THREADS", 2);
    let lab = Lab::start_with(
        tools,
        LabOptions {
            upstream_only: true,
            ..Default::default()
        },
    );
    let nodes: Vec<_> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| start_node(&lab, n, "1h"))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let certs = site_certs(lab.root());
    let haproxy = start_haproxy(lab.root(), &haproxy_bin, &addrs, &certs);
    let mirrors: Vec<_> = ["mirror-1", "mirror-2", "mirror-3"]
        .iter()
        .map(|n| start_node(&lab, n, "1h"))
        .collect();

    let mark = lab.upstream().mark();
    pull_all(&lab, haproxy.plain);
    let tier_bytes = upstream_bytes(&lab, &mark);
    let mark = lab.upstream().mark();
    for m in &mirrors {
        pull_all(&lab, m.addr);
    }
    let independent_bytes = upstream_bytes(&lab, &mark);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (tier_rps, tier_mib) = wrk(&lab, haproxy.plain, secs, conns, threads);
    let (one_rps, one_mib) = wrk(&lab, mirrors[0].addr, secs, conns, threads);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let set: u64 = lab
        .images
        .iter()
        .flat_map(|i| i.blob_digests())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let md = format!(
        "| site tier (3 nodes + HAProxy, one machine) | figure |\n|---|---|\n\
         | upstream bytes, images pulled through the tier | {:.1} MiB |\n\
         | upstream bytes, same images through 3 independent mirrors | {:.1} MiB ({:.2}x) |\n\
         | warm throughput, tier (wrk -t{threads} -c{conns} -d{secs}s over {set} blobs) | {tier_mib:.0} MiB/s, {tier_rps:.0} req/s |\n\
         | warm throughput, one mirror, same load | {one_mib:.0} MiB/s, {one_rps:.0} req/s |\n\
         | tier / one mirror | {:.2} |\n\n\
         Load average before / after: {} / {}\n",
        tier_bytes as f64 / 1048576.0,
        independent_bytes as f64 / 1048576.0,
        independent_bytes as f64 / tier_bytes.max(1) as f64,
        tier_mib / one_mib.max(0.001),
        load.trim(),
        load_after.trim(),
    );
    println!("{md}");
    let out = std::path::PathBuf::from(
        std::env::var("BENCH_OUT_DIR").unwrap_or_else(|_| "target/bench".into()),
    );
    std::fs::create_dir_all(&out).ok();
    std::fs::write(out.join("tier.md"), &md).ok();
    drop(mirrors);
    drop(haproxy);
    drop(nodes);
    drop(lab);
}
