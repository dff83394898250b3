//! HTTP helpers over surf: JSON calls to discovery and the watch stream.

use async_std::future::timeout;
use serde_json::Value;
use shared::sse::{self, Line, Parser};
use shared::wire::WatchEvent;
use std::collections::BTreeMap;
use std::time::Duration;

/// Sends `body` (any text, valid JSON or not) with `method`; returns status and JSON answer.
pub async fn call(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let method: surf::http::Method = method.parse().unwrap();
    let mut req = surf::Request::new(method, surf::Url::parse(url).unwrap());
    if let Some(body) = body {
        req.set_body(body);
        req.set_content_type(surf::http::mime::JSON);
    }
    let mut res = surf::client().send(req).await.unwrap();
    let text = res.body_string().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (u16::from(res.status()), json)
}

pub async fn post(url: &str, body: &str) -> (u16, Value) {
    call("POST", url, Some(body)).await
}

pub async fn get(url: &str) -> (u16, Value) {
    call("GET", url, None).await
}

/// What one discovery replica serves: namespace → port → (id, status).
pub type View = BTreeMap<String, BTreeMap<String, (String, String)>>;

/// The [`View`] of discovery at `base`, from `/api/services`, without empty
/// namespaces (a replica that saw an instance go keeps its namespace, empty;
/// one started since does not list it), so two replicas' views compare.
pub async fn view(base: &str) -> View {
    let (status, services) = get(&format!("{base}/api/services")).await;
    assert_eq!(status, 200, "{services}");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = BTreeMap::new();
    for (ns, list) in services.as_object().into_iter().flatten() {
        let instances: BTreeMap<_, _> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| (text(&i["port"]), (text(&i["id"]), text(&i["status"]))))
            .collect();
        if !instances.is_empty() {
            out.insert(ns.clone(), instances);
        }
    }
    out
}

/// Discovery's `/api/store` (which always answers 200).
pub async fn store(base: &str) -> Value {
    let (status, body) = get(&format!("{base}/api/store")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Registers `port` in `namespace` with discovery at `base`; returns the answer.
pub async fn register(base: &str, namespace: &str, port: u16) -> Value {
    let body = serde_json::json!({"namespace": namespace, "port": port.to_string()});
    let (status, answer) = post(&format!("{base}/api/register"), &body.to_string()).await;
    assert!(
        status == 200 || status == 201,
        "register: {status} {answer}"
    );
    answer
}

/// The status discovery reports for `port` in `namespace`, if registered.
pub async fn status_of(base: &str, namespace: &str, port: u16) -> Option<String> {
    let (_, services) = get(&format!("{base}/api/services")).await;
    services[namespace]
        .as_array()?
        .iter()
        .find(|i| i["port"].as_str() == Some(port.to_string().as_str()))
        .map(|i| i["status"].as_str().unwrap_or_default().to_string())
}

/// A reader of discovery's watch stream.
pub struct Watch {
    reader: Box<dyn futures_lite::AsyncBufRead + Unpin + Send + Sync>,
    parser: Parser,
}

impl Watch {
    pub async fn open(base: &str, namespace: &str) -> Watch {
        let mut url = surf::Url::parse(&format!("{base}/api/watch")).unwrap();
        url.query_pairs_mut().append_pair("namespace", namespace);
        let mut res = surf::get(url).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.header("content-type")
                .map(|v| v.as_str().to_string())
                .as_deref(),
            Some("text/event-stream")
        );
        Watch {
            reader: Box::new(res.take_body().into_reader()),
            parser: Parser::default(),
        }
    }

    /// The next event or comment within `limit`.
    pub async fn next_line(&mut self, limit: Duration) -> Line {
        timeout(
            limit,
            sse::next(&mut self.reader, &mut self.parser, 1 << 20),
        )
        .await
        .expect("watch stream answered in time")
        .expect("watch stream readable")
        .expect("watch stream still open")
    }

    /// The next snapshot within `limit`, skipping keep-alive comments.
    pub async fn next(&mut self, limit: Duration) -> WatchEvent {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if let Line::Event(e) = self.next_line(left).await {
                assert_eq!(e.event, "instances");
                let event: WatchEvent = serde_json::from_str(&e.data).unwrap();
                assert_eq!(e.id, Some(event.version.to_string()));
                return event;
            }
        }
    }
}
