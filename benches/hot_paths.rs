//! Criterion benches for the hot paths: validating a record, loading and saving the
//! registry file, and a coordinator discover with a capability filter, at 1,000, 10,000
//! and 100,000 peers. Run with `cargo bench --bench hot_paths`; figures are in
//! docs/performance.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[path = "fixtures.rs"]
mod fixtures;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use peer_discovery_mcp::coordinator::{
    Coordinator, CoordinatorConfig, Direct, DiscoverQuery, EnabledSource,
};
use peer_discovery_mcp::peer::{Announcement, DEFAULT_TTL_SECONDS, PeerFilter};
use peer_discovery_mcp::source::{LocalFileSource, Progress, Source};
use serde_json::json;

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const NOW: f64 = 1_800_000_000.0;

fn prefill(path: &Path, n: usize) {
    fixtures::prefill(path, n, NOW);
}

/// A folder on tmpfs when there is one, so saves measure the work, not the disk.
fn scratch() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tempdir")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

fn validate(c: &mut Criterion) {
    let caps = vec!["storage".to_owned(), "compute".to_owned()];
    let mut metadata = serde_json::Map::new();
    metadata.insert("region".into(), json!("eu-west"));
    c.bench_function("validate announcement (libp2p multiaddr)", |b| {
        b.iter(|| {
            Announcement::new(
                "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA".into(),
                "/ip4/192.0.2.7/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
                &caps,
                Some(3600),
                Some(metadata.clone()),
                DEFAULT_TTL_SECONDS,
            )
            .expect("valid")
        })
    });
    let record = Announcement::new(
        "agent-7".into(),
        "/ip4/192.0.2.7/tcp/4001",
        &caps,
        None,
        None,
        DEFAULT_TTL_SECONDS,
    )
    .expect("valid")
    .into_record(NOW);
    c.bench_function("check stored record", |b| {
        b.iter(|| record.check().expect("valid"))
    });
}

fn registry_file(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let all = PeerFilter::new(&[], true, NOW).expect("filter");
    let mut load = c.benchmark_group("load registry file (open + first read)");
    load.measurement_time(Duration::from_secs(8));
    for n in SIZES {
        let dir = scratch();
        let path = dir.path().join("peer_registry.json");
        prefill(&path, n);
        load.sample_size(if n >= 100_000 { 10 } else { 30 });
        load.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let registry = LocalFileSource::open(&path).expect("open");
                runtime
                    .block_on(registry.scan(
                        &PeerFilter {
                            limit: Some(1),
                            ..all.clone()
                        },
                        &Progress::default(),
                    ))
                    .expect("scan")
                    .matched
            })
        });
    }
    load.finish();

    let mut save = c.benchmark_group("save registry file (register one peer, tmpfs)");
    save.measurement_time(Duration::from_secs(8));
    for n in SIZES {
        let dir = scratch();
        let path = dir.path().join("peer_registry.json");
        prefill(&path, n);
        let registry = LocalFileSource::open(&path).expect("open");
        let mut i = 0u64;
        save.sample_size(if n >= 100_000 { 10 } else { 30 });
        save.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                let record = Announcement::new(
                    format!("peer-{:06}", i % n as u64),
                    "/ip4/127.0.0.1/tcp/1",
                    &[],
                    None,
                    None,
                    DEFAULT_TTL_SECONDS,
                )
                .expect("valid")
                .into_record(NOW);
                runtime
                    .block_on(registry.register(record))
                    .expect("register")
            })
        });
    }
    save.finish();
}

fn discover(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("coordinator discover [compute], max 50");
    for n in SIZES {
        let dir = scratch();
        let path = dir.path().join("peer_registry.json");
        prefill(&path, n);
        let registry = LocalFileSource::open(&path).expect("open");
        let coordinator = Arc::new(Coordinator::new(
            vec![EnabledSource {
                source: Arc::new(registry),
                description: String::new(),
            }],
            BTreeMap::new(),
            CoordinatorConfig {
                default_ttl_seconds: DEFAULT_TTL_SECONDS,
                source_timeout: Duration::from_secs(10),
                cleanup_interval: Duration::ZERO,
            },
            Arc::new(|| NOW),
        ));
        let query = DiscoverQuery::new(&["compute".to_owned()], Some(50), false).expect("query");
        group.sample_size(if n >= 100_000 { 20 } else { 50 });
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                runtime
                    .block_on(coordinator.discover(&query, None, &Progress::default()))
                    .expect("discover")
                    .total_matched
            })
        });
    }
    group.finish();
}

criterion_group!(benches, validate, registry_file, discover);
criterion_main!(benches);
