//! An attacker controls one registered instance. Regression tests for what
//! it found (the `f1_`, `f2_` and `f5_` tests): a stray answer reaching the
//! next client; a train of 1xx answers making the gateway wait for bytes it
//! already held, then send the POST again; a malformed or cut answer making
//! the gateway send the POST to a second instance. And the defences: request id verification per route,
//! passive health, no pooling after stray bytes.

use crate::attack::{
    assert_bad_gateway, assert_own, cooling_down, faults, holds_within, unique_body, Caller, Mixed,
    PLAIN, STRICT,
};
use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use shared::config::GatewayConfig;
use std::time::{Duration, Instant};
use testkit::raw::Script;
use testkit::wait_until;

/// A cool-down longer than any test here: a cooled instance stays cooled.
const COOLDOWN: Duration = Duration::from_secs(30);
/// How long a test waits for the gateway to act on stray bytes (a bound on
/// waiting for a condition, never a pause).
const NOTICE: Duration = Duration::from_secs(5);
/// How long the stray-answer tests give the gateway to close an idle connection stray
/// bytes came on before the next request: under a second, the age past which
/// the gateway before the fix peeked at a pooled connection before reuse (so
/// the test shows the stray reaching a client rather than that check).
const IDLE_NOTICE: Duration = Duration::from_millis(500);

fn config(c: &mut GatewayConfig) {
    // One worker, so one idle pool per instance: these tests need the
    // connection a stray lands on to be the one the next requests reuse.
    // With several workers each keeps its own pool, and a stray can sit on
    // another worker's idle connection until the reaper finds it.
    c.worker_threads = 1;
    c.connect_cooldown = COOLDOWN;
    c.passive_health_failures = 3;
    c.upstream_timeout = Duration::from_secs(2);
    c.request_deadline = Duration::from_secs(6);
}

/// After answer `first`, the instance writes a stray answer (per
/// `script`); the next request must get its own answer, on a new connection.
async fn a_stray_never_answers_the_next_request(script: &str) {
    let sys = Mixed::start(1, Script::Echo, 0, config).await;
    let raw = &sys.raws[0];
    let mut caller = Caller::new(sys.gateway.addr());
    let first = unique_body("f1-a", 3);
    let res = caller.send(PLAIN, "f1-a", script, &first).await.unwrap();
    if script == "stray-same-write" && res.status == 502 {
        // Bytes after the answer in the same read: refusing the whole answer is fine too.
        assert_bad_gateway(&res, "f1-a", &raw.key(), script);
    } else {
        assert_own(&res, &first, script);
    }
    wait_until("the stray was written", NOTICE, || async {
        !raw.strays().is_empty()
    })
    .await;
    let stray = raw.strays()[0].clone();
    let _ = holds_within(IDLE_NOTICE, || async { raw.closed_by_peer(stray.conn) }).await;

    let second = unique_body("f1-b", 4);
    let res = caller.send(PLAIN, "f1-b", "echo", &second).await.unwrap();
    assert_ne!(
        String::from_utf8_lossy(&res.body),
        String::from_utf8_lossy(&stray.body),
        "{script}: the stray answer after f1-a reached the next client"
    );
    assert_own(&res, &second, script);
    let closed = holds_within(NOTICE, || async { raw.closed_by_peer(stray.conn) }).await;
    assert!(
        closed,
        "{script}: the connection the stray came on is closed"
    );
    let on = raw.received().last().unwrap().clone();
    assert_ne!(
        on.conn, stray.conn,
        "{script}: not sent where the stray came"
    );
    assert!(
        faults(&sys.admin(), &raw.key(), "stray_bytes").await >= 1.0,
        "{script}: the instance is blamed"
    );
    sys.stop().await;
}

#[async_std::test]
async fn f1_a_late_stray_answer_after_a_content_length_answer_reaches_no_client() {
    a_stray_never_answers_the_next_request("stray-after:50").await;
}

#[async_std::test]
async fn f1_late_bytes_after_a_chunked_answer_reach_no_client() {
    a_stray_never_answers_the_next_request("stray-after-chunked:50").await;
}

#[async_std::test]
async fn f1_stray_bytes_in_the_same_write_as_the_answer_reach_no_client() {
    a_stray_never_answers_the_next_request("stray-same-write").await;
}

/// Sends one POST with `connection: close` and returns every byte the
/// gateway sent back, and how long that took.
async fn whole_exchange(sys: &Mixed, id: &str, body: &[u8]) -> (Vec<u8>, Duration) {
    let mut s = TcpStream::connect(sys.gateway.addr()).await.unwrap();
    let head = format!(
        "POST {PLAIN} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nx-request-id: {id}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let started = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    (out, started.elapsed())
}

#[async_std::test]
async fn f2_several_interim_answers_in_one_write_are_all_consumed_at_once() {
    // Every instance sends 100 Continue and 103 Early Hints before its 200, in one write.
    let sys = Mixed::start(2, Script::Interim, 0, config).await;
    for i in 0..4 {
        let id = format!("f2-{i}");
        let body = unique_body(&id, i);
        let (answer, took) = whole_exchange(&sys, &id, &body).await;
        let text = String::from_utf8_lossy(&answer);
        // Well under upstream_timeout (2 s): nothing was waited for.
        assert!(
            took < Duration::from_millis(700),
            "{id} took {took:?}: {text}"
        );
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n"),
            "{id}: a 200 and nothing before it (no 1xx was asked for): {text}"
        );
        assert!(answer.ends_with(&body), "{id}: its own body: {text}");
        assert_eq!(
            sys.reached(&id, None),
            1,
            "{id} reached exactly one instance"
        );
    }
    sys.stop().await;
}

/// An instance answers every request with `script` (a complete but
/// malformed answer, or half of one). Each POST that reaches it is a 502 and
/// reaches no other instance; after three in a row it is cooled down and
/// skipped; the fault is counted as `fault`.
async fn a_bad_answer_is_a_502_never_a_second_try(script: Script, fault: &str) {
    let name = script.name();
    let sys = Mixed::start(1, script, 1, config).await;
    let raw = &sys.raws[0];
    let mut caller = Caller::new(sys.gateway.addr());
    let mut sent = 0;
    while raw.received().len() < 3 {
        assert!(sent < 12, "{name}: round robin never reached the instance");
        let id = format!("f5-{sent}");
        let body = unique_body(&id, sent);
        let res = caller.send(PLAIN, &id, "", &body).await.unwrap();
        let what = format!("{name}, {id}");
        assert_eq!(
            sys.reached(&id, Some(&res)),
            1,
            "{what}: the POST reached one instance"
        );
        if raw.received_id(&id) == 1 {
            assert_bad_gateway(&res, &id, &raw.key(), &what);
        } else {
            assert_own(&res, &body, &what);
        }
        sent += 1;
    }
    let admin = sys.admin();
    let key = raw.key();
    assert!(
        holds_within(NOTICE, || cooling_down(&admin, &key)).await,
        "{name}: three faults in a row cool the instance down (/status)"
    );
    for n in 0..4 {
        let id = format!("f5-after-{n}");
        let body = unique_body(&id, n);
        let res = caller.send(PLAIN, &id, "", &body).await.unwrap();
        assert_own(&res, &body, &format!("{name}, {id}"));
    }
    assert_eq!(
        raw.received().len(),
        3,
        "{name}: a cooled instance is skipped"
    );
    assert_eq!(
        faults(&admin, &key, fault).await,
        3.0,
        "{name}: counted as {fault}"
    );
    sys.stop().await;
}

#[async_std::test]
async fn f5_two_differing_content_lengths() {
    a_bad_answer_is_a_502_never_a_second_try(Script::DuplicateLength, "malformed").await;
}

#[async_std::test]
async fn f5_content_length_with_transfer_encoding() {
    a_bad_answer_is_a_502_never_a_second_try(Script::LengthAndChunked, "malformed").await;
}

#[async_std::test]
async fn f5_a_signed_content_length() {
    a_bad_answer_is_a_502_never_a_second_try(Script::PlusLength, "malformed").await;
}

#[async_std::test]
async fn f5_an_unsolicited_101() {
    a_bad_answer_is_a_502_never_a_second_try(Script::SwitchingProtocols, "malformed").await;
}

#[async_std::test]
async fn f5_an_http_0_9_answer() {
    a_bad_answer_is_a_502_never_a_second_try(Script::Http09, "malformed").await;
}

#[async_std::test]
async fn f5_an_answer_head_over_64_kib() {
    a_bad_answer_is_a_502_never_a_second_try(Script::HugeHead, "malformed").await;
}

#[async_std::test]
async fn f5_half_an_answer_then_close() {
    a_bad_answer_is_a_502_never_a_second_try(Script::HalfAnswer, "cut_short").await;
}

#[async_std::test]
async fn f5_half_an_answer_then_reset() {
    a_bad_answer_is_a_502_never_a_second_try(Script::HalfAnswerReset, "cut_short").await;
}

/// The instance took the request and closed before a byte of an answer:
/// it may have executed it. With `retry_non_idempotent` off a POST is not
/// replayed (a PUT, idempotent, is); with it on (the seed's default) the
/// POST goes to another instance, as after a timeout: the policy says so.
/// Apps answer only POSTs, so the other instance is a scripted echo.
#[async_std::test]
async fn a_post_whose_connection_closes_unanswered_is_not_sent_again_but_a_put_is() {
    for retry_posts in [false, true] {
        let sys = Mixed::start(2, Script::Echo, 0, |c| {
            config(c);
            c.retry_non_idempotent = retry_posts;
        })
        .await;
        let raw = &sys.raws[0];
        raw.set(Script::Close);
        let mut caller = Caller::new(sys.gateway.addr());
        let mut closed_posts = 0;
        for method in ["POST", "PUT"] {
            for n in 0..4 {
                let id = format!("close-{method}-{n}");
                let body = unique_body(&id, n);
                let res = caller
                    .send_method(method, PLAIN, &id, "", &body)
                    .await
                    .unwrap();
                let what = format!("{method} {id} (retry_non_idempotent {retry_posts})");
                if method == "PUT" || raw.received_id(&id) == 0 {
                    assert_own(&res, &body, &what);
                    continue;
                }
                closed_posts += 1;
                if retry_posts {
                    assert_own(&res, &body, &what);
                    assert_eq!(sys.reached(&id, Some(&res)), 2, "{what}: sent again");
                } else {
                    assert_eq!(sys.reached(&id, Some(&res)), 1, "{what}: sent once");
                    assert_bad_gateway(&res, &id, &raw.key(), &what);
                }
            }
        }
        assert!(
            closed_posts >= 1,
            "round robin sent a POST to the closing instance"
        );
        sys.stop().await;
    }
}

#[async_std::test]
async fn on_a_verified_route_an_answer_without_the_request_id_is_a_502() {
    let sys = Mixed::start(1, Script::Echo, 0, config).await;
    let raw = &sys.raws[0];
    let mut caller = Caller::new(sys.gateway.addr());
    for script in ["wrong-request-id", "no-request-id"] {
        let id = format!("v-{script}");
        let body = unique_body(&id, 1);
        let res = caller.send(STRICT, &id, script, &body).await.unwrap();
        assert_bad_gateway(&res, &id, &raw.key(), script);
        assert_eq!(sys.reached(&id, Some(&res)), 1, "{script}: sent once");
        // On a route that does not verify, an answer without an id passes;
        // one that names another request is that request's answer: a 502.
        let id = format!("p-{script}");
        let body = unique_body(&id, 2);
        let res = caller.send(PLAIN, &id, script, &body).await.unwrap();
        let what = format!("{script} on the plain route");
        if script == "no-request-id" {
            assert_own(&res, &body, &what);
        } else {
            assert_bad_gateway(&res, &id, &raw.key(), &what);
        }
    }
    let id = "v-right-id";
    let body = unique_body(id, 3);
    let res = caller.send(STRICT, id, "echo", &body).await.unwrap();
    assert_own(&res, &body, "the right id");
    let seen = raw.received().last().unwrap().request_id();
    assert_eq!(
        seen.as_deref(),
        Some(id),
        "the client's own id went upstream"
    );
    assert!(faults(&sys.admin(), &raw.key(), "wrong_request_id").await >= 2.0);
    sys.stop().await;
}

#[async_std::test]
async fn real_apps_pass_request_id_verification() {
    let sys = Mixed::start(0, Script::Echo, 2, config).await;
    let mut caller = Caller::new(sys.gateway.addr());
    for n in 0..6 {
        let id = format!("app-{n}");
        let body = unique_body(&id, n);
        let res = caller.send(STRICT, &id, "", &body).await.unwrap();
        assert_own(&res, &body, &id);
        assert!(sys.served_by_app(&res));
    }
    // Without a client id the gateway makes one, and the app echoes that.
    let body = unique_body("no-id", 1);
    let res = testkit::system::post_once(sys.gateway.addr(), STRICT, &body).await;
    assert_own(&res, &body, "a request without an id");
    sys.stop().await;
}

type Exchanged = (String, Vec<u8>, shared::http1::client::Response);

/// Two clients send echo requests back to back on keep-alive connections to
/// `path`, keeping the instance's connections busy, until the stray of
/// `round` has been written and each has sent 5 more. Answers each request's
/// id, body and answer.
async fn burst(sys: &Mixed, path: &str, round: usize) -> Vec<Exchanged> {
    let raw = &sys.raws[0];
    let one = |c: usize| async move {
        let mut caller = Caller::new(sys.gateway.addr());
        let (mut out, mut after) = (Vec::new(), 0);
        while after < 5 {
            assert!(
                out.len() < 5_000,
                "the stray of round {round} was never written"
            );
            let id = format!("burst-{round}-{c}-{}", out.len());
            let body = unique_body(&id, out.len() % 7);
            let res = caller.send(path, &id, "echo", &body).await.unwrap();
            out.push((id, body, res));
            if raw.strays().len() > round {
                after += 1;
            }
        }
        out
    };
    let (mut a, b) = futures_lite::future::zip(one(0), one(1)).await;
    a.extend(b);
    a
}

/// Where request `id` arrived at the instance, and the strays on that
/// connection: for failure messages.
fn trace(sys: &Mixed, id: &str) -> String {
    let raw = &sys.raws[0];
    let Some(r) = raw
        .received()
        .into_iter()
        .find(|r| r.request_id().as_deref() == Some(id))
    else {
        return format!("{id}: never arrived");
    };
    let strays: Vec<_> = raw
        .strays()
        .into_iter()
        .filter(|s| s.conn == r.conn)
        .map(|s| (s.after, s.at))
        .collect();
    format!(
        "{id}: connection {} request {} at {:?}; strays there: {strays:?}",
        r.conn, r.index_on_conn, r.at
    )
}

/// The request id a [`unique_body`] names, if `body` is one.
fn payment_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["payment"].as_str().map(str::to_string)
}

#[async_std::test]
async fn on_a_verified_route_a_stray_reaches_no_client_even_in_the_race() {
    let sys = Mixed::start(1, Script::Echo, 0, config).await;
    let raw = &sys.raws[0];
    let mut caller = Caller::new(sys.gateway.addr());
    for round in 0..5 {
        let id = format!("race-{round}");
        let body = unique_body(&id, 1);
        let res = caller
            .send(STRICT, &id, "stray-after:15", &body)
            .await
            .unwrap();
        assert_own(&res, &body, &id);
        for (id, body, res) in burst(&sys, STRICT, round).await {
            if res.status == 200 {
                assert_own(&res, &body, &id);
            } else {
                assert_bad_gateway(&res, &id, &raw.key(), &id);
            }
        }
    }
    sys.stop().await;
}

#[async_std::test]
async fn a_stray_touches_at_most_one_request() {
    let sys = Mixed::start(1, Script::Echo, 0, config).await;
    let raw = &sys.raws[0];
    let mut caller = Caller::new(sys.gateway.addr());
    let mut touched = Vec::new();
    for round in 0..5 {
        let id = format!("touch-{round}");
        let body = unique_body(&id, 1);
        let res = caller
            .send(PLAIN, &id, "stray-after:15", &body)
            .await
            .unwrap();
        assert_own(&res, &body, &id);
        for (id, body, res) in burst(&sys, PLAIN, round).await {
            if res.status != 200 {
                assert_bad_gateway(&res, &id, &raw.key(), &id);
            } else if res.body != body {
                // Only the stray itself may take a request's place, never
                // another request's answer.
                let other = payment_of(&res.body);
                assert!(
                    other.is_none(),
                    "{id} got another request's answer: {}\n{}\n{}",
                    String::from_utf8_lossy(&res.body),
                    trace(&sys, &id),
                    trace(&sys, other.as_deref().unwrap_or_default()),
                );
                touched.push(res.body.clone());
            }
        }
    }
    let sent: Vec<Vec<u8>> = raw.strays().into_iter().map(|s| s.body).collect();
    let mut unique = touched.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        touched.len(),
        "each stray touched one request at most: {touched:?}"
    );
    assert!(
        touched.iter().all(|t| sent.contains(t)),
        "only strays took a request's place"
    );
    sys.stop().await;
}

#[async_std::test]
async fn an_instance_that_sent_stray_bytes_is_not_pooled_until_its_cool_down_ends() {
    let sys = Mixed::start(1, Script::Echo, 0, config).await;
    let raw = &sys.raws[0];
    let mut caller = Caller::new(sys.gateway.addr());
    for n in 0..2 {
        let id = format!("pool-{n}");
        let res = caller
            .send(PLAIN, &id, "echo", &unique_body(&id, n))
            .await
            .unwrap();
        assert_eq!(res.status, 200);
    }
    let before = raw.received();
    assert_eq!(
        before[1].conn, before[0].conn,
        "the connection was pooled and reused"
    );
    let body = unique_body("pool-stray", 1);
    let res = caller
        .send(PLAIN, "pool-stray", "stray-after:10", &body)
        .await
        .unwrap();
    assert_own(&res, &body, "pool-stray");
    wait_until("the stray was written", NOTICE, || async {
        !raw.strays().is_empty()
    })
    .await;
    let stray_conn = raw.strays()[0].conn;
    let _ = holds_within(IDLE_NOTICE, || async { raw.closed_by_peer(stray_conn) }).await;
    let mut conns = Vec::new();
    for n in 0..4 {
        let id = format!("after-stray-{n}");
        let body = unique_body(&id, n);
        let res = caller.send(PLAIN, &id, "echo", &body).await.unwrap();
        assert_own(&res, &body, &id);
        let got = raw.received().last().unwrap().clone();
        assert_eq!(
            got.index_on_conn, 0,
            "{id}: a fresh connection, none pooled"
        );
        conns.push(got.conn);
    }
    assert!(!conns.contains(&stray_conn));
    sys.stop().await;
}
