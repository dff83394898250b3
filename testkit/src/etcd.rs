//! Real etcd members on loopback for the cluster tests: free ports, data in a
//! temporary directory (on tmpfs when there is one, so fsync is cheap),
//! killed and restarted by the tests, all stopped and removed on drop.
//!
//! The tests need the `etcd` binary (Debian: `apt-get install etcd-server`,
//! which CI does). Without it, [`Cluster::start`] prints why and answers
//! `None`, and the test returns early.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether an `etcd` binary is on the PATH.
pub fn installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port free now, outside Linux's ephemeral range (32768-60999): a port
/// picked inside it (by binding port 0) can be taken by any other test's
/// outgoing connection or port-0 bind before etcd binds it, or while a member
/// is down between a kill and its restart.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (start.wrapping_add(n.wrapping_mul(37)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One member.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

impl Member {
    /// `127.0.0.1:PORT` of its client API.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id while it runs (to SIGSTOP it: a member that accepts
    /// connections and never answers).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A cluster of members on loopback.
pub struct Cluster {
    pub members: Vec<Member>,
    dir: PathBuf,
    initial: String,
    /// More flags for every member (e.g. `--quota-backend-bytes`).
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` members and waits until they have a leader; `None` (with a
    /// message) when etcd is not installed.
    pub async fn start(n: usize) -> Option<Cluster> {
        Cluster::start_with(n, &[]).await
    }

    /// [`start`](Self::start) with more flags for every member.
    pub async fn start_with(n: usize, extra: &[&str]) -> Option<Cluster> {
        if !installed() {
            eprintln!(
                "SKIPPED: etcd is not installed (Debian: apt-get install etcd-server; CI installs it)"
            );
            return None;
        }
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("testkit-etcd-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            members,
            dir,
            initial,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(Duration::from_secs(30)).await;
        Some(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let data = self.dir.join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.dir.to_string_lossy()])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.members[i].child = Some(child);
    }

    /// Every member's `host:port`, for a store URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// `etcd://m0,m1,.../PREFIX` over every member.
    pub fn store_url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints().join(","))
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data (after [`kill`](Self::kill)).
    pub fn restart(&mut self, i: usize) {
        assert!(!self.members[i].running(), "member {i} is running");
        self.spawn(i);
    }

    /// Whether member `i` says it is healthy (it has a leader and answers).
    pub async fn healthy(&self, i: usize) -> bool {
        let url = format!("http://{}/health", self.members[i].endpoint());
        let ask = async {
            let mut res = surf::get(&url).await.ok()?;
            let body: serde_json::Value = res.body_json().await.ok()?;
            Some(body["health"] == "true")
        };
        matches!(
            async_std::future::timeout(Duration::from_secs(1), ask).await,
            Ok(Some(true))
        )
    }

    /// Waits until every running member is healthy.
    pub async fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for i in 0..self.members.len() {
            if !self.members[i].running() {
                continue;
            }
            while !self.healthy(i).await {
                assert!(
                    Instant::now() < deadline,
                    "etcd member {i} not healthy within {limit:?}; its log:\n{}",
                    self.log(i)
                );
                async_std::task::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The index of the member that is leader now, asked of the running members.
    pub async fn leader(&self) -> Option<usize> {
        #[derive(serde::Deserialize)]
        struct Status {
            header: Header,
            leader: String,
        }
        #[derive(serde::Deserialize)]
        struct Header {
            member_id: String,
        }
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, m) in self.members.iter().enumerate() {
            if !m.running() {
                continue;
            }
            let url = format!("http://{}/v3/maintenance/status", m.endpoint());
            let ask = async {
                let mut res = surf::post(&url).body_string("{}".into()).await.ok()?;
                res.body_json::<Status>().await.ok()
            };
            if let Ok(Some(s)) = async_std::future::timeout(Duration::from_secs(1), ask).await {
                ids.push((i, s.header.member_id));
                leader = leader.or(Some(s.leader));
            }
        }
        let leader = leader?;
        ids.into_iter()
            .find(|(_, id)| *id == leader)
            .map(|(i, _)| i)
    }

    /// What member `i` logged.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.members[i].name)))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `value` under `key` straight into etcd, with no lease, as an
/// operator's tool (or an attacker with etcd access) would: no replica's
/// rules saw it.
pub async fn put_raw(client: &discovery::etcd::client::Client, key: &str, value: &[u8]) {
    let req = discovery::etcd::client::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        lease: 0,
    };
    client.put(&req).await.expect("etcd takes the put");
}
