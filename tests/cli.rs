//! The command line: help documents every flag, bad configuration is one line and a
//! non-zero exit, and the flags work with or without `serve`.

mod support;

use std::process::Output;

use rmcp::transport::ConfigureCommandExt;

async fn run(args: &[&str]) -> Output {
    support::command()
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run binary")
}

/// `--help` names every flag with its environment variable and default, and never shows
/// the GitHub token even when it is set.
#[tokio::test]
async fn help_documents_every_flag() {
    let out = support::command()
        .arg("--help")
        .env("GITHUB_TOKEN", "ghp_secret_in_help_test")
        .env("GH_TOKEN", "gh_secret_in_help_test")
        .env("PEER_REGISTRY_HTTP_TOKEN", "http_secret_in_help_test")
        .output()
        .await
        .expect("run binary");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for secret in [
        "ghp_secret_in_help_test",
        "gh_secret_in_help_test",
        "http_secret_in_help_test",
    ] {
        assert!(
            !help.contains(secret) && !stderr.contains(secret),
            "--help shows the token {secret}:\n{help}{stderr}"
        );
    }
    for expected in [
        "--registry-path",
        "PEER_REGISTRY_PATH",
        "ipfs_datasets_py/peer_registry.json",
        "--default-ttl",
        "PEER_REGISTRY_DEFAULT_TTL",
        "[default: 3600]",
        "--cleanup-interval",
        "PEER_REGISTRY_CLEANUP_INTERVAL",
        "[default: 300]",
        "--source-timeout",
        "PEER_REGISTRY_SOURCE_TIMEOUT",
        "[default: 10]",
        "--http <ADDR>",
        "PEER_REGISTRY_HTTP=",
        "--http-allowed-hosts",
        "PEER_REGISTRY_HTTP_ALLOWED_HOSTS",
        "--http-allowed-origins",
        "PEER_REGISTRY_HTTP_ALLOWED_ORIGINS",
        "--http-max-sessions",
        "PEER_REGISTRY_HTTP_MAX_SESSIONS",
        "[default: 256]",
        "--http-session-idle",
        "PEER_REGISTRY_HTTP_SESSION_IDLE",
        "--http-hold-limit",
        "PEER_REGISTRY_HTTP_HOLD_LIMIT",
        "[default: 60]",
        "PEER_REGISTRY_HTTP_TOKEN",
        "serve",
    ] {
        assert!(
            help.contains(expected),
            "--help lacks {expected:?}:\n{help}"
        );
    }
}

/// Bad values are one clear line on stderr and exit code 2, before the server starts.
#[tokio::test]
async fn bad_configuration_is_one_line_and_nonzero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").expect("seed");
    let under_a_file = blocker.join("peers.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--default-ttl", "0"], "--default-ttl"),
        (vec!["--cleanup-interval", "soon"], "--cleanup-interval"),
        (vec!["--source-timeout", "0"], "--source-timeout"),
        (vec!["--no-such-flag"], "--no-such-flag"),
        (vec!["--github-repo", "not-a-repo"], "is not OWNER/NAME"),
        (vec!["--github-api-url", "ftp://x"], "is not an http(s) URL"),
        (
            vec![
                "--registry-path",
                under_a_file.to_str().expect("utf-8 path"),
            ],
            "cannot use registry file",
        ),
    ];
    for (args, expected) in cases {
        let out = run(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    }
}

/// Environment variables configure the server like flags; `serve` takes the same flags.
#[tokio::test]
async fn env_and_serve_subcommand_configure_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("from-env.json");
    let cmd = support::command().configure(|c| {
        c.arg("serve")
            .arg("--default-ttl")
            .arg("120")
            .env("PEER_REGISTRY_PATH", &path);
    });
    let client = support::start_command(cmd).await;
    let result = support::call(
        &client,
        "register_peer",
        serde_json::json!({"peer_id": "p", "multiaddr": "/ip4/127.0.0.1/tcp/1"}),
    )
    .await;
    assert_eq!(support::ok(&result)["peer"]["ttl_seconds"], 120);
    assert!(path.exists(), "PEER_REGISTRY_PATH chose the file");
    client.cancel().await.expect("shutdown");
}

/// A client that closes stdin before initializing ends the server quietly, exit code 0.
#[tokio::test]
async fn stdin_closed_before_initialize_is_a_clean_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let out = run(&["--registry-path", path.to_str().expect("utf-8 path")]).await;
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}
