//! The command line for people, run as a person would: the real binary, its stdout, its
//! exit code, on a temporary registry file (and a temporary cache folder, so a flag that
//! was not taken would show up as a file in the default place instead of a real home).

mod support;

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

/// A registry file in its own folder, and the folder the default path would be under.
struct Scratch {
    _dir: tempfile::TempDir,
    registry: PathBuf,
    cache_home: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = dir.path().join("peers.json");
        let cache_home = dir.path().join("cache");
        Scratch {
            _dir: dir,
            registry,
            cache_home,
        }
    }

    fn path(&self) -> &str {
        self.registry.to_str().expect("utf-8 path")
    }

    /// The binary with exactly `args`, its environment clean of registry settings.
    async fn run(&self, args: &[&str]) -> Output {
        let out = support::command()
            .args(args)
            .env("XDG_CACHE_HOME", &self.cache_home)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run binary");
        assert!(
            !self.cache_home.exists(),
            "{args:?} used the default registry path instead of the one given"
        );
        out
    }

    /// `peers ARGS... --registry-path FILE`, expecting success.
    async fn peers(&self, args: &[&str]) -> String {
        let mut all = vec!["peers"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--registry-path", self.path()]);
        let out = self.run(&all).await;
        assert_eq!(out.status.code(), Some(0), "{all:?}: {}", stderr(&out));
        stdout(&out)
    }

    /// `peers ARGS... --json --registry-path FILE`, parsed.
    async fn peers_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.peers(&all).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The row of the table that starts with `peer_id`.
fn row<'a>(table: &'a str, peer_id: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(&format!("{peer_id} ")))
        .unwrap_or_else(|| panic!("no row for {peer_id} in\n{table}"))
}

/// Registering a peer stores it; `peers list` then shows it in an aligned table with its
/// age, lease and sources, and one line per source; `--json` gives discover_peers'
/// structuredContent.
#[tokio::test]
async fn register_then_list_shows_the_peer() {
    let s = Scratch::new();
    let registered = s
        .peers(&[
            "register",
            "agent-7",
            "/ip4/192.0.2.7/tcp/4001",
            "--capability",
            "compute,storage",
            "--metadata",
            "region=eu",
            "--ttl",
            "600",
        ])
        .await;
    assert!(
        registered.starts_with("registered new peer `agent-7`; its lease ends in 9m 59s")
            || registered.starts_with("registered new peer `agent-7`; its lease ends in 10m 0s"),
        "{registered}"
    );
    assert!(registered.contains("local_file: ok\n"), "{registered}");
    let file = support::read_registry(&s.registry);
    assert_eq!(file["peers"]["agent-7"]["metadata"]["region"], "eu");

    let listed = s.peers(&["list"]).await;
    let header = listed.lines().next().expect("header");
    assert!(
        header.starts_with("PEER ID  MULTIADDR")
            && header.contains("CAPABILITIES")
            && header.contains("LAST SEEN")
            && header.contains("EXPIRES IN")
            && header.contains("SOURCES"),
        "{listed}"
    );
    let line = row(&listed, "agent-7");
    assert_eq!(
        header.find("MULTIADDR"),
        line.find("/ip4/192.0.2.7/tcp/4001")
    );
    assert!(line.contains("compute,storage"), "{line}");
    assert!(line.contains("s ago"), "{line}");
    assert!(line.contains("9m 5") || line.contains("10m 0s"), "{line}");
    assert!(line.contains("local_file"), "{line}");
    assert!(line.ends_with(r#"{"region":"eu"}"#), "{line}");
    assert!(listed.contains("\n1 peer\n"), "{listed}");
    assert!(
        listed.contains("\nlocal_file: ok (1 matched)\n"),
        "{listed}"
    );
    assert!(
        listed.contains("\ngithub: disabled (not configured"),
        "{listed}"
    );

    let json = s.peers_json(&["list", "--capability", "compute"]).await;
    assert_eq!(json["total_matched"], 1);
    assert_eq!(json["peers"][0]["peer_id"], "agent-7");
    assert_eq!(json["peers"][0]["ttl_seconds"], 600);
    assert_eq!(
        json["peers"][0]["sources"],
        serde_json::json!(["local_file"])
    );
    assert_eq!(json["outcomes"]["local_file"]["status"], "ok");
    assert_eq!(json["outcomes"]["github"]["status"], "disabled");

    let none = s.peers(&["list", "--capability", "gpu"]).await;
    assert!(
        none.starts_with("no peers with capabilities gpu\n"),
        "{none}"
    );
}

/// The server's options work before `peers`, between `peers` and its subcommand, and
/// after it, as with `serve`.
#[tokio::test]
async fn options_go_before_or_after_the_subcommand() {
    let s = Scratch::new();
    let out = s
        .run(&[
            "--default-ttl",
            "120",
            "--registry-path",
            s.path(),
            "peers",
            "register",
            "early",
            "/ip4/127.0.0.1/tcp/1",
            "--json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["peer"]["ttl_seconds"], 120);
    assert_eq!(json["created"], true);

    let out = s
        .run(&[
            "peers",
            "--registry-path",
            s.path(),
            "register",
            "late",
            "/ip4/127.0.0.1/tcp/2",
            "--default-ttl",
            "240",
            "--json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["peer"]["ttl_seconds"], 240);

    for args in [
        vec!["--registry-path", s.path(), "peers", "list"],
        vec!["peers", "--registry-path", s.path(), "list"],
        vec!["peers", "list", "--registry-path", s.path()],
    ] {
        let out = s.run(&args).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let listed = stdout(&out);
        row(&listed, "early");
        row(&listed, "late");
        assert!(listed.contains("\n2 peers\n"), "{args:?}: {listed}");
    }
}

/// `peers unregister` removes the peer; the list is then empty ("no peers"); a second
/// unregister says the peer was not there and still exits 0, as the tool's
/// `removed: false` is not an error.
#[tokio::test]
async fn unregister_removes_the_peer() {
    let s = Scratch::new();
    assert!(s.peers(&["list"]).await.starts_with("no peers\n"));
    s.peers(&["register", "leaver", "/ip4/127.0.0.1/tcp/1"])
        .await;
    s.peers(&["register", "stayer", "/ip4/127.0.0.1/tcp/2"])
        .await;
    let gone = s.peers(&["unregister", "leaver"]).await;
    assert!(gone.starts_with("unregistered `leaver`\n"), "{gone}");
    assert!(gone.contains("local_file: ok (removed)"), "{gone}");
    let listed = s.peers(&["list"]).await;
    assert!(!listed.contains("leaver"), "{listed}");
    row(&listed, "stayer");
    let again = s.peers(&["unregister", "leaver"]).await;
    assert!(
        again.starts_with("peer `leaver` was not registered in any source asked; nothing removed"),
        "{again}"
    );
    assert!(
        again.contains("local_file: ok (did not hold it)"),
        "{again}"
    );
    let json = s.peers_json(&["unregister", "leaver"]).await;
    assert_eq!(json["removed"], false);
    assert_eq!(json["peer_id"], "leaver");
}

/// Escape sequences that would clear the screen, retitle the window, recolour text, go
/// back to the start of the line or reverse it.
const CLEAR: &str = "\u{1b}[2J";
const TITLE: &str = "\u{1b}]0;title\u{7}";
const CSI8: &str = "\u{9b}31m";

/// Whether printed text holds a character that acts on a terminal: any control but the
/// newline (C0, DEL, C1 such as the 8-bit CSI), or a bidi override.
fn acts_on_terminal(text: &str) -> Option<char> {
    text.chars().find(|&c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

/// A peer whose multiaddr and metadata (key and value) hold escape sequences, `\r` and a
/// bidi override is printed with every such character escaped and visible, by
/// `register` and `list`; `--json` holds none of them raw either, yet parses back to the
/// exact strings. A record with a hostile id and capabilities, written into the file by
/// another program, breaks the format's rules: it is counted, never printed.
#[tokio::test]
async fn hostile_peer_text_cannot_act_on_the_terminal() {
    let s = Scratch::new();
    let multiaddr = format!("/unix/{TITLE}\r\u{202e}");
    let value = format!("{CLEAR}{TITLE}{CSI8}\r\u{202e}gnp.exe");
    let key = format!("k{CLEAR}");
    let out = s
        .run(&[
            "peers",
            "register",
            "odd",
            &multiaddr,
            "--metadata",
            &format!("{key}={value}"),
            "--registry-path",
            s.path(),
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let registered = stdout(&out);
    assert_eq!(acts_on_terminal(&registered), None, "{registered:?}");

    // Another program writes a record the rules refuse: a control character in the id
    // and in a capability.
    let mut file = support::read_registry(&s.registry);
    let mut bad = file["peers"]["odd"].clone();
    bad["peer_id"] = Value::String(format!("x{CLEAR}"));
    bad["capabilities"] = serde_json::json!([format!("c{TITLE}")]);
    file["peers"][format!("x{CLEAR}")] = bad;
    std::fs::write(&s.registry, file.to_string()).expect("write registry");

    let listed = s.peers(&["list"]).await;
    assert_eq!(acts_on_terminal(&listed), None, "{listed:?}");
    assert!(!listed.contains('\u{1b}'), "{listed:?}");
    let line = row(&listed, "odd");
    assert!(
        line.contains(r"/unix/\u{1b}]0;title\u{7}\u{d}\u{202e}"),
        "the escaped multiaddr is visible: {line}"
    );
    assert!(
        line.contains(r#"{"k\u001b[2J":"\u001b[2J\u001b]0;title\u0007\u009b31m\r\u202egnp.exe"}"#),
        "the escaped metadata is visible: {line}"
    );
    assert!(
        listed.contains("local_file: ok (1 matched; 1 stored record skipped"),
        "{listed}"
    );

    let out = s
        .run(&["peers", "list", "--json", "--registry-path", s.path()])
        .await;
    let raw = stdout(&out);
    assert_eq!(acts_on_terminal(&raw), None, "{raw:?}");
    let json: Value = serde_json::from_str(&raw).expect("JSON");
    let peer = &json["peers"][0];
    assert_eq!(peer["peer_id"], "odd");
    assert_eq!(peer["multiaddr"], multiaddr.as_str());
    assert_eq!(peer["metadata"][&key], value.as_str());
    assert_eq!(json["outcomes"]["local_file"]["rejected"], 1);
}

/// An error quoting a hostile argument is one line on stderr with the characters escaped.
#[tokio::test]
async fn errors_quoting_hostile_input_are_escaped() {
    let s = Scratch::new();
    for args in [
        vec!["peers", "register", "x\u{1b}[2J", "/ip4/127.0.0.1/tcp/1"],
        vec!["peers", "register", "x", "/ip4/1\u{1b}]0;t\u{7}"],
        vec!["peers", "list", "--capability", "c\u{202e}\r"],
        // clap's own message (it strips ANSI sequences itself, not a bidi override).
        vec![
            "peers",
            "register",
            "x",
            "/ip4/127.0.0.1/tcp/1",
            "--ttl",
            "\u{202e}5\r",
        ],
    ] {
        let mut args = args.clone();
        args.extend_from_slice(&["--registry-path", s.path()]);
        let out = s.run(&args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(acts_on_terminal(&err), None, "{args:?}: {err:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(r"\u{"), "the escape is visible: {err}");
    }
}

/// Input that cannot work is one line on stderr, nothing on stdout, exit code 2, and
/// the line says what was wrong.
#[tokio::test]
async fn bad_input_is_one_line_and_exit_2() {
    let s = Scratch::new();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["register", "bad id", "/ip4/127.0.0.1/tcp/1"],
            "peer_id `bad id` contains ' '",
        ),
        (
            vec!["register", "p", "/ip4/300.0.0.1/tcp/1"],
            "multiaddr `/ip4/300.0.0.1/tcp/1` does not parse",
        ),
        (
            vec![
                "register",
                "p",
                "/ip4/127.0.0.1/tcp/1",
                "--capability",
                "GPU",
            ],
            "capability `GPU` must be lower-case: use `gpu`",
        ),
        (
            vec!["register", "p", "/ip4/127.0.0.1/tcp/1", "--ttl", "0"],
            "--ttl",
        ),
        (
            vec![
                "register",
                "p",
                "/ip4/127.0.0.1/tcp/1",
                "--metadata",
                "novalue",
            ],
            "expected KEY=VALUE",
        ),
        (
            vec![
                "register",
                "p",
                "/ip4/127.0.0.1/tcp/1",
                "--metadata",
                "k=1",
                "--metadata",
                "k=2",
            ],
            "gives the key `k` twice",
        ),
        (vec!["register", "p"], "MULTIADDR"),
        (vec!["list", "--max", "0"], "--max"),
        (
            vec!["list", "--sources", "nosuch"],
            "unknown source `nosuch`",
        ),
        (vec!["list", "--sources", "Bad!"], "is not a source name"),
        (vec!["unregister", "a/b"], "peer_id `a/b` contains '/'"),
        (vec!["frobnicate"], "frobnicate"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["peers"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["--registry-path", s.path()]);
        let out = s.run(&all).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} wrote {}", stdout(&out));
    }
    assert!(
        !s.registry.exists()
            || support::read_registry(&s.registry)["peers"] == serde_json::json!({}),
        "bad input stored nothing"
    );
}

/// The options that turn GitHub on, pointed at a port where nothing listens.
fn unreachable_github<'a>(s: &'a Scratch, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--registry-path",
        s.path(),
        "--github-repo",
        "acme/peers",
        "--github-api-url",
        "http://127.0.0.1:9",
        "--source-timeout",
        "3",
    ];
    args.extend_from_slice(extra);
    args
}

async fn run_with_token(s: &Scratch, args: &[&str]) -> Output {
    let out = support::command()
        // The defaults a person gets: no RUST_LOG.
        .env_remove("RUST_LOG")
        .args(args)
        .env("XDG_CACHE_HOME", &s.cache_home)
        .env("GITHUB_TOKEN", "ghp_cli_test_secret")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run binary");
    for text in [stdout(&out), stderr(&out)] {
        assert!(
            !text.contains("ghp_cli_test_secret"),
            "token printed: {text}"
        );
    }
    out
}

/// A source that fails does not hide the others: `peers list` prints the local peers
/// and the failure, exit 0; `peers status` shows the failed check and its error. When the only source asked fails, nothing was done: one
/// line on stderr, exit 1.
#[tokio::test]
async fn a_failing_source_is_listed_and_an_undone_operation_exits_1() {
    let s = Scratch::new();
    s.peers(&[
        "register",
        "here",
        "/ip4/127.0.0.1/tcp/1",
        "--sources",
        "local_file",
    ])
    .await;

    let out = run_with_token(&s, &unreachable_github(&s, &["peers", "list"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The failure is the command's own line; no log warning repeats it.
    assert!(!stderr(&out).contains("WARN"), "{}", stderr(&out));
    let listed = stdout(&out);
    row(&listed, "here");
    assert!(
        listed.contains("\nlocal_file: ok (1 matched)\n"),
        "{listed}"
    );
    let github = listed
        .lines()
        .find(|l| l.starts_with("github: "))
        .unwrap_or_else(|| panic!("no github line in\n{listed}"));
    assert!(
        github.starts_with("github: error (") || github.starts_with("github: timeout ("),
        "{github}"
    );

    let out = run_with_token(&s, &unreachable_github(&s, &["peers", "status"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    let github = row(&shown, "github");
    assert!(
        github.starts_with("github      enabled   error, ")
            || github.starts_with("github      enabled   timeout, "),
        "{github}"
    );
    assert!(github.contains("; last error: "), "{github}");
    assert!(
        row(&shown, "local_file").contains(" ok, 1 peer, "),
        "{shown}"
    );

    let out = run_with_token(
        &s,
        &unreachable_github(
            &s,
            &[
                "peers",
                "register",
                "there",
                "/ip4/127.0.0.1/tcp/2",
                "--sources",
                "github",
            ],
        ),
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("peer-discovery-mcp: no source could serve this call: github: "),
        "{err}"
    );
}

/// `peers status` names every source, on or off, where the file is, and checks the
/// enabled ones (they answered, and how many peers they hold); `--json` is
/// registry_status' structuredContent, whose counters show that check.
#[tokio::test]
async fn status_shows_the_sources() {
    let s = Scratch::new();
    s.peers(&["register", "a", "/ip4/127.0.0.1/tcp/1"]).await;
    s.peers(&["register", "b", "/ip4/127.0.0.1/tcp/2"]).await;
    let shown = s.peers(&["status"]).await;
    assert!(shown.starts_with("SOURCE      STATE     CHECK"), "{shown}");
    let local = row(&shown, "local_file");
    assert!(local.contains(" enabled "), "{local}");
    assert!(local.contains(" ok, 2 peers, "), "{local}");
    assert!(local.contains(s.path()), "{local}");
    let github = row(&shown, "github");
    assert!(github.contains(" disabled  -"), "{github}");
    assert!(github.contains("--github-repo"), "{github}");
    row(&shown, "etcd");
    assert!(shown.contains("default lease 3600s"), "{shown}");

    let json = s.peers_json(&["status"]).await;
    let sources = json["sources"].as_array().expect("sources");
    let names: Vec<&str> = sources
        .iter()
        .map(|s| s["source"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["local_file", "github", "etcd"]);
    assert_eq!(sources[0]["enabled"], true);
    assert_eq!(sources[0]["stats"]["calls"], 1);
    assert_eq!(sources[1]["enabled"], false);
    assert_eq!(json["default_ttl_seconds"], 3600);
}

/// Each subcommand's `--help` has examples and the server's options (they are global).
#[tokio::test]
async fn help_has_examples() {
    let s = Scratch::new();
    for (sub, example) in [
        ("list", "peers list --capability compute"),
        ("register", "peers register agent-7 /ip4/192.0.2.7/tcp/4001"),
        ("unregister", "peers unregister agent-7"),
        ("status", "peers status"),
    ] {
        let out = s.run(&["peers", sub, "--help"]).await;
        assert_eq!(out.status.code(), Some(0), "{sub}: {}", stderr(&out));
        let help = stdout(&out);
        assert!(help.contains("Examples:"), "{sub}: {help}");
        assert!(help.contains(example), "{sub}: {help}");
        assert!(help.contains("--registry-path"), "{sub}: {help}");
    }
    let out = s.run(&["peers", "--help"]).await;
    let help = stdout(&out);
    for sub in ["list", "register", "unregister", "status"] {
        assert!(help.contains(&format!("  {sub} ")), "{help}");
    }
}

/// A reader that goes away (`peers list | head -0`) ends the command quietly with exit
/// code 0: no panic, nothing on stderr.
#[tokio::test]
async fn a_closed_stdout_ends_the_command_quietly() {
    let s = Scratch::new();
    s.peers(&["register", "p", "/ip4/127.0.0.1/tcp/1"]).await;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    // spawn, not output(): tokio's output() replaces stdout with a pipe of its own.
    let out = support::command()
        .args(["peers", "list", "--registry-path", s.path()])
        .env("XDG_CACHE_HOME", &s.cache_home)
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run binary")
        .wait_with_output()
        .await
        .expect("wait for the binary");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

/// stdout that cannot take the output (a full disk: `/dev/full`) is not a silent
/// success: one line on stderr, exit code 1.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_unwritable_stdout_is_an_error() {
    let s = Scratch::new();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = support::command()
        .args(["peers", "status", "--registry-path", s.path()])
        .env("XDG_CACHE_HOME", &s.cache_home)
        .stdin(std::process::Stdio::null())
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run binary")
        .wait_with_output()
        .await
        .expect("wait for the binary");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        "peer-discovery-mcp: cannot write to stdout: No space left on device (os error 28)\n"
    );
}

/// Drops what depends on the moment of the call (the lease countdown).
fn without_countdown(mut value: Value) -> Value {
    if let Some(peers) = value["peers"].as_array_mut() {
        for peer in peers {
            peer.as_object_mut()
                .expect("peer object")
                .remove("expires_in_seconds");
        }
    }
    value
}

/// `peers list --json` is what the server's discover_peers answers as structuredContent
/// for the same registry and arguments (apart from the countdown, which moves).
#[tokio::test]
async fn list_json_is_the_tools_structured_content() {
    let s = Scratch::new();
    s.peers(&[
        "register",
        "a",
        "/ip4/127.0.0.1/tcp/1",
        "--capability",
        "compute",
    ])
    .await;
    s.peers(&["register", "b", "/ip4/127.0.0.1/tcp/2", "--metadata", "k=v"])
        .await;
    let cli = s
        .peers_json(&["list", "--capability", "compute", "--max", "5"])
        .await;
    let client = support::start(&s.registry, &[]).await;
    let tool = support::call(
        &client,
        "discover_peers",
        serde_json::json!({"capability_filter": ["compute"], "max_peers": 5}),
    )
    .await;
    let tool = support::ok(&tool).clone();
    client.cancel().await.expect("shutdown");
    assert_eq!(without_countdown(cli), without_countdown(tool));
}

/// Starts `peers watch ARGS --registry-path FILE` and waits until it says it watches.
async fn start_watch(
    s: &Scratch,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = support::command()
        .args(["peers", "watch"])
        .args(args)
        .args(["--registry-path", s.path()])
        .env("XDG_CACHE_HOME", &s.cache_home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn peers watch");
    let mut errors = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let said = tokio::time::timeout(std::time::Duration::from_secs(20), errors.next_line())
        .await
        .expect("peers watch starts")
        .expect("stderr")
        .unwrap_or_default();
    assert!(said.contains("watching"), "{said}");
    let lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(5), lines.next_line())
        .await
        .expect("an event line within 5 s")
        .expect("stdout")
        .expect("a line")
}

/// `peers watch` prints one line an event as other processes register, change and
/// remove peers (one JSON object a line with `--json`), a hostile peer's text escaped,
/// and stops cleanly on SIGTERM.
#[tokio::test]
async fn watch_prints_one_line_an_event() {
    let s = Scratch::new();
    let (mut json_watch, mut json_lines) = start_watch(&s, &["--json"]).await;
    let (mut table_watch, mut table_lines) = start_watch(&s, &["--capability", "compute"]).await;

    s.peers(&[
        "register",
        "agent-7",
        "/ip4/192.0.2.7/tcp/4001",
        "--capability",
        "compute",
    ])
    .await;
    let added: Value = serde_json::from_str(&next_line(&mut json_lines).await).expect("JSON line");
    assert_eq!(added["type"], "added");
    assert_eq!(added["peer_id"], "agent-7");
    assert_eq!(
        added["peer"]["capabilities"],
        serde_json::json!(["compute"])
    );
    let line = next_line(&mut table_lines).await;
    assert!(
        line.starts_with("added") && line.contains("agent-7"),
        "{line}"
    );

    let value = format!("{CLEAR}{TITLE}\r\u{202e}");
    s.peers(&[
        "register",
        "agent-7",
        "/ip4/192.0.2.7/tcp/4001",
        "--capability",
        "compute",
        "--metadata",
        &format!("note={value}"),
    ])
    .await;
    let updated = next_line(&mut json_lines).await;
    assert_eq!(acts_on_terminal(&updated), None, "{updated:?}");
    let updated: Value = serde_json::from_str(&updated).expect("JSON line");
    assert_eq!(updated["type"], "updated");
    assert_eq!(updated["peer"]["metadata"]["note"], value.as_str());
    let line = next_line(&mut table_lines).await;
    assert_eq!(acts_on_terminal(&line), None, "{line:?}");
    assert!(
        line.starts_with("updated") && line.contains(r"\u001b[2J"),
        "{line}"
    );

    s.peers(&["unregister", "agent-7"]).await;
    let removed: Value =
        serde_json::from_str(&next_line(&mut json_lines).await).expect("JSON line");
    assert_eq!(removed["type"], "removed");
    assert_eq!(removed["reason"], "unregistered");
    let line = next_line(&mut table_lines).await;
    assert_eq!(line, "removed  agent-7  (unregistered)");

    for child in [&mut json_watch, &mut table_watch] {
        let pid = child.id().expect("pid").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
            .await
            .expect("stops on SIGTERM")
            .expect("wait");
        assert!(status.success(), "{status:?}");
    }
}
