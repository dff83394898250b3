//! Acceptance 5: bad input answers 400/405/413 with the JSON error body naming
//! the problem, and leaves the registry exactly as it was.

use serde_json::Value;
use testkit::client::{call, get, register};

async fn registry_state(base: &str) -> Vec<(String, String, String, String)> {
    let (_, services): (u16, Value) = get(&format!("{base}/api/services")).await;
    let mut out = Vec::new();
    for (ns, list) in services.as_object().unwrap() {
        for i in list.as_array().unwrap() {
            out.push((
                ns.clone(),
                i["id"].to_string(),
                i["host"].to_string(),
                i["port"].to_string(),
            ));
        }
    }
    out.sort();
    out
}

#[async_std::test]
async fn bad_input_is_rejected_with_a_named_error_and_changes_nothing() {
    let d = testkit::discovery().await;
    let base = d.url();
    register(&base, "kept", 9).await;
    let before = registry_state(&base).await;

    let long = "n".repeat(129);
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        ("POST", "/api/register", Some("{".into()), 400, "JSON"),
        ("POST", "/api/register", Some("".into()), 400, "empty"),
        (
            "POST",
            "/api/register",
            Some("[]".into()),
            400,
            "JSON object",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"["a", 1]"#.into()),
            400,
            "JSON object",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"port": "8080"}"#.into()),
            400,
            "namespace",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "", "port": "8080"}"#.into()),
            400,
            "namespace",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "   ", "port": "8080"}"#.into()),
            400,
            "namespace",
        ),
        (
            "POST",
            "/api/register",
            Some(format!(r#"{{"namespace": "{long}", "port": "8080"}}"#)),
            400,
            "namespace",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": 5, "port": "8080"}"#.into()),
            400,
            "namespace",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a"}"#.into()),
            400,
            "port",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a", "port": "http"}"#.into()),
            400,
            "port",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a", "port": 0}"#.into()),
            400,
            "port",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a", "port": "65536"}"#.into()),
            400,
            "port",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a", "port": -1}"#.into()),
            400,
            "port",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a", "port": 80.5}"#.into()),
            400,
            "port",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a", "port": 1, "priority": 3}"#.into()),
            400,
            "priority",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a", "port": 1, "weight": 0}"#.into()),
            400,
            "weight",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a", "port": 1, "host": "a b"}"#.into()),
            400,
            "host",
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"namespace": "a", "port": 1, "health_check_path": "x"}"#.into()),
            400,
            "health_check_path",
        ),
        (
            "POST",
            "/api/register",
            Some(format!(
                r#"{{"namespace": "a", "port": 1, "pad": "{}"}}"#,
                "x".repeat(70_000)
            )),
            413,
            "larger",
        ),
        ("GET", "/api/register", None, 405, "Method Not Allowed"),
        ("PUT", "/api/lookup", None, 405, "Method Not Allowed"),
        ("DELETE", "/api/services", None, 405, "Method Not Allowed"),
        (
            "POST",
            "/api/deregister",
            Some(r#"{"namespace": "kept"}"#.into()),
            400,
            "port",
        ),
        (
            "POST",
            "/api/deregister",
            Some(r#"{"namespace": "kept", "port": "9", "x": 1}"#.into()),
            400,
            "x",
        ),
        (
            "POST",
            "/api/lookup",
            Some(r#"{"namespace": ""}"#.into()),
            400,
            "namespace",
        ),
        (
            "POST",
            "/api/lookup",
            Some(r#"{"namespace": "kept", "exclude": "a"}"#.into()),
            400,
            "exclude",
        ),
        ("GET", "/api/lookup", None, 400, "namespace"),
        ("GET", "/api/watch", None, 400, "namespace"),
        ("GET", "/no/such/path", None, 404, "Not Found"),
    ];
    for (method, path, body, status, needle) in cases {
        let (got, answer) = call(method, &format!("{base}{path}"), body.as_deref()).await;
        let shown = body.as_deref().map(|b| &b[..b.len().min(80)]).unwrap_or("");
        assert_eq!(got, status, "{method} {path} {shown}: {answer}");
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} {shown}: no JSON error body: {answer}"));
        assert!(answer["error"]["code"].is_string());
        assert!(
            message.contains(needle),
            "{method} {path} {shown}: {message:?} lacks {needle:?}"
        );
    }
    assert_eq!(
        registry_state(&base).await,
        before,
        "bad input changed the registry"
    );
    d.shutdown().await;
}
