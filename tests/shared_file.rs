//! Several server processes share one registry file: nothing is lost, and a corrupt file
//! is kept aside and reported instead of being overwritten.

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{call, ok, read_registry};

async fn fill(client: &support::Client, prefix: &str, count: usize) {
    for i in 0..count {
        let result = call(
            client,
            "register_peer",
            json!({"peer_id": format!("{prefix}-{i}"), "multiaddr": "/ip4/127.0.0.1/tcp/4001"}),
        )
        .await;
        ok(&result);
    }
}

/// Two server processes registering 200 distinct peers each, at the same time, into one
/// file end with all 400 in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    let a = support::start(&path, &[]).await;
    let b = support::start(&path, &[]).await;
    tokio::join!(fill(&a, "a", 200), fill(&b, "b", 200));

    let file = read_registry(&path);
    let peers = file["peers"].as_object().expect("peers");
    assert_eq!(peers.len(), 400);
    for i in 0..200 {
        assert!(peers.contains_key(&format!("a-{i}")) && peers.contains_key(&format!("b-{i}")));
    }
    let listed = call(&a, "discover_peers", json!({"max_peers": 1000})).await;
    assert_eq!(ok(&listed)["total_matched"], 400);
    a.cancel().await.expect("shutdown");
    b.cancel().await.expect("shutdown");
}

/// A registry file `peers` of `count` valid records, as the Python module writes it.
fn registry_of(count: usize, last_seen: f64) -> Vec<u8> {
    let peers: serde_json::Map<String, Value> = (0..count)
        .map(|i| {
            let id = format!("py-{i:05}");
            let mut record = support::record_json(&id, &["storage"], last_seen, 3600);
            record["source"] = json!("local_file");
            (id, record)
        })
        .collect();
    serde_json::to_vec(&json!({"peers": peers, "last_cleanup": 0.0})).expect("json")
}

/// What the Python module does on every save: `open(path, "w")` then `json.dump`, which
/// truncates the file and writes it in small pieces, with no lock and no rename.
fn write_in_place_like_python(path: &Path, content: &[u8]) {
    let mut file = std::fs::File::create(path).expect("open for writing");
    for (i, piece) in content.chunks(8 * 1024).enumerate() {
        file.write_all(piece).expect("write");
        if i % 8 == 7 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn corrupt_copies(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .map(|e| e.path())
        .collect()
}

/// The Python module rewrites the shared 1,000-peer file in place, without a lock, over
/// and over, while the server answers 200 discovers: no read ever moves the file aside,
/// every answer that is not an error sees all 1,000 peers (the last good view), and the
/// file still holds them all afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlocked_writer_in_place_never_costs_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    let content = registry_of(1000, support::now());
    std::fs::write(&path, &content).expect("seed");
    let client = support::start(&path, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut rewrites = 0;
            while !stop.load(Ordering::Relaxed) {
                write_in_place_like_python(&path, &content);
                rewrites += 1;
                // The module loads the file again before its next save.
                std::thread::sleep(Duration::from_millis(20));
            }
            rewrites
        })
    };
    let mut served = 0;
    for _ in 0..200 {
        let found = call(&client, "discover_peers", json!({"max_peers": 1})).await;
        if found.is_error == Some(true) {
            // Only before the server ever read a whole file (a cold start).
            let message = support::err(&found);
            assert!(
                served == 0 && message.contains("another process may be writing it"),
                "{message}"
            );
        } else {
            assert_eq!(
                ok(&found)["total_matched"],
                1000,
                "after {served} served: {:?}",
                ok(&found)["outcomes"]
            );
            served += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rewrites = writer.join().expect("writer");
    assert!(rewrites > 10, "the writer only rewrote {rewrites} times");
    assert!(served > 0);
    assert!(
        corrupt_copies(dir.path()).is_empty(),
        "a read moved the file aside"
    );
    assert_eq!(
        read_registry(&path)["peers"]
            .as_object()
            .expect("peers")
            .len(),
        1000
    );
    let found = call(&client, "discover_peers", json!({"max_peers": 1})).await;
    assert_eq!(ok(&found)["total_matched"], 1000);
    client.cancel().await.expect("shutdown");
}

/// A tmp cleaner deletes the `.lock` sidecar every millisecond or two while two servers
/// register 300 peers each: every acknowledged registration is in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_lock_files_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    let lock_file = dir.path().join("peer_registry.json.lock");
    let a = support::start(&path, &[]).await;
    let b = support::start(&path, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let cleaner = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut deleted = 0;
            while !stop.load(Ordering::Relaxed) {
                if std::fs::remove_file(&lock_file).is_ok() {
                    deleted += 1;
                }
                std::thread::sleep(Duration::from_micros(1500));
            }
            deleted
        })
    };
    tokio::join!(fill(&a, "a", 300), fill(&b, "b", 300));
    stop.store(true, Ordering::Relaxed);
    let deleted = cleaner.join().expect("cleaner");
    assert!(
        deleted > 10,
        "the lock file was only deleted {deleted} times"
    );
    let peers = read_registry(&path)["peers"]
        .as_object()
        .expect("peers")
        .clone();
    let lost: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|p| (0..300).map(move |i| format!("{p}-{i}")))
        .filter(|id| !peers.contains_key(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged but lost, first: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    a.cancel().await.expect("shutdown");
    b.cancel().await.expect("shutdown");
}

/// A registry path that is a symlink (to where the Python module writes) stays one file:
/// the server writes the target and the link stays a link, so both see each other.
#[tokio::test]
async fn a_symlinked_registry_stays_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("python-cache");
    std::fs::create_dir(&shared).expect("dir");
    let target = shared.join("peer_registry.json");
    let link = dir.path().join("peers.json");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let client = support::start(&link, &[]).await;
    ok(&call(
        &client,
        "register_peer",
        json!({"peer_id": "ours", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await);
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink(),
        "the link was replaced by a file"
    );
    // The Python module adds its peer to the target, in place.
    let mut file = read_registry(&target);
    let mut theirs = support::record_json("theirs", &[], support::now(), 3600);
    theirs["source"] = json!("local_file");
    file["peers"]["theirs"] = theirs;
    write_in_place_like_python(&target, &serde_json::to_vec(&file).expect("json"));
    let found = call(&client, "discover_peers", json!({})).await;
    let mut ids = support::ids(ok(&found));
    ids.sort();
    assert_eq!(ids, ["ours", "theirs"]);
    client.cancel().await.expect("shutdown");
}

/// Another process holds the registry lock (a stopped server): the server still answers
/// `initialize` and reads at once; a write fails with a timeout that names the lock, and
/// is withdrawn: it does not land when the lock frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_blocks_only_writes_and_a_failed_write_never_lands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    let mut seeded = read_json_bytes(&registry_of(1, support::now()));
    seeded["peers"]["py-00000"]["source"] = json!("local_file");
    std::fs::write(&path, serde_json::to_vec(&seeded).expect("json")).expect("seed");
    // flock locks belong to an open file: a handle of this test process conflicts with
    // the server's exactly as another process's would.
    let holder = std::fs::File::open(dir.path()).expect("folder");
    holder.lock().expect("hold the lock");

    let client = tokio::time::timeout(
        Duration::from_secs(60),
        support::start(&path, &["--source-timeout", "1"]),
    )
    .await
    .expect("initialize is answered while the lock is held");
    let found = call(&client, "discover_peers", json!({})).await;
    assert_eq!(support::ids(ok(&found)), ["py-00000"]);

    let refused = call(
        &client,
        "register_peer",
        json!({"peer_id": "late", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await;
    let message = support::err(&refused);
    assert!(
        message.contains("timeout")
            && message.contains("lock")
            && message.contains("withdrawn and not applied"),
        "{message}"
    );

    holder.unlock().expect("release");
    ok(&call(
        &client,
        "register_peer",
        json!({"peer_id": "after", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await);
    let peers = read_registry(&path)["peers"].clone();
    assert!(peers["after"].is_object());
    assert!(
        peers.get("late").is_none(),
        "a write reported as failed landed"
    );
    client.cancel().await.expect("shutdown");
}

fn read_json_bytes(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("json")
}

/// A corrupt registry file: reads never move it (with no good view they say to retry);
/// the first write keeps it aside once it stayed broken and unchanged for 2 s, reports
/// it, and is answered as done even though that took longer than the source timeout
/// (the write had taken the lock: it lands, so it is not reported as failed).
#[tokio::test]
async fn corrupt_file_is_kept_aside_by_a_writer_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    let garbage = b"{\"peers\": {\"half-written\": {\"peer_id\": ";
    std::fs::write(&path, garbage).expect("seed");

    let client = support::start(&path, &["--source-timeout", "1"]).await;
    let found = call(&client, "discover_peers", json!({})).await;
    let message = support::err(&found);
    assert!(message.contains("retry in a moment"), "{message}");
    assert!(
        corrupt_copies(dir.path()).is_empty(),
        "a read moved the file"
    );

    let stored = call(
        &client,
        "register_peer",
        json!({"peer_id": "p", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await;
    let stored = ok(&stored).clone();
    let detail = stored["outcomes"]["local_file"]["detail"]
        .as_str()
        .unwrap_or("");
    assert!(
        detail.contains("did not parse") && detail.contains("kept aside"),
        "{detail}"
    );
    assert_eq!(stored["outcomes"]["local_file"]["status"], "ok");
    let aside = corrupt_copies(dir.path());
    assert_eq!(aside.len(), 1, "one copy kept aside");
    assert_eq!(std::fs::read(&aside[0]).expect("aside"), garbage);
    assert!(read_registry(&path)["peers"]["p"].is_object());

    let again = call(&client, "discover_peers", json!({})).await;
    assert!(
        ok(&again)["outcomes"]["local_file"].get("detail").is_none(),
        "reported once"
    );
    client.cancel().await.expect("shutdown");
}

/// A directory or a FIFO at the registry path is refused at start with one line on
/// stderr and a non-zero exit (a FIFO would otherwise block every read).
#[tokio::test]
async fn a_directory_or_fifo_is_not_a_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    for (path, says) in [(dir.path().to_path_buf(), "a directory"), (fifo, "FIFO")] {
        let out = support::command()
            .arg("--registry-path")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run");
        assert!(!out.status.success(), "{path:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// A registry file the Python module created readable by everyone is written back
/// readable by its owner only.
#[tokio::test]
async fn a_world_readable_registry_is_narrowed_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer_registry.json");
    std::fs::write(&path, registry_of(1, support::now())).expect("seed");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let client = support::start(&path, &[]).await;
    ok(&call(
        &client,
        "register_peer",
        json!({"peer_id": "p", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await);
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    client.cancel().await.expect("shutdown");
}
