//! Acceptance 1: the echo answers exactly the bytes it was sent, on any path,
//! with content-type and x-served-by; invalid JSON is a 400, too large a 413,
//! both with the JSON error body.

use crate::support::{app_config, send, send_chunked};
use std::fmt::Write;

/// About 100 KiB of JSON with nesting, unicode and numbers in several spellings.
fn big_body() -> Vec<u8> {
    let mut text = String::from("{\"items\" : [");
    let mut i = 0;
    while text.len() < 100 * 1024 {
        if i > 0 {
            text.push_str(",\n  ");
        }
        write!(
            text,
            r#"{{"z":{i}, "a":{i}.0,"n":{{"deep":[1e3, -0.50, "é\u00e9 ☃ {i}"]}}  }}"#
        )
        .unwrap();
        i += 1;
    }
    text.push_str("]\t}");
    text.into_bytes()
}

#[async_std::test]
async fn the_echo_returns_exactly_the_bytes_sent_on_any_path() {
    let d = testkit::discovery().await;
    let app = app::spawn(app_config(&d.url())).await.unwrap();
    let served_by = format!("127.0.0.1:{}", app.addr().port());
    assert_eq!(app.served_by(), served_by);
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"namespace": "service A", "port": "8080"}"#.to_vec(),
        br#"{"z":1,"a":1.0,"m":{"y":[1,2,{"x":null}],"b":true}}"#.to_vec(),
        b"{ \"b\" :1.0 ,\n\t\"a\": 1 , \"c\":1E2,\"d\":-0.0 }\r\n".to_vec(),
        "{\"unicode\": \"h\u{e9}llo w\u{f6}rld \u{2603} \u{1F600}\", \"escaped\": \"\\u00e9\\ud83d\\ude00\\n\"}"
            .as_bytes()
            .to_vec(),
        br#"{"dup":1,"dup":2}"#.to_vec(),
        b"[1, 2.50, \"three\"]".to_vec(),
        b"\"just a string\"".to_vec(),
        b"12345678901234567890123456789".to_vec(),
        big_body(),
    ];
    for path in ["/", "/api/example", "/a/b/c?x=1&y=2"] {
        for body in &bodies {
            let res = send(app.addr(), "POST", path, body).await;
            assert_eq!(
                res.status,
                200,
                "{path}: {:?}",
                String::from_utf8_lossy(&res.body)
            );
            assert!(
                res.body == *body,
                "{path}: the answer differs from the {} bytes sent",
                body.len()
            );
            assert_eq!(res.header("content-type"), Some("application/json"));
            assert_eq!(res.header("x-served-by"), Some(served_by.as_str()));
        }
    }
    assert!(bodies.last().unwrap().len() >= 100 * 1024);

    let chunked = send_chunked(app.addr(), "/api/example", &bodies[1], 7).await;
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.body, bodies[1], "a chunked body is echoed too");
    app.shutdown().await;
    d.shutdown().await;
}

#[async_std::test]
async fn invalid_json_is_400_and_an_oversized_body_413_with_the_json_error_body() {
    let d = testkit::discovery().await;
    let app = app::spawn(app_config(&d.url())).await.unwrap();
    let served_by = format!("127.0.0.1:{}", app.addr().port());
    for bad in [
        &b""[..],
        b"{\"a\":}",
        b"{\"a\":1",
        b"{'a': 1}",
        b"{\"a\":1} trailing",
        b"{} {}",
        b"NaN",
        b"\"\xff\xfe\"",
    ] {
        let res = send(app.addr(), "POST", "/api/example", bad).await;
        let what = String::from_utf8_lossy(bad);
        assert_eq!(res.status, 400, "{what:?}");
        assert_eq!(res.header("content-type"), Some("application/json"));
        assert_eq!(res.header("x-served-by"), Some(served_by.as_str()));
        let error = res.json();
        assert_eq!(error["error"]["code"], "invalid_json", "{what:?}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().len() > 10);
    }

    // The limit is 1 MiB by default: exactly that much passes, one byte more does not.
    let limit = shared::config::AppConfig::default().max_body_bytes;
    let mut at_limit = vec![b' '; limit];
    at_limit[0] = b'[';
    at_limit[limit - 1] = b']';
    let res = send(app.addr(), "POST", "/", &at_limit).await;
    assert_eq!(res.status, 200);
    assert!(res.body == at_limit, "a body at the limit is echoed whole");

    let mut over = at_limit.clone();
    over.insert(1, b'1');
    let res = send(app.addr(), "POST", "/", &over).await;
    assert_eq!(res.status, 413);
    assert_eq!(res.json()["error"]["code"], "payload_too_large");
    // Refused by the serving front from the length alone, before the body is
    // read or the app's handlers (and their x-served-by) see the request.
    // Without a length up front the limit holds while reading.
    let res = send_chunked(app.addr(), "/api/example", &over, 64 * 1024).await;
    assert_eq!(res.status, 413);
    assert_eq!(res.json()["error"]["code"], "payload_too_large");

    // Only POST is business.
    let res = send(app.addr(), "GET", "/api/example", b"").await;
    assert_eq!(res.status, 405);
    assert_eq!(res.json()["error"]["code"], "method_not_allowed");

    let res = send(app.addr(), "GET", "/health_check", b"").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json(), serde_json::json!({"status": "ok"}));
    app.shutdown().await;
    d.shutdown().await;
}
