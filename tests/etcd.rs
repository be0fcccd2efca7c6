//! The etcd source against a real etcd (Debian's `etcd-server`, started by each test on
//! loopback ports): servers on one etcd share peers, leases end records without any
//! cleanup, a leader lost mid-run loses no acknowledged write, and an etcd that is gone
//! is a clear outcome while the local file still answers. Runs with `--features etcd`;
//! a missing etcd binary fails these tests.
#![cfg(feature = "etcd")]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peer_discovery_mcp::peer::{Announcement, PeerFilter};
use peer_discovery_mcp::source::{Decision, Progress, Source};
use serde_json::{Value, json};
use support::etcd::Etcd;
use support::{Client, call, ids, ok};

/// A server on its own registry file with the etcd source on `etcd`, no background
/// cleanup (so anything that leaves, leaves by its lease).
async fn server(etcd: &Etcd, dir: &std::path::Path, name: &str, extra: &[&str]) -> Client {
    let endpoints = etcd.endpoints();
    let mut args = vec!["--etcd-endpoints", &endpoints, "--cleanup-interval", "0"];
    args.extend_from_slice(extra);
    support::start(&dir.join(format!("{name}.json")), &args).await
}

fn register_args(peer_id: &str, capabilities: &[&str], ttl: u64) -> Value {
    json!({"peer_id": peer_id, "multiaddr": "/ip4/192.0.2.9/tcp/4001",
           "capabilities": capabilities, "ttl_seconds": ttl, "sources": ["etcd"]})
}

async fn discover_etcd(client: &Client, extra: Value) -> Value {
    let mut args = json!({"sources": ["etcd"], "max_peers": 1000, "include_expired": true});
    if let (Some(args), Value::Object(extra)) = (args.as_object_mut(), extra) {
        args.extend(extra);
    }
    ok(&call(client, "discover_peers", args).await).clone()
}

/// Two servers on one etcd see each other's registrations (and the capability index
/// answers for both), each write reporting the etcd revision it landed at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd_see_each_others_peers() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = server(&etcd, dir.path(), "a", &[]).await;
    let b = server(&etcd, dir.path(), "b", &[]).await;

    let from_a = call(&a, "register_peer", register_args("agent-a", &["gpu"], 600)).await;
    let outcome = &ok(&from_a)["outcomes"]["etcd"];
    assert_eq!(outcome["status"], "ok", "{outcome}");
    assert!(
        outcome["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("etcd revision ")),
        "{outcome}"
    );
    ok(&call(&b, "register_peer", register_args("agent-b", &["cpu"], 600)).await);

    for client in [&a, &b] {
        let seen = discover_etcd(client, json!({})).await;
        assert_eq!(ids(&seen), ["agent-b", "agent-a"], "{seen}");
        assert_eq!(seen["peers"][0]["sources"], json!(["etcd"]));
        let gpu = discover_etcd(client, json!({"capability_filter": ["gpu"]})).await;
        assert_eq!(ids(&gpu), ["agent-a"], "{gpu}");
    }
    // Any etcd client finds them by capability, without this server.
    assert_eq!(
        etcd.keys("/peer-discovery/caps/gpu/"),
        ["/peer-discovery/caps/gpu/agent-a"]
    );

    // A removal by one server is seen by the other.
    let gone = call(
        &b,
        "unregister_peer",
        json!({"peer_id": "agent-a", "sources": ["etcd"]}),
    )
    .await;
    assert_eq!(ok(&gone)["removed"], true);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let seen = discover_etcd(&a, json!({})).await;
        if ids(&seen) == ["agent-b"] {
            break;
        }
        assert!(Instant::now() < deadline, "server a still sees {seen}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(etcd.keys("/peer-discovery/caps/gpu/").is_empty());
    a.cancel().await.expect("shutdown");
    b.cancel().await.expect("shutdown");
}

/// A server killed with SIGKILL leaves its peers in etcd until their leases end; then
/// they are gone (record and index keys, expired ones included) from the other server's
/// discover, with no cleanup call and no cleanup task anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_its_peers_until_their_leases_end() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoints = etcd.endpoints();
    let doomed_args: Vec<std::ffi::OsString> = vec![
        "--registry-path".into(),
        dir.path().join("doomed.json").into(),
        "--etcd-endpoints".into(),
        endpoints.into(),
        "--cleanup-interval".into(),
        "0".into(),
    ];
    let doomed_args: Vec<&std::ffi::OsStr> = doomed_args.iter().map(|a| a.as_os_str()).collect();
    let mut doomed = support::RawSession::start(&doomed_args).await;
    doomed
        .call(
            1,
            "register_peer",
            register_args("short-lived", &["gpu"], 3),
        )
        .await;
    let answer = doomed.expect_id(&json!(1)).await;
    let peer = &answer["result"]["structuredContent"]["peer"];
    assert_eq!(
        answer["result"]["structuredContent"]["outcomes"]["etcd"]["status"], "ok",
        "{answer}"
    );
    let expires_at = peer["expires_at"].as_f64().expect("expires_at");
    doomed.child.start_kill().expect("SIGKILL");
    doomed.child.wait().await.expect("killed");

    let witness = server(&etcd, dir.path(), "witness", &[]).await;
    let seen = discover_etcd(&witness, json!({})).await;
    assert_eq!(
        ids(&seen),
        ["short-lived"],
        "held until its lease ends: {seen}"
    );

    // etcd ends a lease within about a second of its TTL (it checks every 500 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = discover_etcd(&witness, json!({})).await;
        if ids(&seen).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the record outlived its lease by 10 s: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_at = support::now();
    assert!(
        gone_at >= expires_at - 0.5,
        "gone at {gone_at}, before its lease ended at {expires_at}"
    );
    assert!(
        etcd.keys("/peer-discovery/").is_empty(),
        "the record and its index keys left together"
    );
    witness.cancel().await.expect("shutdown");
}

/// A three-member cluster loses its leader (SIGKILL) while a server registers peers one
/// after another: every registration acknowledged as `ok` for etcd is in etcd at the
/// end, writes succeed again within a few seconds of the kill, and once they do, the dead
/// member (still in the client's endpoint list) fails none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_leader_loses_no_acknowledged_registration() {
    let mut etcd = Etcd::cluster(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = server(&etcd, dir.path(), "writer", &["--source-timeout", "5"]).await;

    let mut acknowledged = BTreeSet::new();
    let mut failed = 0;
    let mut failed_once_resumed = Vec::new();
    let mut killed_at = None;
    let mut resumed_after = None;
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(14) {
        if killed_at.is_none() && started.elapsed() > Duration::from_secs(2) {
            let leader = etcd.leader().expect("the cluster has a leader");
            etcd.kill(leader);
            killed_at = Some(Instant::now());
        }
        let id = format!("peer-{i:05}");
        i += 1;
        let answer = call(
            &client,
            "register_peer",
            register_args(&id, &["compute"], 600),
        )
        .await;
        let status = answer
            .structured_content
            .as_ref()
            .map(|c| c["outcomes"]["etcd"]["status"].clone());
        if status == Some(json!("ok")) {
            acknowledged.insert(id);
            if let Some(killed) = killed_at
                && resumed_after.is_none()
            {
                resumed_after = Some(killed.elapsed());
            }
        } else {
            failed += 1;
            if resumed_after.is_some() {
                failed_once_resumed.push(support::text(&answer));
            }
        }
        // Keep the total within one discover page (1,000).
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    let resumed_after = resumed_after.expect("writes resumed after the leader was killed");
    assert!(
        resumed_after < Duration::from_secs(10),
        "writes resumed only {resumed_after:?} after the kill"
    );
    assert!(acknowledged.len() > 100, "too few writes to mean anything");
    assert!(
        failed_once_resumed.is_empty(),
        "{} writes failed after the cluster had a leader again, the first: {:?}",
        failed_once_resumed.len(),
        failed_once_resumed.first()
    );

    let seen = discover_etcd(&client, json!({"capability_filter": ["compute"]})).await;
    let held: BTreeSet<String> = ids(&seen).into_iter().collect();
    let lost: Vec<&String> = acknowledged.difference(&held).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged registrations lost (of {}; {failed} failed): {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    // And etcd itself, asked without this server, holds every one.
    let keys: BTreeSet<String> = etcd
        .keys("/peer-discovery/peers/")
        .into_iter()
        .map(|k| k.trim_start_matches("/peer-discovery/peers/").to_owned())
        .collect();
    assert!(acknowledged.is_subset(&keys));
    eprintln!(
        "leader kill: {} acknowledged, {failed} failed, writes resumed {resumed_after:?} after the kill",
        acknowledged.len()
    );
    client.cancel().await.expect("shutdown");
}

/// With etcd stopped entirely, every call still answers within the source timeout:
/// etcd's outcome is `timeout` or `error` with what happened, and the local file serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_etcd_is_a_clear_outcome_while_the_local_file_answers() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let client = server(&etcd, dir.path(), "s", &["--source-timeout", "4"]).await;
    let both = json!({"peer_id": "steady", "multiaddr": "/ip4/192.0.2.9/tcp/4001"});
    let registered = call(&client, "register_peer", both.clone()).await;
    let outcomes = &ok(&registered)["outcomes"];
    assert_eq!(outcomes["etcd"]["status"], "ok", "{outcomes}");
    assert_eq!(outcomes["local_file"]["status"], "ok", "{outcomes}");

    etcd.stop();
    for (tool, args) in [
        ("discover_peers", json!({})),
        (
            "register_peer",
            json!({"peer_id": "later", "multiaddr": "/ip4/192.0.2.9/tcp/1"}),
        ),
        ("update_peer", json!({"peer_id": "steady"})),
    ] {
        let started = Instant::now();
        let answer = call(&client, tool, args).await;
        let took = started.elapsed();
        let answer = ok(&answer);
        let etcd_outcome = &answer["outcomes"]["etcd"];
        assert!(
            matches!(etcd_outcome["status"].as_str(), Some("timeout" | "error")),
            "{tool}: {etcd_outcome}"
        );
        let detail = etcd_outcome["detail"].as_str().unwrap_or_default();
        assert!(!detail.is_empty(), "{tool}: a failure says what happened");
        assert_eq!(answer["outcomes"]["local_file"]["status"], "ok", "{tool}");
        assert!(took < Duration::from_secs(6), "{tool} took {took:?}");
        if tool == "discover_peers" {
            assert_eq!(ids(answer), ["steady"], "the local file still answers");
        }
    }
    client.cancel().await.expect("shutdown");
}

/// Two source instances (two connections, as two servers have) changing one peer at the
/// same time lose nothing: every write is guarded by the record's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_two_connections_lose_no_update() {
    let etcd = Etcd::start();
    let first: Arc<dyn Source> = Arc::new(support::etcd_source(&etcd, "/race/"));
    let second: Arc<dyn Source> = Arc::new(support::etcd_source(&etcd, "/race/"));
    let now = support::now();
    let record = Announcement::new(
        "shared".into(),
        "/ip4/192.0.2.1/tcp/1",
        &[],
        Some(600),
        None,
        3600,
    )
    .expect("valid")
    .into_record(now);
    first
        .modify("shared", Box::new(move |_| Decision::Write(record.clone())))
        .await
        .expect("register");
    let increments = (0..40).map(|i| {
        let source = Arc::clone(if i % 2 == 0 { &first } else { &second });
        async move {
            source
                .modify(
                    "shared",
                    Box::new(|held| {
                        let Some(held) = held else {
                            return Decision::Keep;
                        };
                        let mut next = held.clone();
                        let n = next.metadata.get("n").and_then(Value::as_u64).unwrap_or(0);
                        next.metadata.insert("n".into(), json!(n + 1));
                        Decision::Write(next)
                    }),
                )
                .await
                .expect("increment")
        }
    });
    futures::future::join_all(increments).await;
    let everything = PeerFilter::new(&[], true, now + 1.0).expect("filter");
    for source in [&first, &second] {
        let listing = source
            .scan(&everything, &Progress::default())
            .await
            .expect("scan");
        assert_eq!(listing.peers[0].metadata.get("n"), Some(&json!(40)));
    }
}

/// The change signal (for the change feed) ticks when another connection writes, and
/// the view then holds what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_signal_ticks_on_another_servers_write() {
    let etcd = Etcd::start();
    let watcher = support::etcd_source(&etcd, "/signal/");
    let writer = support::etcd_source(&etcd, "/signal/");
    let mut changes = watcher.watch_changes().expect("the etcd source can watch");
    watcher.warm_up().await;
    changes.borrow_and_update();

    let now = support::now();
    let record = Announcement::new(
        "newcomer".into(),
        "/ip4/192.0.2.1/tcp/1",
        &["gpu".into()],
        Some(600),
        None,
        3600,
    )
    .expect("valid")
    .into_record(now);
    writer
        .modify(
            "newcomer",
            Box::new(move |_| Decision::Write(record.clone())),
        )
        .await
        .expect("register");
    tokio::time::timeout(Duration::from_secs(2), changes.changed())
        .await
        .expect("the signal ticks within 2 s")
        .expect("the signal stays open");
    let gpu = PeerFilter::new(&["gpu".into()], false, now + 1.0).expect("filter");
    let listing = watcher
        .scan(&gpu, &Progress::default())
        .await
        .expect("scan");
    assert_eq!(listing.peers.len(), 1);
    assert_eq!(listing.detail, None, "served from the watch-kept view");
}

/// A server cut off from etcd while others write and etcd compacts its history comes
/// back to the current set: its watch cannot resume from a compacted revision, so it
/// lists again, and then serves from its view (no `detail`) again. While cut off, its
/// reads fail rather than serve the old view as current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_after_compaction_lists_again() {
    let etcd = Etcd::start();
    let proxy = support::etcd::Proxy::start(&etcd.members[0].client_url).await;
    let settings = peer_discovery_mcp::source::etcd::EtcdSettings {
        endpoints: vec![proxy.url.clone()],
        prefix: "/compact/".into(),
        request_timeout: Duration::from_millis(500),
    };
    let cut_off = peer_discovery_mcp::source::EtcdSource::new(settings, None);
    let writer = support::etcd_source(&etcd, "/compact/");
    let now = support::now();
    let write = |id: &str| {
        let record = Announcement::new(
            id.into(),
            "/ip4/192.0.2.1/tcp/1",
            &[],
            Some(600),
            None,
            3600,
        )
        .expect("valid")
        .into_record(now);
        Box::new(move |_: Option<&peer_discovery_mcp::peer::PeerRecord>| {
            Decision::Write(record.clone())
        })
    };
    writer.modify("early", write("early")).await.expect("early");
    cut_off.warm_up().await;
    let everything = PeerFilter::new(&[], true, now + 1.0).expect("filter");
    let listing = cut_off
        .scan(&everything, &Progress::default())
        .await
        .expect("scan");
    assert_eq!((listing.peers.len(), listing.detail), (1, None));

    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cut_off
        .scan(&everything, &Progress::default())
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "reads still succeed through a cut link"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer
        .modify("during", write("during"))
        .await
        .expect("during");
    let removed = writer
        .modify("early", Box::new(|_| Decision::Remove))
        .await
        .expect("remove early");
    let revision: i64 = removed
        .location
        .as_deref()
        .and_then(|l| l.strip_prefix("etcd revision "))
        .and_then(|r| r.parse().ok())
        .expect("a revision");
    let compacted = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoints(),
            "compact",
            &revision.to_string(),
        ])
        .output()
        .expect("etcdctl compact");
    assert!(compacted.status.success(), "{compacted:?}");
    proxy.restore();

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(listing) = cut_off.scan(&everything, &Progress::default()).await
            && listing.detail.is_none()
        {
            let ids: Vec<&str> = listing.peers.iter().map(|p| p.peer_id.as_str()).collect();
            assert_eq!(ids, ["during"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the view did not come back within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain heartbeat renews the peer's lease and keeps it; one that changes the TTL or
/// the capabilities moves the record and its index keys to a fresh lease, deletes the
/// dropped capability's index key, and revokes the old lease; an unregister revokes the
/// lease. No lease is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_renew_the_lease_and_changes_move_to_a_fresh_one() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let client = server(&etcd, dir.path(), "s", &[]).await;
    let record = "/peer-discovery/peers/p";
    ok(&call(
        &client,
        "register_peer",
        register_args("p", &["gpu", "cpu"], 60),
    )
    .await);
    let first = etcd.lease_of(record).expect("the record is there");
    assert_ne!(first, 0, "the record is on a lease");
    assert_eq!(etcd.lease_of("/peer-discovery/caps/gpu/p"), Some(first));

    let beat = call(
        &client,
        "update_peer",
        json!({"peer_id": "p", "sources": ["etcd"]}),
    )
    .await;
    assert_eq!(ok(&beat)["outcomes"]["etcd"]["status"], "ok");
    assert_eq!(
        etcd.lease_of(record),
        Some(first),
        "a heartbeat keeps the lease"
    );

    let changed = call(
        &client,
        "update_peer",
        json!({"peer_id": "p", "capabilities": ["cpu"], "ttl_seconds": 120, "sources": ["etcd"]}),
    )
    .await;
    assert_eq!(ok(&changed)["peer"]["ttl_seconds"], 120);
    let second = etcd.lease_of(record).expect("the record is there");
    assert!(
        second != 0 && second != first,
        "a changed TTL moves to a fresh lease"
    );
    assert_eq!(etcd.lease_of("/peer-discovery/caps/cpu/p"), Some(second));
    assert_eq!(
        etcd.lease_of("/peer-discovery/caps/gpu/p"),
        None,
        "dropped index key"
    );
    assert_eq!(etcd.leases(), [second], "the old lease is revoked");

    let gone = call(
        &client,
        "unregister_peer",
        json!({"peer_id": "p", "sources": ["etcd"]}),
    )
    .await;
    assert_eq!(ok(&gone)["removed"], true);
    assert!(etcd.keys("/peer-discovery/").is_empty());
    assert!(etcd.leases().is_empty(), "the lease is revoked");
    client.cancel().await.expect("shutdown");
}

/// A cluster with auth on: the user and password from the environment reach it
/// (writes, and discover through the watch-kept view); a wrong password is an `error`
/// outcome saying the credentials were refused, and never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_the_environment_reach_an_etcd_with_auth_on() {
    const RIGHT: &str = "right-pw-5f2c";
    const WRONG: &str = "wrong-pw-9d41";
    let etcd = Etcd::start();
    etcd.etcdctl(&["user", "add", "root", "--new-user-password", RIGHT]);
    etcd.etcdctl(&["auth", "enable"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let with_password = |name: &str, password: &str| {
        let mut command = support::command();
        command
            .arg("--registry-path")
            .arg(dir.path().join(format!("{name}.json")))
            .args([
                "--etcd-endpoints",
                &etcd.endpoints(),
                "--cleanup-interval",
                "0",
            ])
            .env("PEER_REGISTRY_ETCD_USER", "root")
            .env("PEER_REGISTRY_ETCD_PASSWORD", password);
        command
    };

    let allowed = support::start_command(with_password("allowed", RIGHT)).await;
    ok(&call(
        &allowed,
        "register_peer",
        register_args("inside", &["gpu"], 600),
    )
    .await);
    let seen = discover_etcd(&allowed, json!({"capability_filter": ["gpu"]})).await;
    assert_eq!(ids(&seen), ["inside"], "{seen}");
    assert_eq!(seen["outcomes"]["etcd"].get("detail"), None, "{seen}");

    let refused = support::start_command(with_password("refused", WRONG)).await;
    let answer = call(
        &refused,
        "register_peer",
        json!({"peer_id": "outside", "multiaddr": "/ip4/192.0.2.9/tcp/1"}),
    )
    .await;
    let etcd_outcome = &ok(&answer)["outcomes"]["etcd"];
    assert_eq!(etcd_outcome["status"], "error", "{etcd_outcome}");
    let detail = etcd_outcome["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("refused the credentials"), "{detail}");
    let status = call(&refused, "registry_status", json!({})).await;
    for text in [support::text(&answer), support::text(&status)] {
        assert!(!text.contains(WRONG) && !text.contains(RIGHT), "{text}");
    }
    allowed.cancel().await.expect("shutdown");
    refused.cancel().await.expect("shutdown");
}

/// `https://` endpoints work, the member's certificate checked against the trust store
/// (here the test's CA, given in SSL_CERT_FILE); a server that does not trust it gets
/// an `error` outcome that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_checked_against_the_trust_store() {
    let etcd = Etcd::start_tls();
    let ca = etcd.ca.clone().expect("a TLS etcd has a CA");
    assert!(etcd.endpoints().starts_with("https://"));
    let dir = tempfile::tempdir().expect("tempdir");
    let command = |name: &str| {
        let mut command = support::command();
        command
            .arg("--registry-path")
            .arg(dir.path().join(format!("{name}.json")))
            .args([
                "--etcd-endpoints",
                &etcd.endpoints(),
                "--cleanup-interval",
                "0",
            ])
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        command
    };

    let mut trusting = command("trusting");
    trusting.env("SSL_CERT_FILE", &ca);
    let trusting = support::start_command(trusting).await;
    ok(&call(
        &trusting,
        "register_peer",
        register_args("over-tls", &[], 600),
    )
    .await);
    let seen = discover_etcd(&trusting, json!({})).await;
    assert_eq!(ids(&seen), ["over-tls"], "{seen}");

    let distrusting = support::start_command(command("distrusting")).await;
    let answer = call(
        &distrusting,
        "register_peer",
        json!({"peer_id": "refused", "multiaddr": "/ip4/192.0.2.9/tcp/1"}),
    )
    .await;
    let etcd_outcome = &ok(&answer)["outcomes"]["etcd"];
    assert_eq!(etcd_outcome["status"], "error", "{etcd_outcome}");
    assert!(
        etcd_outcome["detail"]
            .as_str()
            .is_some_and(|d| d.contains("certificate")),
        "{etcd_outcome}"
    );
    trusting.cancel().await.expect("shutdown");
    distrusting.cancel().await.expect("shutdown");
}

/// A member that goes down and comes back (SIGKILL, then started again on its data) is
/// reached again by the same server without a restart of the server: writes fail while
/// it is down, succeed again within seconds of its return, what was written before is
/// still there, and discover is served from the watch-kept view again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_is_reached_again() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let client = server(&etcd, dir.path(), "s", &["--source-timeout", "3"]).await;
    ok(&call(&client, "register_peer", register_args("before", &[], 600)).await);

    etcd.kill(0);
    let down = call(&client, "register_peer", register_args("during", &[], 600)).await;
    let status = down
        .structured_content
        .as_ref()
        .map(|c| c["outcomes"]["etcd"]["status"].clone());
    assert_ne!(
        status,
        Some(json!("ok")),
        "a write succeeded with etcd down"
    );

    etcd.restart(0);
    let back = Instant::now();
    loop {
        let answer = call(&client, "register_peer", register_args("after", &[], 600)).await;
        if answer.is_error == Some(false) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "writes still fail 10 s after the member came back: {}",
            support::text(&answer)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = discover_etcd(&client, json!({})).await;
        let held = ids(&seen);
        // Served from the watch-kept view again (no detail): the watch reconnected too.
        let from_view = seen["outcomes"]["etcd"].get("detail").is_none();
        if from_view && held.contains(&"before".to_owned()) && held.contains(&"after".to_owned()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "discover after the restart: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.cancel().await.expect("shutdown");
}

/// The change feed over etcd: a `peer_changes` long poll on one server sees another
/// server's registration through etcd's watch (each server has its own file, so etcd is
/// the only way across), and its removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_sees_another_servers_peers_through_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = server(&etcd, dir.path(), "a", &[]).await;
    let b = server(&etcd, dir.path(), "b", &[]).await;
    let start = ok(&call(&a, "peer_changes", json!({})).await).clone();

    let poll = call(
        &a,
        "peer_changes",
        json!({"cursor": start["cursor"], "wait_seconds": 10}),
    );
    let write = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ok(&call(
            &b,
            "register_peer",
            register_args("via-etcd", &["gpu"], 600),
        )
        .await);
        Instant::now()
    };
    let (seen, written_at) = tokio::join!(poll, write);
    let waited = written_at.elapsed();
    let seen = ok(&seen).clone();
    assert_eq!(seen["events"][0]["type"], "added", "{seen}");
    assert_eq!(seen["events"][0]["peer_id"], "via-etcd", "{seen}");
    assert_eq!(
        seen["events"][0]["peer"]["sources"],
        json!(["etcd"]),
        "{seen}"
    );
    assert!(
        waited < Duration::from_secs(1),
        "seen {waited:?} after the write"
    );

    ok(&call(
        &b,
        "unregister_peer",
        json!({"peer_id": "via-etcd", "sources": ["etcd"]}),
    )
    .await);
    let gone = ok(&call(
        &a,
        "peer_changes",
        json!({"cursor": seen["cursor"], "wait_seconds": 10}),
    )
    .await)
    .clone();
    assert_eq!(gone["events"][0]["type"], "removed", "{gone}");
    assert_eq!(gone["events"][0]["reason"], "unregistered", "{gone}");
    a.cancel().await.expect("shutdown");
    b.cancel().await.expect("shutdown");
}
