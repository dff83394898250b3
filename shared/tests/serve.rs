//! The tide front of `shared::serve`, over real sockets: what a hostile or
//! odd client sends is answered (or cut) without ending the process, and
//! ordinary HTTP/1.0 and 1.1 clients, pipelining and streams work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use async_std::task;
use shared::http1::{parse_response, ChunkedDecoder, Framing, ReadBuf, ResponseHead};
use shared::panics::Panics;
use shared::serve::{bind, serve_with, Limits, Options, Served};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn app() -> tide::Server<()> {
    let mut app = tide::new();
    app.at("/health_check").get(|_| async { Ok("ok") });
    app.at("/echo")
        .post(|mut req: tide::Request<()>| async move {
            let body = req.body_bytes().await?;
            let note = req.header("x-note").map(|v| v.as_str().to_string());
            let mut res = tide::Response::new(200);
            res.set_body(body);
            if let Some(note) = note {
                res.insert_header("x-note", note);
            }
            Ok(res)
        });
    app.at("/panic").get(|_| async {
        if true {
            panic!("handler bug");
        }
        Ok("unreachable")
    });
    app.at("/sse")
        .get(tide::sse::endpoint(|_req, sender| async move {
            sender.send("tick", "first", None).await?;
            task::sleep(Duration::from_millis(400)).await;
            sender.send("tick", "second", None).await?;
            Ok(())
        }));
    app
}

async fn start(limits: Limits) -> (Served, Panics) {
    let panics = Panics::new();
    let options = Options {
        limits,
        panics: panics.clone(),
        tls: None,
    };
    let served = serve_with(app(), bind("127.0.0.1:0").await.unwrap(), options).unwrap();
    (served, panics)
}

/// A raw client: writes bytes, reads answers one by one (pipelining kept).
struct Raw {
    stream: TcpStream,
    buf: ReadBuf,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: ReadBuf::with_capacity(4096),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut s = &self.stream;
        self.buf.fill(&mut s).await.unwrap_or(0)
    }

    /// The next answer; None if the connection closed first.
    async fn answer(&mut self, to_head: bool) -> Option<Answer> {
        let mut head = ResponseHead::default();
        loop {
            match parse_response(self.buf.data(), &mut head, 1 << 20, to_head) {
                Ok(true) => break,
                Ok(false) => {
                    if self.fill().await == 0 {
                        return None;
                    }
                }
                Err(e) => panic!("bad response head: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&self.buf.data()[..head.len]).to_string();
        self.buf.consume(head.len);
        let mut body = Vec::new();
        match head.framing {
            Framing::Empty => {}
            Framing::Length(n) => {
                while (body.len() as u64) < n {
                    let want = n as usize - body.len();
                    if self.buf.take_into(want, &mut body) == 0 && self.fill().await == 0 {
                        panic!("body cut short");
                    }
                }
            }
            Framing::Chunked => {
                let mut d = ChunkedDecoder::new();
                loop {
                    let used = d.decode(self.buf.data(), Some(&mut body)).unwrap();
                    self.buf.consume(used);
                    if d.is_done() {
                        break;
                    }
                    assert!(self.fill().await > 0, "chunked body cut short");
                }
            }
            Framing::UntilClose => loop {
                let n = self.buf.len();
                self.buf.take_into(n, &mut body);
                if self.fill().await == 0 {
                    break;
                }
            },
        }
        Some(Answer {
            status: head.status,
            head: text,
            body,
        })
    }

    /// Whether the server closes the connection within `limit`.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut b = [0u8; 1024];
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match async_std::future::timeout(left, self.stream.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut c = Raw::connect(addr).await;
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    c.answer(false).await.expect("an answer")
}

fn post(body: &str) -> Vec<u8> {
    format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[async_std::test]
async fn a_header_value_above_0x7f_is_a_json_400_and_the_server_lives_on() {
    let (served, panics) = start(Limits::default()).await;
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nX-Note: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\n{}")
        .await;
    let a = c.answer(false).await.expect("an answer");
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["code"], "bad_request");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("0x7F"));
    assert!(c.closed_within(Duration::from_secs(2)).await);
    // The same in the target, an unknown method, a bad Host.
    for head in [
        &b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"get /health_check HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: x/health_check?\r\n\r\n",
        b"GET /health_check HTTP/1.1\r\nHost: t\r\nX\xff: 1\r\n\r\n",
    ] {
        let mut c = Raw::connect(served.addr()).await;
        c.send(head).await;
        let a = c.answer(false).await.expect("an answer");
        assert!(matches!(a.status, 400 | 501), "{a:?}");
        assert!(a.json()["error"]["message"].is_string());
    }
    assert_eq!(get(served.addr(), "/health_check").await.status, 200);
    // ASCII headers still reach the handler.
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nX-Note: cafe\r\nContent-Length: 2\r\n\r\n{}")
        .await;
    let a = c.answer(false).await.unwrap();
    assert_eq!(
        (a.status, a.header("x-note").as_deref()),
        (200, Some("cafe"))
    );
    assert_eq!(panics.count(), 0);
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn http10_clients_are_answered() {
    let (served, _) = start(Limits::default()).await;
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"GET /health_check HTTP/1.0\r\n\r\n").await;
    let a = c.answer(false).await.unwrap();
    assert_eq!((a.status, a.body.as_slice()), (200, &b"ok"[..]));
    assert!(c.closed_within(Duration::from_secs(2)).await);

    // Keep-alive on request, with a body.
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    let a = c.answer(false).await.unwrap();
    assert_eq!((a.status, a.body.as_slice()), (200, &b"abc"[..]));
    assert_eq!(a.header("connection").as_deref(), Some("keep-alive"));
    c.send(b"GET /health_check HTTP/1.0\r\n\r\n").await;
    assert_eq!(c.answer(false).await.unwrap().status, 200);

    // A stream to an HTTP/1.0 client ends with the connection.
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"GET /sse HTTP/1.0\r\n\r\n").await;
    let a = c.answer(false).await.unwrap();
    let text = String::from_utf8(a.body).unwrap();
    assert!(text.contains("first") && text.contains("second"), "{text}");
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn pipelined_requests_are_answered_in_order() {
    let (served, _) = start(Limits::default()).await;
    let mut c = Raw::connect(served.addr()).await;
    let mut bytes = post(r#"{"n":1}"#);
    bytes.extend_from_slice(b"GET /health_check HTTP/1.1\r\nHost: t\r\n\r\n");
    bytes.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"n\r\n4\r\n\":3}\r\n0\r\n\r\n",
    );
    bytes.extend_from_slice(b"HEAD /health_check HTTP/1.1\r\nHost: t\r\n\r\n");
    bytes.extend_from_slice(&post(r#"{"n":5}"#));
    c.send(&bytes).await;
    let a = c.answer(false).await.unwrap();
    assert_eq!(a.body, br#"{"n":1}"#);
    assert_eq!(c.answer(false).await.unwrap().body, b"ok");
    assert_eq!(c.answer(false).await.unwrap().body, br#"{"n":3}"#);
    let head = c.answer(true).await.unwrap();
    assert_eq!(
        (head.status, head.header("content-length").as_deref()),
        (200, Some("2"))
    );
    assert!(head.body.is_empty());
    assert_eq!(c.answer(false).await.unwrap().body, br#"{"n":5}"#);
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn heads_up_to_max_head_bytes_are_taken_and_larger_ones_are_431() {
    let (served, _) = start(Limits::default()).await;
    let head = |size: usize| {
        format!(
            "GET /health_check HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "v".repeat(size)
        )
    };
    let mut c = Raw::connect(served.addr()).await;
    c.send(head(20 * 1024).as_bytes()).await;
    assert_eq!(c.answer(false).await.unwrap().status, 200);
    let mut c = Raw::connect(served.addr()).await;
    c.send(head(40 * 1024).as_bytes()).await;
    let a = c.answer(false).await.unwrap();
    assert_eq!(a.status, 431);
    assert_eq!(a.json()["error"]["code"], "header_too_large");
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn bodies_over_the_limit_are_413_and_expect_continue_is_answered() {
    let limits = Limits {
        max_body_bytes: 1000,
        ..Limits::default()
    };
    let (served, _) = start(limits).await;
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
        .await;
    assert_eq!(c.answer(false).await.unwrap().status, 413);
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n")
        .await;
    assert_eq!(c.answer(false).await.unwrap().status, 413);

    let mut c = Raw::connect(served.addr()).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        .await;
    assert_eq!(c.answer(false).await.unwrap().status, 100);
    c.send(b"{}").await;
    let a = c.answer(false).await.unwrap();
    assert_eq!((a.status, a.body.as_slice()), (200, &b"{}"[..]));
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn a_stream_delivers_each_event_as_it_is_sent() {
    let (served, _) = start(Limits::default()).await;
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"GET /sse HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let started = Instant::now();
    let mut seen = String::new();
    while !seen.contains("first") {
        assert!(c.fill().await > 0);
        seen = String::from_utf8_lossy(c.buf.data()).to_string();
    }
    // The second event is sent 400 ms in: the first must not wait for it.
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert!(seen.contains("transfer-encoding: chunked"), "{seen}");
    assert!(!seen.contains("second"));
    let a = c.answer(false).await.unwrap();
    let text = String::from_utf8(a.body).unwrap();
    assert!(
        text.contains("data:first") && text.contains("data:second"),
        "{text}"
    );
    // The chunked stream ended cleanly: the connection is still usable.
    c.send(b"GET /health_check HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert_eq!(c.answer(false).await.unwrap().status, 200);
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn a_panicking_handler_costs_one_connection_and_is_counted() {
    let (served, panics) = start(Limits::default()).await;
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n").await;
    // Nothing was written when it panicked: the front answers 500 itself.
    let a = c.answer(false).await.expect("a 500");
    assert_eq!(a.status, 500);
    assert_eq!(a.json()["error"]["code"], "internal_error");
    assert!(c.closed_within(Duration::from_secs(2)).await);
    assert_eq!(get(served.addr(), "/health_check").await.status, 200);
    assert_eq!(panics.count(), 1);
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn idle_sockets_at_the_connection_cap_do_not_lock_out_a_client() {
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let (served, _) = start(limits).await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(served.addr()).await.unwrap());
    }
    let started = Instant::now();
    let a = async_std::future::timeout(Duration::from_secs(5), get(served.addr(), "/health_check"))
        .await
        .expect("answered while idle sockets held the cap");
    assert_eq!(a.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn idle_connections_are_closed_after_their_timeouts() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (served, _) = start(limits).await;
    // Kept alive after an answer, then silent.
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"GET /health_check HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert_eq!(c.answer(false).await.unwrap().status, 200);
    let started = Instant::now();
    assert!(c.closed_within(Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Connected and never a byte.
    let mut silent = Raw::connect(served.addr()).await;
    assert!(silent.closed_within(Duration::from_secs(3)).await);
    // Half a head: 408.
    let mut half = Raw::connect(served.addr()).await;
    half.send(b"GET /health_check HTTP/1.1\r\nHo").await;
    let a = half.answer(false).await.unwrap();
    assert_eq!(a.status, 408);
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn a_body_slower_than_the_deadline_is_408_and_closed() {
    let limits = Limits {
        body_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (served, _) = start(limits).await;
    let mut c = Raw::connect(served.addr()).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        .await;
    let started = Instant::now();
    // A byte every 100 ms keeps each read short of any per-read timeout.
    let drip = async {
        for _ in 0..30 {
            task::sleep(Duration::from_millis(100)).await;
            if c.stream.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    async_std::future::timeout(Duration::from_secs(2), drip)
        .await
        .ok();
    let a = c.answer(false).await.expect("an answer");
    assert_eq!(a.status, 408);
    assert_eq!(a.json()["error"]["code"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(c.closed_within(Duration::from_secs(3)).await);
    served.shutdown(Duration::from_secs(1)).await;
}

#[async_std::test]
async fn shutdown_closes_idle_connections_and_finishes_streams_in_progress() {
    let (served, _) = start(Limits::default()).await;
    let mut idle = Raw::connect(served.addr()).await;
    idle.send(b"GET /health_check HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert_eq!(idle.answer(false).await.unwrap().status, 200);
    let mut busy = Raw::connect(served.addr()).await;
    busy.send(b"GET /sse HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(busy.fill().await > 0);
    let addr = served.addr();
    let stopping = task::spawn(served.shutdown(Duration::from_secs(3)));
    assert!(idle.closed_within(Duration::from_secs(1)).await);
    let a = busy.answer(false).await.unwrap();
    let text = String::from_utf8(a.body).unwrap();
    assert!(text.contains("second"), "{text}");
    assert!(busy.closed_within(Duration::from_secs(1)).await);
    stopping.await;
    assert!(TcpStream::connect(addr).await.is_err());
}
