//! What hostile peers cannot make the gateway hold or do: a watch stream
//! without end, a config path that is not a regular file, a head whose
//! fields the gateway's own would take past the apps' limit, and
//! `Connection` tokens naming what the instance must see.

use crate::common::{raw_system, System};
use async_std::io::{ReadExt, WriteExt};
use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures_lite::FutureExt;
use nix::sys::signal::Signal;
use serde_json::json;
use shared::shutdown::Trigger;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::procs::Proc;
use testkit::raw::{RawInstance, Script};
use testkit::system::{exchange_raw, metric, refused, wait_ring};
use testkit::tempdir::TempDir;

/// Generous for a loaded 2-core machine: conditions are polled, not slept on.
const LIMIT: Duration = Duration::from_secs(30);

/// A fresh temp dir with a `gateway.json` in it, removed on drop (also when
/// the test fails).
struct ConfigDir {
    dir: TempDir,
}

impl ConfigDir {
    fn new(name: &str) -> ConfigDir {
        ConfigDir {
            dir: TempDir::new(&format!("gateway-bounds-{name}")),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("gateway.json")
    }

    /// Replaces whatever is at the config path: write then rename, as a deploy tool does.
    fn write(&self, text: &[u8]) {
        let tmp = self.dir.join("gateway.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }

    fn replace_with_symlink_to(&self, target: &str) {
        let _ = std::fs::remove_file(self.path());
        std::os::unix::fs::symlink(target, self.path()).unwrap();
    }

    fn replace_with_fifo(&self) {
        let _ = std::fs::remove_file(self.path());
        let made = std::process::Command::new("mkfifo")
            .arg(self.path())
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {}", self.path().display());
    }
}

/// Starts the gateway binary on `config`; its process, address and admin URL.
async fn gateway_proc(config: &Path) -> (Proc, std::net::SocketAddr, String) {
    let proc = Proc::start("gateway", &["--config", config.to_str().unwrap()]);
    let addr = proc.listening("gateway").await;
    let admin = format!("http://{}", proc.listening("gateway admin").await);
    (proc, addr, admin)
}

fn resident_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// A JSON POST through the gateway answered by an echoing instance.
async fn echoed(addr: std::net::SocketAddr, path: &str) -> bool {
    let r = testkit::system::post_once(addr, path, br#"{"probe": true}"#).await;
    r.status == 200 && r.body == br#"{"probe": true}"#
}

// ---------------------------------------------------------------- the watch stream

/// What a hostile discovery streams after its first snapshot.
#[derive(Clone, Copy)]
enum Flood {
    /// `data: ` and then bytes without a newline.
    EndlessLine,
    /// `data: x` lines without the blank line that ends an event.
    EndlessEvent,
}

/// A discovery that answers every watch with a chunked event stream: the
/// first one a snapshot naming `instance`, then (after `go`) a flood; every
/// later one the flood at once. It counts streams and what each was sent.
struct HostileDiscovery {
    url: String,
    streams: Arc<AtomicUsize>,
    /// Bytes sent on each stream, in order.
    sent: Arc<Mutex<Vec<usize>>>,
    go: Trigger,
    stop: Trigger,
}

impl HostileDiscovery {
    async fn start(instance: u16, flood: Flood) -> HostileDiscovery {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let d = HostileDiscovery {
            url,
            streams: Arc::default(),
            sent: Arc::default(),
            go: Trigger::new(),
            stop: Trigger::new(),
        };
        let (streams, sent, go, stop) = (
            d.streams.clone(),
            d.sent.clone(),
            d.go.clone(),
            d.stop.clone(),
        );
        task::spawn(async move {
            loop {
                let accepted = listener.accept().or(async {
                    stop.wait().await;
                    Err(std::io::Error::other("stopped"))
                });
                let Ok((stream, _)) = accepted.await else {
                    return;
                };
                let n = streams.fetch_add(1, Ordering::SeqCst);
                sent.lock().unwrap().push(0);
                let (sent, go, stop) = (sent.clone(), go.clone(), stop.clone());
                task::spawn(async move {
                    let one = async {
                        let _ = stream_to(stream, n, instance, flood, &sent, &go).await;
                    };
                    one.or(stop.wait()).await
                });
            }
        });
        d
    }
}

impl Drop for HostileDiscovery {
    fn drop(&mut self) {
        self.stop.fire();
    }
}

/// Serves one watch request on `stream` (the `n`th): until the gateway drops it.
async fn stream_to(
    mut stream: TcpStream,
    n: usize,
    instance: u16,
    flood: Flood,
    sent: &Mutex<Vec<usize>>,
    go: &Trigger,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        if stream.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        .await?;
    if n == 0 {
        let snapshot = json!({
            "namespace": "service A",
            "version": 1,
            "instances": [{"id": "a", "host": "127.0.0.1", "port": instance.to_string()}],
        });
        let event = format!("event: instances\nid: 1\ndata: {snapshot}\n\n");
        write_chunk(&mut stream, event.as_bytes()).await?;
        go.wait().await;
    }
    let (first, piece): (&[u8], Vec<u8>) = match flood {
        Flood::EndlessLine => (b"event: instances\ndata: ", vec![b'x'; 64 * 1024]),
        Flood::EndlessEvent => (b"event: instances\n", b"data: x\n".repeat(8 * 1024)),
    };
    write_chunk(&mut stream, first).await?;
    loop {
        write_chunk(&mut stream, &piece).await?;
        sent.lock().unwrap()[n] += piece.len();
    }
}

async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let framed = [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
    stream.write_all(&framed).await
}

/// The gateway drops a flooding watch stream once past its bound, reconnects,
/// keeps its ring (static stability) and its memory: the flood costs at most
/// the bound per stream, however long it goes on.
async fn a_flooding_watch_is_bounded(flood: Flood) {
    let instance = RawInstance::start(Script::Echo).await;
    let discovery = HostileDiscovery::start(instance.port(), flood).await;
    let config = ConfigDir::new(match flood {
        Flood::EndlessLine => "line",
        Flood::EndlessEvent => "event",
    });
    let text = json!({
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "discovery_url": discovery.url,
    });
    config.write(text.to_string().as_bytes());
    let (mut gw, addr, admin) = gateway_proc(&config.path()).await;
    let member = format!("127.0.0.1:{}", instance.port());
    wait_ring(&admin, std::slice::from_ref(&member), LIMIT).await;
    assert!(echoed(addr, "/x").await, "served before the flood");
    let before = resident_kib(gw.pid(), "VmHWM:");

    discovery.go.fire();
    // The first stream and three reconnections, each flooded past the bound.
    let reconnected = || async { discovery.streams.load(Ordering::SeqCst) >= 4 };
    testkit::wait_until(
        "the gateway dropped and reopened the flooded stream three times",
        LIMIT,
        reconnected,
    )
    .await;
    let grown = resident_kib(gw.pid(), "VmHWM:").saturating_sub(before);
    let flooded: usize = discovery.sent.lock().unwrap().iter().sum();
    eprintln!(
        "peak RSS grew {grown} KiB while {} MiB were flooded",
        flooded >> 20
    );
    // The bounds are 8 MiB a line and an event (twice that, for the
    // allocator); the old reader grew ~200 MB/s for as long as the line went on.
    assert!(
        grown < 32 * 1024,
        "peak RSS grew by {grown} KiB under the flood"
    );
    let line = gw.wait_for_line("keeping the last ring", LIMIT).await;
    assert!(line.contains("dropping the stream to reconnect"), "{line}");
    assert!(line.contains("longer than"), "the bound is named: {line}");
    assert_eq!(
        testkit::system::ring(&admin, "service A").await,
        vec![member],
        "the ring is as it was"
    );
    assert!(echoed(addr, "/x").await, "and still serves");
    gw.terminate();
    assert!(gw.exited(LIMIT).await.success(), "{}", gw.output());
}

#[async_std::test]
async fn f4_a_watch_line_without_end_is_bounded_and_the_stream_reconnects() {
    a_flooding_watch_is_bounded(Flood::EndlessLine).await;
}

#[async_std::test]
async fn f4_a_watch_event_of_endless_data_lines_is_bounded_and_the_stream_reconnects() {
    a_flooding_watch_is_bounded(Flood::EndlessEvent).await;
}

// ---------------------------------------------------------------- config files

fn routes_config(discovery_url: &str, prefixes: &[&str]) -> String {
    let routes: Vec<_> = prefixes
        .iter()
        .map(|p| json!({"prefix": p, "namespace": "service A"}))
        .collect();
    json!({
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "discovery_url": discovery_url,
        "routes": routes,
        "drain_timeout": "3s",
    })
    .to_string()
}

/// What the config path is replaced with before a SIGHUP.
enum Hostile {
    /// A symlink to `/dev/zero`: endless bytes.
    DevZero,
    /// A FIFO nobody writes to: a blocking open never returns.
    Fifo,
    /// A regular file of 2 MiB.
    Oversized,
}

/// Only `/api` is routed: `/other` is 404 until a config routing it takes.
async fn routes_in_force(addr: std::net::SocketAddr) -> (bool, u16) {
    let api = echoed(addr, "/api/x").await;
    let other = testkit::system::post_once(addr, "/other", b"{}")
        .await
        .status;
    (api, other)
}

#[async_std::test]
async fn f7_reload_refuses_a_fifo_dev_zero_and_an_oversized_file_and_keeps_the_old_config() {
    let d = testkit::discovery().await;
    let instance = RawInstance::start(Script::Echo).await;
    testkit::client::register(&d.url(), "service A", instance.port()).await;
    let config = ConfigDir::new("reload");
    config.write(routes_config(&d.url(), &["/api"]).as_bytes());
    let (mut gw, addr, admin) = gateway_proc(&config.path()).await;
    wait_ring(&admin, &[format!("127.0.0.1:{}", instance.port())], LIMIT).await;
    assert_eq!(routes_in_force(addr).await, (true, 404));

    // Valid JSON that would route /other, padded to 2 MiB: only its size refuses it.
    let mut oversized = routes_config(&d.url(), &["/api", "/other"]).into_bytes();
    oversized.resize(2 * 1024 * 1024, b' ');
    let path = config.path().display().to_string();
    let cases = [
        ("not a regular file (a character device)", Hostile::DevZero),
        ("not a regular file (a FIFO)", Hostile::Fifo),
        ("larger than 1048576 bytes", Hostile::Oversized),
    ];
    for (i, (why, hostile)) in cases.into_iter().enumerate() {
        match hostile {
            Hostile::DevZero => config.replace_with_symlink_to("/dev/zero"),
            Hostile::Fifo => config.replace_with_fifo(),
            Hostile::Oversized => config.write(&oversized),
        }
        gw.signal(Signal::SIGHUP);
        let refusals = i as f64 + 1.0;
        testkit::wait_until(&format!("the reload is refused: {why}"), LIMIT, || async {
            metric(&admin, r#"gateway_config_reloads_total{result="error"}"#).await == refusals
        })
        .await;
        let line = gw.wait_for_line(why, LIMIT).await;
        assert!(line.contains(&path), "the path is named: {line}");
        assert!(line.contains("the old one stays in force"), "{line}");
        assert_eq!(
            routes_in_force(addr).await,
            (true, 404),
            "old config after {why}"
        );
    }
    assert_eq!(
        metric(&admin, r#"gateway_config_reloads_total{result="ok"}"#).await,
        0.0
    );

    // The signal loop is free: a good file reloads, and SIGTERM stops it promptly.
    config.write(routes_config(&d.url(), &["/api", "/other"]).as_bytes());
    gw.signal(Signal::SIGHUP);
    testkit::wait_until("the good config is reloaded", LIMIT, || async {
        metric(&admin, r#"gateway_config_reloads_total{result="ok"}"#).await == 1.0
    })
    .await;
    assert_eq!(routes_in_force(addr).await, (true, 200));
    config.replace_with_fifo();
    gw.signal(Signal::SIGHUP);
    testkit::wait_until("the FIFO is refused again", LIMIT, || async {
        metric(&admin, r#"gateway_config_reloads_total{result="error"}"#).await == 4.0
    })
    .await;
    gw.terminate();
    assert!(
        gw.exited(Duration::from_secs(10)).await.success(),
        "{}",
        gw.output()
    );
    d.shutdown().await;
}

#[async_std::test]
async fn f7_start_refuses_a_fifo_config_at_once_and_exits_2() {
    let config = ConfigDir::new("start");
    config.replace_with_fifo();
    let mut gw = Proc::start("gateway", &["--config", config.path().to_str().unwrap()]);
    let status = gw.exited(LIMIT).await;
    assert_eq!(status.code(), Some(2), "{}", gw.output());
    let out = gw.output();
    assert!(out.contains("not a regular file (a FIFO)"), "{out}");
    assert!(out.contains(&config.path().display().to_string()), "{out}");
}

// ---------------------------------------------------------------- header count

/// A POST of `{}` with Host, Content-Length, X-Request-Id and `fill` more fields.
fn with_fields(fill: usize, request_id: &str) -> Vec<u8> {
    let mut head = format!(
        "POST /api/pay HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\nX-Request-Id: {request_id}\r\n"
    );
    for i in 0..fill {
        head.push_str(&format!("X-Fill-{i}: v\r\n"));
    }
    head.push_str("\r\n{}");
    head.into_bytes()
}

#[async_std::test]
async fn f6_a_head_the_gateways_own_fields_would_take_past_the_apps_limit_is_refused_431() {
    let sys = System::start(1).await;
    // The app takes `MAX_HEADERS` fields (its front parses with the gateway's
    // parser). Forwarded: Host, the fill, x-forwarded-for, x-forwarded-proto,
    // x-request-id and content-length; the client's X-Request-Id and
    // Content-Length are replaced.
    let limit = shared::http1::MAX_HEADERS;
    let fits = limit - 5;
    let res = exchange_raw(sys.gateway.addr(), &with_fields(fits, "f6-fits")).await;
    assert_eq!(
        (res.status, res.body.as_slice()),
        (200, &b"{}"[..]),
        "{} fields forwarded reach the app: {}",
        limit,
        String::from_utf8_lossy(&res.body)
    );
    assert_eq!(res.header("x-request-id"), Some("f6-fits"));

    // One more: the client's head (limit fields) parses, the forwarded one would not.
    let answer = refused(
        sys.gateway.addr(),
        &with_fields(fits + 1, "f6-refused"),
        LIMIT,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(answer.contains("x-request-id: f6-refused\r\n"), "{answer}");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["request_id"], "f6-refused", "{answer}");
    assert_eq!(error["error"]["code"], "header_too_large", "{answer}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("x-forwarded-for"),
        "the gateway's own refusal: {message}"
    );
    sys.stop().await;
}

// ---------------------------------------------------------------- Connection tokens

#[async_std::test]
async fn f8_connection_cannot_name_host_framing_or_the_gateways_own_headers() {
    let (d, raws, g) = raw_system(vec![Script::Echo], |_| {}).await;
    let request = b"POST /api/x HTTP/1.1\r\nHost: shop.example:8000\r\nConnection: host, content-length, x-request-id, x-forwarded-for, idempotency-key, x-secret\r\nX-Request-Id: f8-id\r\nX-Forwarded-For: 10.1.2.3\r\nIdempotency-Key: k-8\r\nX-Secret: s\r\nContent-Length: 2\r\n\r\n{}";
    let res = exchange_raw(g.addr(), request).await;
    assert_eq!((res.status, res.body.as_slice()), (200, &b"{}"[..]));
    let got = raws[0].received();
    let arrived = got
        .iter()
        .find(|r| r.head.starts_with("POST /api/x "))
        .expect("the instance got the request");
    let header = |name: &str| arrived.header(name);
    assert_eq!(
        header("host").as_deref(),
        Some("shop.example:8000"),
        "{}",
        arrived.head
    );
    assert_eq!(
        header("content-length").as_deref(),
        Some("2"),
        "{}",
        arrived.head
    );
    assert_eq!(arrived.body, b"{}");
    assert_eq!(
        header("x-request-id").as_deref(),
        Some("f8-id"),
        "{}",
        arrived.head
    );
    assert_eq!(
        header("x-forwarded-for").as_deref(),
        Some("10.1.2.3, 127.0.0.1"),
        "{}",
        arrived.head
    );
    assert_eq!(
        header("idempotency-key").as_deref(),
        Some("k-8"),
        "{}",
        arrived.head
    );
    assert_eq!(
        header("x-secret"),
        None,
        "other tokens still drop: {}",
        arrived.head
    );
    assert_eq!(header("connection"), None, "{}", arrived.head);
    g.shutdown().await;
    d.shutdown().await;
}
