//! Test images built from seeded random bytes, written as OCI image layouts
//! (`oci-layout`, `index.json`, `blobs/sha256/...`) that skopeo pushes upstream.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;
use sha2::{Digest, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A content-addressed blob.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: &'static str,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type,
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    pub fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// splitmix64: small, seeded, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A layer: a tar of files with seeded random content (plus a compressible text file),
/// gzip'd. Returns (compressed blob, diff_id).
pub struct LayerSpec {
    pub seed: u64,
    /// Sizes of the random files in the layer.
    pub files: &'static [usize],
}

pub fn build_layer(spec: &LayerSpec) -> (Blob, String) {
    let mut rng = Rng(spec.seed);
    let mut tar = tar::Builder::new(Vec::new());
    let dir = format!("e2e/layer-{:x}", spec.seed);
    let mut append = |path: &str, data: &[u8], mode: u32, is_dir: bool| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if is_dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, path, data)
            .expect("append entry to layer tar");
    };
    append("e2e/", &[], 0o755, true);
    append(&format!("{dir}/"), &[], 0o755, true);
    let readme = format!(
        "regcache e2e layer seed {:#x}\n{}",
        spec.seed,
        "compressible text line\n".repeat(2000)
    );
    append(&format!("{dir}/README"), readme.as_bytes(), 0o644, false);
    for (i, &size) in spec.files.iter().enumerate() {
        let data = rng.bytes(size);
        append(&format!("{dir}/random-{i}.bin"), &data, 0o644, false);
    }
    let tar_bytes = tar.into_inner().expect("finish layer tar");
    let diff_id = sha256_digest(&tar_bytes);
    // Random data does not compress: big layers use stored deflate blocks (still a real gzip
    // stream, and much faster in debug builds); small ones get real compression.
    let random_bytes: usize = spec.files.iter().sum();
    let level = if random_bytes > 4 * MIB {
        Compression::none()
    } else {
        Compression::fast()
    };
    let mut gz = GzEncoder::new(Vec::new(), level);
    gz.write_all(&tar_bytes).expect("gzip layer");
    let gz_bytes = gz.finish().expect("finish gzip");
    (Blob::new(OCI_LAYER_GZIP, gz_bytes), diff_id)
}

/// One platform's image: config + manifest over some layers.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

pub fn build_platform_image(
    os: &str,
    arch: &str,
    variant: Option<&str>,
    layers: &[(Blob, String)],
    label: &str,
) -> PlatformImage {
    let diff_ids: Vec<&str> = layers.iter().map(|(_, d)| d.as_str()).collect();
    let mut config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/true"],
            "Labels": {"org.regcache.e2e": label}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| json!({"created": "2024-01-01T00:00:00Z", "created_by": "regcache e2e"})).collect::<Vec<_>>()
    });
    if let Some(v) = variant {
        config["variant"] = json!(v);
    }
    let config = Blob::new(
        OCI_CONFIG,
        serde_json::to_vec(&config).expect("serialize config"),
    );
    let layer_blobs: Vec<Blob> = layers.iter().map(|(b, _)| b.clone()).collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layer_blobs.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.title": label}
    });
    let manifest = Blob::new(
        OCI_MANIFEST,
        serde_json::to_vec_pretty(&manifest).expect("serialize manifest"),
    );
    PlatformImage {
        os: os.to_owned(),
        architecture: arch.to_owned(),
        variant: variant.map(str::to_owned),
        config,
        layers: layer_blobs,
        manifest,
    }
}

/// A tagged test image: one platform image, or an index over several.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// Repository name upstream, e.g. `library/e2e-single`.
    pub repo: String,
    pub tag: String,
    pub platforms: Vec<PlatformImage>,
    /// The OCI index, for multi-platform images.
    pub index: Option<Blob>,
    /// The OCI layout directory holding it.
    pub layout: PathBuf,
}

impl TestImage {
    /// Short docker.io name, e.g. `e2e-single:v1`.
    pub fn short_ref(&self) -> String {
        format!("{}:{}", self.repo.trim_start_matches("library/"), self.tag)
    }

    /// Fully qualified docker.io reference.
    pub fn docker_io_ref(&self) -> String {
        format!("docker.io/{}:{}", self.repo, self.tag)
    }

    /// Reference in another registry (or behind a mirror's path prefix), e.g.
    /// `ghcr.io/org/e2e-other:v1`.
    pub fn reference_in(&self, registry: &str) -> String {
        format!("{registry}/{}:{}", self.repo, self.tag)
    }

    /// The blob (config or layer) with this digest.
    pub fn blob(&self, digest: &str) -> &Blob {
        self.platforms
            .iter()
            .flat_map(|p| std::iter::once(&p.config).chain(p.layers.iter()))
            .find(|b| b.digest == digest)
            .unwrap_or_else(|| panic!("{} has no blob {digest}", self.repo))
    }

    /// The largest layer of the first platform.
    pub fn biggest_layer(&self) -> &Blob {
        self.platforms[0]
            .layers
            .iter()
            .max_by_key(|b| b.bytes.len())
            .expect("image has layers")
    }

    /// The digest a client resolves the tag to (index digest for multi-platform images).
    pub fn digest(&self) -> &str {
        match &self.index {
            Some(i) => &i.digest,
            None => &self.platforms[0].manifest.digest,
        }
    }

    pub fn is_multi(&self) -> bool {
        self.index.is_some()
    }

    /// Every blob, manifests included, deduplicated.
    pub fn all_blobs(&self) -> Vec<&Blob> {
        let mut v: Vec<&Blob> = Vec::new();
        if let Some(i) = &self.index {
            v.push(i);
        }
        for p in &self.platforms {
            v.push(&p.manifest);
            v.push(&p.config);
            v.extend(p.layers.iter());
        }
        let mut seen = std::collections::HashSet::new();
        v.retain(|b| seen.insert(b.digest.clone()));
        v
    }

    /// Digests of config and layer blobs (what `/blobs/` requests fetch).
    pub fn blob_digests(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for p in &self.platforms {
            v.push(p.config.digest.clone());
            v.extend(p.layers.iter().map(|l| l.digest.clone()));
        }
        v.sort();
        v.dedup();
        v
    }

    pub fn total_bytes(&self) -> usize {
        self.all_blobs().iter().map(|b| b.bytes.len()).sum()
    }
}

fn write_layout(dir: &Path, blobs: &[&Blob], top: &Blob, tag: &str) {
    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).expect("create OCI layout blobs dir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    for b in blobs {
        let hex = b.digest.trim_start_matches("sha256:");
        std::fs::write(blob_dir.join(hex), &b.bytes).expect("write OCI blob");
    }
    let mut desc = top.descriptor();
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("serialize index.json"),
    )
    .expect("write index.json");
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Builds `library/e2e-single:v1` (linux/amd64, three layers, one ~20 MiB),
/// `library/e2e-multi:v1` (an OCI index over linux/amd64 and linux/arm64/v8 that share a base
/// layer with each other and with e2e-single) and `library/e2e-concurrent:v1` (linux/amd64,
/// a ~10 MiB layer, nothing shared). Layouts go under `root`.
pub fn build_test_images(root: &Path) -> Vec<TestImage> {
    let base = build_layer(&LayerSpec {
        seed: 0xBA5E,
        files: &[300 * KIB, 200 * KIB],
    });
    let big = build_layer(&LayerSpec {
        seed: 0xB16,
        files: &[12 * MIB, 8 * MIB],
    });
    let app = build_layer(&LayerSpec {
        seed: 0xA99,
        files: &[1536 * KIB],
    });
    let amd = build_layer(&LayerSpec {
        seed: 0xA3D64,
        files: &[2 * MIB, 700 * KIB],
    });
    let arm = build_layer(&LayerSpec {
        seed: 0xA3364,
        files: &[MIB + 123],
    });

    let single_img = build_platform_image(
        "linux",
        "amd64",
        None,
        &[base.clone(), big, app],
        "e2e-single",
    );
    let single_dir = root.join("oci-e2e-single");
    let mut blobs = vec![&single_img.manifest, &single_img.config];
    blobs.extend(single_img.layers.iter());
    write_layout(&single_dir, &blobs, &single_img.manifest, "v1");
    let single = TestImage {
        repo: "library/e2e-single".into(),
        tag: "v1".into(),
        platforms: vec![single_img],
        index: None,
        layout: single_dir,
    };

    let multi_amd = build_platform_image(
        "linux",
        "amd64",
        None,
        &[base.clone(), amd],
        "e2e-multi-amd64",
    );
    let multi_arm = build_platform_image(
        "linux",
        "arm64",
        Some("v8"),
        &[base, arm],
        "e2e-multi-arm64",
    );
    let entries: Vec<serde_json::Value> = [&multi_amd, &multi_arm]
        .iter()
        .map(|p| {
            let mut d = p.manifest.descriptor();
            let mut platform = json!({"architecture": p.architecture, "os": p.os});
            if let Some(v) = &p.variant {
                platform["variant"] = json!(v);
            }
            d["platform"] = platform;
            d
        })
        .collect();
    let index = Blob::new(
        OCI_INDEX,
        serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
        }))
        .expect("serialize image index"),
    );
    let multi_dir = root.join("oci-e2e-multi");
    let multi = TestImage {
        repo: "library/e2e-multi".into(),
        tag: "v1".into(),
        platforms: vec![multi_amd, multi_arm],
        index: Some(index),
        layout: multi_dir.clone(),
    };
    write_layout(
        &multi_dir,
        &multi.all_blobs(),
        multi.index.as_ref().expect("multi has an index"),
        "v1",
    );

    // Pulled by all clients at once, cold, to exercise coalesced fills and the streaming tee.
    let conc_big = build_layer(&LayerSpec {
        seed: 0xC0C0,
        files: &[10 * MIB],
    });
    let conc_small = build_layer(&LayerSpec {
        seed: 0xC0C1,
        files: &[300 * KIB],
    });
    let conc_img = build_platform_image(
        "linux",
        "amd64",
        None,
        &[conc_small, conc_big],
        "e2e-concurrent",
    );
    let conc_dir = root.join("oci-e2e-concurrent");
    let mut blobs = vec![&conc_img.manifest, &conc_img.config];
    blobs.extend(conc_img.layers.iter());
    write_layout(&conc_dir, &blobs, &conc_img.manifest, "v1");
    let concurrent = TestImage {
        repo: "library/e2e-concurrent".into(),
        tag: "v1".into(),
        platforms: vec![conc_img],
        index: None,
        layout: conc_dir,
    };
    vec![single, multi, concurrent]
}

/// `org/e2e-other:v1` (linux/amd64, two layers of ~1.5 MiB in all, nothing shared with the
/// docker.io images): the image of the second registry (the ghcr.io stand-in).
pub const OTHER_REPO: &str = "org/e2e-other";

pub fn build_other_image(root: &Path) -> TestImage {
    let a = build_layer(&LayerSpec {
        seed: 0x07E1,
        files: &[900 * KIB],
    });
    let b = build_layer(&LayerSpec {
        seed: 0x07E2,
        files: &[400 * KIB, 123 * KIB],
    });
    let img = build_platform_image("linux", "amd64", None, &[a, b], "e2e-other");
    let dir = root.join("oci-e2e-other");
    let mut blobs = vec![&img.manifest, &img.config];
    blobs.extend(img.layers.iter());
    write_layout(&dir, &blobs, &img.manifest, "v1");
    TestImage {
        repo: OTHER_REPO.into(),
        tag: "v1".into(),
        platforms: vec![img],
        index: None,
        layout: dir,
    }
}
