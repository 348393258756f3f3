//! Criterion micro-benchmarks for regcache's per-request hot pieces.
//!
//! Run: `cargo bench --bench micro` (add a filter to run one group, e.g.
//! `cargo bench --bench micro -- digest`). `scripts/bench` runs the end-to-end comparison
//! (`benches/compare.rs`) instead; see BENCHMARKS.md.
//!
//! Groups:
//! - `route_parse`: `Route::parse` on the paths every request goes through (blob by digest,
//!   manifest by tag / by digest, a deep repository name, and a rejected path).
//! - `digest_parse`: `Digest::from_str` (sha256, sha512).
//! - `digest_hash`: `Hasher` throughput over sizes a fill feeds it (16 KiB frames up to 4 MiB),
//!   sha256 and sha512, reported in bytes/s.
//! - `range`: `parse_range` + `resolve_range` on the `Range` values clients send.
//! - `eviction_index`: regcache's eviction index (`cache::index::Index`) at 100k objects (touch /
//!   insert / pop_lru).
//! - `tls_records`: rustls sealing 1 MiB the way HTTP/2 hands it over (a 9-byte frame head and
//!   a 16 KiB payload per write: two TLS records per frame) against the same bytes in
//!   record-aligned writes (one record per 16 KiB), reported in bytes/s: whether the extra
//!   record per DATA frame is worth gathering plaintext for (BENCHMARKS.md, item 5).

use std::hint::black_box;
use std::str::FromStr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use regcache::cache::hash::Hasher;
use regcache::http::range::{parse_range, resolve_range};
use regcache::reference::{Algorithm, Digest, Route};

const H64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Entries in the LRU placeholder: a cache of ~100k blobs is a large mirror.
const LRU_ENTRIES: usize = 100_000;

/// A deterministic sha256 digest for index `i` (hex of a splitmix64 stream, so keys are
/// spread like real digests).
fn digest_for(i: u64) -> Digest {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256:");
    for _ in 0..4 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        hex.push_str(&format!("{z:016x}"));
    }
    Digest::from_str(&hex).expect("generated digest is valid")
}

fn route_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_parse");
    let paths = [
        ("blob", format!("/v2/library/alpine/blobs/sha256:{H64}")),
        (
            "manifest_digest",
            format!("/v2/library/alpine/manifests/sha256:{H64}"),
        ),
        (
            "manifest_tag",
            "/v2/library/alpine/manifests/3.19".to_string(),
        ),
        (
            "deep_name_blob",
            format!("/v2/org/team/project/sub-component_x/image.name/blobs/sha256:{H64}"),
        ),
        ("tags_list", "/v2/library/alpine/tags/list".to_string()),
        ("rejected", "/v2/Bad/Name/manifests/..".to_string()),
    ];
    for (label, path) in &paths {
        g.bench_with_input(BenchmarkId::from_parameter(label), path, |b, p| {
            b.iter(|| black_box(Route::parse(black_box(p))))
        });
    }
    g.finish();
}

fn digest_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("digest_parse");
    let s256 = format!("sha256:{H64}");
    let s512 = format!("sha512:{H64}{H64}");
    g.bench_function("sha256", |b| {
        b.iter(|| black_box(Digest::from_str(black_box(&s256))))
    });
    g.bench_function("sha512", |b| {
        b.iter(|| black_box(Digest::from_str(black_box(&s512))))
    });
    g.finish();
}

fn digest_hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("digest_hash");
    let data: Vec<u8> = (0..4usize << 20).map(|i| (i * 31 + 7) as u8).collect();
    for (alg, name) in [(Algorithm::Sha256, "sha256"), (Algorithm::Sha512, "sha512")] {
        for size in [16usize << 10, 256 << 10, 4 << 20] {
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("{name}_update"), size),
                &size,
                |b, &n| {
                    // One streaming hasher fed repeatedly, as a fill feeds it frame by frame.
                    let mut h = Hasher::new(alg);
                    b.iter(|| h.update(black_box(&data[..n])));
                    black_box(h.finish());
                },
            );
        }
        // Whole small objects (manifests), including finalization and hex encoding.
        g.throughput(Throughput::Bytes(4096));
        g.bench_function(BenchmarkId::new(format!("{name}_digest_of"), 4096), |b| {
            b.iter(|| black_box(Hasher::digest_of(alg, black_box(&data[..4096]))))
        });
    }
    g.finish();
}

fn range(c: &mut Criterion) {
    let mut g = c.benchmark_group("range");
    let len = 256u64 << 20;
    for (label, v) in [
        ("from_to", "bytes=1048576-2097151"),
        ("open_ended", "bytes=134217728-"),
        ("suffix", "bytes=-65536"),
        ("rejected_multi", "bytes=0-1,5-9"),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| {
                black_box(parse_range(black_box(v)).map(|s| resolve_range(&s, black_box(len))))
            })
        });
    }
    g.finish();
}

/// The eviction index (`regcache::cache::index::Index`: an `lru::LruCache` plus byte totals) at 100k
/// objects: a hit, a commit, and an eviction.
fn lru_index(c: &mut Criterion) {
    use regcache::cache::index::{Entry, Index, ObjectKey};

    let mut g = c.benchmark_group("eviction_index");
    let keys: Vec<ObjectKey> = (0..LRU_ENTRIES as u64 * 2)
        .map(|i| ObjectKey::Blob(digest_for(i)))
        .collect();
    let entry = |i: usize| Entry {
        len: 1000 + i as u64,
        disk: 4096,
        used: 0,
    };
    let full = || {
        let mut ix = Index::new();
        for (i, k) in keys[..LRU_ENTRIES].iter().enumerate() {
            ix.insert(k.clone(), entry(i));
        }
        ix
    };

    // touch: a hit on a present object (promotes it to most recent).
    let mut ix = full();
    let mut i = 0usize;
    g.bench_function("touch_hit_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % LRU_ENTRIES;
            black_box(ix.touch(&keys[i]))
        })
    });

    // insert: a newly committed object (the key clone included, as a commit owns its key).
    let mut ix = full();
    let mut j = LRU_ENTRIES;
    g.bench_function("insert_100k", |b| {
        b.iter(|| {
            j = if j + 1 >= keys.len() {
                LRU_ENTRIES
            } else {
                j + 1
            };
            ix.insert(keys[j].clone(), entry(j));
        })
    });

    // pop_lru: evict the oldest, then insert it back as the newest, so the index stays at
    // 100k objects.
    let mut ix = full();
    g.bench_function("evict_then_reinsert_100k", |b| {
        b.iter(|| {
            let (k, e) = ix.pop_lru().expect("index is full");
            ix.insert(k, e);
        })
    });
    g.finish();
}

/// A rustls server connection past its handshake with an in-memory client (a self-signed
/// certificate; the ring provider's default suites, as regcache's listener negotiates them).
fn tls_server() -> rustls::Connection {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("self-signed cert");
    let cert = CertificateDer::from(generated.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut s =
        rustls::Connection::from(rustls::ServerConnection::new(Arc::new(server)).expect("server"));
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = rustls::Connection::from(
        rustls::ClientConnection::new(Arc::new(client), name).expect("client"),
    );
    // Hands `from`'s pending records to `to`.
    fn pass(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut buf = Vec::new();
        write_out(from, &mut buf);
        let mut r = &buf[..];
        while !r.is_empty() {
            to.read_tls(&mut r).expect("read_tls");
        }
        to.process_new_packets().expect("handshake");
    }
    while s.is_handshaking() || c.is_handshaking() {
        pass(&mut c, &mut s);
        pass(&mut s, &mut c);
    }
    assert!(!s.is_handshaking(), "in-memory handshake finished");
    // Every write is taken whole; the benchmark drains the records itself.
    s.set_buffer_limit(None);
    s
}

/// Moves every record `conn` has sealed into `out`.
fn write_out(conn: &mut rustls::Connection, out: &mut Vec<u8>) {
    while conn.wants_write() {
        conn.write_tls(out).expect("write_tls");
    }
}

/// rustls sealing HTTP/2-shaped writes (two records per 16,393-byte DATA frame) against
/// record-aligned writes of the same bytes (a carry of < 16 KiB so every record is full).
fn tls_records(c: &mut Criterion) {
    use std::io::{IoSlice, Write};
    const FRAMES: usize = 64;
    let payload = vec![7u8; 16 << 10];
    let head = [0u8; 9];
    let mut g = c.benchmark_group("tls_records");
    g.throughput(Throughput::Bytes((FRAMES * (9 + payload.len())) as u64));
    let mut s = tls_server();
    let mut sink = Vec::with_capacity(1 << 20);
    g.bench_function("h2_frames", |b| {
        b.iter(|| {
            for i in 0..FRAMES {
                let bufs = [IoSlice::new(&head), IoSlice::new(&payload)];
                let n = s.writer().write_vectored(&bufs).expect("seal");
                assert_eq!(n, head.len() + payload.len(), "written whole");
                if i % 4 == 3 {
                    write_out(&mut s, &mut sink);
                    sink.clear();
                }
            }
        })
    });
    let mut carry: Vec<u8> = Vec::with_capacity(payload.len());
    g.bench_function("aligned", |b| {
        b.iter(|| {
            for i in 0..FRAMES {
                let whole =
                    (carry.len() + head.len() + payload.len()) / payload.len() * payload.len();
                let take = whole - carry.len() - head.len();
                let bufs = [
                    IoSlice::new(&carry),
                    IoSlice::new(&head),
                    IoSlice::new(&payload[..take]),
                ];
                let n = s.writer().write_vectored(&bufs).expect("seal");
                assert_eq!(n, whole, "written whole");
                carry.clear();
                carry.extend_from_slice(&payload[take..]);
                if i % 4 == 3 {
                    write_out(&mut s, &mut sink);
                    sink.clear();
                }
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    route_parse,
    digest_parse,
    digest_hash,
    range,
    lru_index,
    tls_records
);
criterion_main!(benches);
