//! The etcd source's options, in every build: documented in `--help`, checked before the
//! server starts, never echoing a secret; a build without the `etcd` feature refuses
//! `--etcd-endpoints` with how to build it in, and reports `etcd` as `disabled`.

mod support;

use serde_json::json;
use support::{call, ok};

const PASSWORD: &str = "s3cr3t-etcd-pw";

async fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = support::command();
    command.args(args).stdin(std::process::Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().await.expect("run binary")
}

/// `--help` documents the etcd options with their environment variables and default,
/// and never shows the password even when it is set.
#[tokio::test]
async fn help_documents_the_etcd_options() {
    let out = run(&["--help"], &[("PEER_REGISTRY_ETCD_PASSWORD", PASSWORD)]).await;
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains(PASSWORD), "--help shows the password");
    for expected in [
        "etcd source",
        "--etcd-endpoints",
        "PEER_REGISTRY_ETCD_ENDPOINTS",
        "--etcd-prefix",
        "PEER_REGISTRY_ETCD_PREFIX",
        "[default: /peer-discovery/]",
        "--etcd-timeout",
        "PEER_REGISTRY_ETCD_TIMEOUT",
        "PEER_REGISTRY_ETCD_USER",
        "PEER_REGISTRY_ETCD_PASSWORD",
    ] {
        assert!(
            help.contains(expected),
            "--help lacks {expected:?}:\n{help}"
        );
    }
}

/// A bad endpoint is one line and exit code 2, in every build; one holding a password
/// is refused without echoing it.
#[tokio::test]
async fn bad_endpoints_are_one_line_without_the_secret() {
    let with_password = format!("http://root:{PASSWORD}@127.0.0.1:2379");
    for (endpoint, expected) in [
        ("ftp://127.0.0.1:2379", "not an endpoint"),
        ("http://127.0.0.1", "not an endpoint"),
        (with_password.as_str(), "PEER_REGISTRY_ETCD_PASSWORD"),
    ] {
        let out = run(&["--etcd-endpoints", endpoint], &[]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{endpoint}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{endpoint}: {stderr}");
        assert!(
            !stderr.contains(PASSWORD),
            "the password was echoed: {stderr}"
        );
    }
}

/// Built without the feature, `--etcd-endpoints` stops the server with one line that
/// says how to build it in.
#[cfg(not(feature = "etcd"))]
#[tokio::test]
async fn without_the_feature_endpoints_say_how_to_build_it_in() {
    let out = run(&["--etcd-endpoints", "http://127.0.0.1:2379"], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--features etcd"), "{stderr}");
}

/// Not configured, `etcd` answers `disabled` with how to turn it on in this build.
#[tokio::test]
async fn unconfigured_etcd_is_disabled_with_how_to_turn_it_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = support::start(&dir.path().join("r.json"), &[]).await;
    let found = call(&client, "discover_peers", json!({})).await;
    let etcd = &ok(&found)["outcomes"]["etcd"];
    assert_eq!(etcd["status"], "disabled", "{etcd}");
    let detail = etcd["detail"].as_str().expect("detail");
    let how = if cfg!(feature = "etcd") {
        "--etcd-endpoints"
    } else {
        "--features etcd"
    };
    assert!(detail.contains(how), "{detail}");
    client.cancel().await.expect("shutdown");
}

/// With the feature: a user without a password (or the reverse) stops the server with
/// one line; an unreachable cluster is an `error` outcome that never shows the password.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn credentials_are_checked_and_never_shown() {
    let out = run(
        &["--etcd-endpoints", "http://127.0.0.1:2379"],
        &[("PEER_REGISTRY_ETCD_USER", "root")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PEER_REGISTRY_ETCD_PASSWORD"), "{stderr}");

    // Nothing listens on port 1.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = support::command();
    command
        .arg("--registry-path")
        .arg(dir.path().join("r.json"))
        .args([
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--source-timeout",
            "3",
        ])
        .env("PEER_REGISTRY_ETCD_USER", "root")
        .env("PEER_REGISTRY_ETCD_PASSWORD", PASSWORD);
    let client = support::start_command(command).await;
    let found = call(&client, "discover_peers", json!({})).await;
    let outcomes = &ok(&found)["outcomes"];
    assert!(
        matches!(
            outcomes["etcd"]["status"].as_str(),
            Some("error" | "timeout")
        ),
        "{outcomes}"
    );
    let status = call(&client, "registry_status", json!({})).await;
    for text in [found, status].iter().map(support::text) {
        assert!(!text.contains(PASSWORD), "the password was shown: {text}");
    }
    client.cancel().await.expect("shutdown");
}
