//! Real etcd for the tests: Debian's `etcd` (package `etcd-server`) started on loopback
//! ports the OS picks, its data in a temporary folder, killed when dropped. A single
//! member or a cluster. A missing `etcd` binary fails the test that needs it: with the
//! `etcd` feature on, these tests never skip.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary; `PEER_REGISTRY_TEST_ETCD` overrides it.
fn etcd_binary() -> String {
    std::env::var("PEER_REGISTRY_TEST_ETCD").unwrap_or_else(|_| "etcd".to_owned())
}

/// Attempts at starting a cluster when a picked port was taken meanwhile.
const START_ATTEMPTS: usize = 5;

pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of one or more members on loopback, stopped on drop.
pub struct Etcd {
    pub members: Vec<Member>,
    initial_cluster: String,
    /// With TLS on the client URLs: the CA that signed the members' certificate.
    pub ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// A free port on 127.0.0.1, as the OS picks it (free when asked: another process may
/// take it before etcd binds it, which [`Etcd::cluster`] retries).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a loopback port")
        .port()
}

impl Etcd {
    /// A single member.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// `size` members forming one cluster; waits until it has a leader.
    pub fn cluster(size: usize) -> Etcd {
        Etcd::start_with(size, false)
    }

    /// A single member serving clients over TLS (https://), with a certificate for
    /// 127.0.0.1 signed by a CA made for it ([`Etcd::ca`]); needs `openssl`.
    pub fn start_tls() -> Etcd {
        Etcd::start_with(1, true)
    }

    fn start_with(size: usize, tls: bool) -> Etcd {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Etcd::try_cluster(size, tls) {
                Ok(etcd) => return etcd,
                Err(why) => last = why,
            }
        }
        panic!("could not start etcd in {START_ATTEMPTS} attempts: {last}");
    }

    fn try_cluster(size: usize, tls: bool) -> Result<Etcd, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = tls.then(|| make_certificates(dir.path()));
        let scheme = if tls { "https" } else { "http" };
        let members: Vec<Member> = (0..size)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_port()),
                    data_dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial_cluster,
            ca,
            _dir: dir,
        };
        for i in 0..size {
            etcd.launch(i);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            for member in &mut etcd.members {
                if let Some(child) = member.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
                    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                    return Err(format!("{} exited ({status}): {tail}", member.name));
                }
            }
            if (0..size).all(|i| etcd.healthy(i)) {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("etcd did not become healthy within 20 s".into())
    }

    fn launch(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let member = &mut self.members[i];
        let log = std::fs::File::create(&member.log).expect("etcd log file");
        let mut command = Command::new(etcd_binary());
        if member.client_url.starts_with("https://") {
            let certificates = member.data_dir.with_file_name("certificates");
            command
                .arg("--cert-file")
                .arg(certificates.join("server.pem"))
                .arg("--key-file")
                .arg(certificates.join("server.key"));
        }
        let child = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(&member.client_url)
            .arg("--advertise-client-urls")
            .arg(&member.client_url)
            .arg("--listen-peer-urls")
            .arg(&member.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&member.peer_url)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("peer-discovery-test")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{}` ({e}): the etcd tests need etcd on PATH (Debian: apt-get install etcd-server)",
                    etcd_binary()
                )
            });
        member.child = Some(child);
    }

    /// The client URLs of every member, comma-separated (for --etcd-endpoints).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether member `i` answers `/health` with a leader.
    pub fn healthy(&self, i: usize) -> bool {
        if let Some(ca) = &self.ca {
            return Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg("--cacert")
                .arg(ca)
                .args([
                    "--endpoints",
                    &self.members[i].client_url,
                    "endpoint",
                    "health",
                ])
                .output()
                .is_ok_and(|o| o.status.success());
        }
        let address = self.members[i].client_url.trim_start_matches("http://");
        let Ok(mut stream) = TcpStream::connect(address) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request =
            format!("GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// SIGKILL member `i` (no goodbye to the cluster).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every member.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts member `i` again on its data and ports (after [`Etcd::kill`]), and waits
    /// until it answers.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy(i) {
            assert!(
                Instant::now() < deadline,
                "member {i} did not come back in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index of the current leader, asked of the live members with etcdctl.
    pub fn leader(&self) -> Option<usize> {
        let live: Vec<&Member> = self.members.iter().filter(|m| m.child.is_some()).collect();
        let endpoints = live
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &endpoints,
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl (Debian: apt-get install etcd-client)");
        let statuses: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        for status in statuses.as_array()? {
            let header = &status["Status"]["header"];
            if header["member_id"] == status["Status"]["leader"] {
                let endpoint = status["Endpoint"].as_str()?;
                return self.members.iter().position(|m| m.client_url == endpoint);
            }
        }
        None
    }

    /// `etcdctl get --prefix PREFIX --keys-only` on the live members: the keys there.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let live = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &live,
                "get",
                "--prefix",
                prefix,
                "--keys-only",
            ])
            .output()
            .expect("etcdctl (Debian: apt-get install etcd-client)");
        assert!(
            output.status.success(),
            "etcdctl get failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy on loopback in front of one member, that a test can cut (every
/// connection through it dropped, new ones refused) and restore: a network fault
/// between one server and etcd, while other clients still reach it.
pub struct Proxy {
    pub url: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `upstream` (`http://HOST:PORT`). Needs a tokio runtime.
    pub async fn start(upstream: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let open = std::sync::Arc::clone(&open);
            let connections = std::sync::Arc::clone(&connections);
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections
                        .lock()
                        .expect("connections")
                        .push(task.abort_handle());
                }
            })
        };
        Proxy {
            url,
            open,
            connections,
            accept,
        }
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().expect("connections").drain(..) {
            connection.abort();
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

impl Etcd {
    /// The lease id of `key` (0: none; `None`: no such key), asked with etcdctl.
    pub fn lease_of(&self, key: &str) -> Option<i64> {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints(), "get", key, "-w", "json"])
            .output()
            .expect("etcdctl (Debian: apt-get install etcd-client)");
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        let kv = answer["kvs"].as_array()?.first()?;
        Some(kv["lease"].as_i64().unwrap_or(0))
    }

    /// The ids of every lease the cluster holds.
    pub fn leases(&self) -> Vec<i64> {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoints(),
                "lease",
                "list",
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl (Debian: apt-get install etcd-client)");
        let answer: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("lease list JSON");
        answer["leases"]
            .as_array()
            .map(|leases| leases.iter().filter_map(|l| l["id"].as_i64()).collect())
            .unwrap_or_default()
    }
}

impl Etcd {
    /// Runs etcdctl with `args` against every live member; panics when it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints()])
            .args(args)
            .output()
            .expect("etcdctl (Debian: apt-get install etcd-client)");
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it, in
/// `dir/certificates/`; returns the CA's path.
fn make_certificates(dir: &std::path::Path) -> PathBuf {
    let certificates = dir.join("certificates");
    std::fs::create_dir_all(&certificates).expect("certificates folder");
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&certificates)
            .output()
            .expect("openssl (Debian: apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=peer-discovery-test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        certificates.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    certificates.join("ca.pem")
}
