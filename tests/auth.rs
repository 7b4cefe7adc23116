//! API tokens and scopes on a running `tributary up`: with tokens configured (here from
//! the environment), every ingest, read and admin endpoint needs its scope; missing and
//! unknown tokens get 401, a token without the scope 403; `/health` stays open; the
//! live stream takes its token as a query parameter; dashboard pages send a browser
//! without a read token to the login form, whose session cookie then stands for the
//! token. Without tokens, a non-loopback
//! address is refused at start-up.

mod common;

use common::Tributary;
use serde_json::json;

const TOKENS: &str = r#"[{name="collector",token="ingest-secret-0123456789",scopes=["ingest"]},{name="viewer",token="read-secret-0123456789",scopes=["read"]},{name="ops",token="admin-secret-0123456789",scopes=["admin"]}]"#;

async fn call(t: &Tributary, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let url = format!("{}{path}", t.base);
    let mut req = match method {
        "POST" => t.client.post(url),
        _ => t.client.get(url),
    };
    if path.contains("/events") {
        req = req.json(&json!([{"device": "a", "device_type": "pump", "signal": 20.0, "ts": "2026-01-01T00:00:00Z"}]));
    } else if path.ends_with("/sql") {
        req = req.json(&json!({"sql": "SELECT 1 AS one"}));
    }
    if let Some(tok) = token {
        req = req.bearer_auth(tok);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    // A live stream that was let in never ends: its status is the answer.
    if path.contains("/live") && status == 200 {
        return (status, String::new());
    }
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn every_endpoint_needs_its_scope_once_tokens_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure(dir.path(), "");
    let t = Tributary::start_role(
        dir.path(),
        &config,
        "up",
        &[("TRIBUTARY_AUTH__TOKENS", TOKENS)],
    )
    .await;

    let endpoints = [
        ("POST", "/api/v1/streams/readings/events", "ingest"),
        ("GET", "/api/v1/views", "read"),
        ("GET", "/api/v1/views/signal_by_type", "read"),
        ("GET", "/api/v1/views/signal_by_type/live", "read"),
        ("POST", "/api/v1/sql", "read"),
        ("GET", "/api/v1/batch/runs", "read"),
        ("GET", "/api/v1/speed/stats", "read"),
        ("GET", "/api/v1/status", "read"),
        ("GET", "/metrics", "read"),
        ("GET", "/api/v1/streams", "read"),
        ("GET", "/api/v1/streams/readings/recent", "read"),
        ("GET", "/api/v1/status/live", "read"),
        ("POST", "/api/v1/batch/runs", "admin"),
        (
            "POST",
            "/api/v1/streams/readings/dead-letters/replay",
            "admin",
        ),
    ];
    for (method, path, scope) in endpoints {
        let (status, body) = call(&t, method, path, None).await;
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        assert!(
            body.contains("missing API token") && body.contains(scope),
            "{body}"
        );
        let (status, body) = call(&t, method, path, Some("guess")).await;
        assert_eq!(status, 401, "{method} {path} with an unknown token: {body}");
        for (token, holds) in [
            ("ingest-secret-0123456789", "ingest"),
            ("read-secret-0123456789", "read"),
            ("admin-secret-0123456789", "admin"),
        ] {
            let allowed = holds == scope || holds == "admin";
            let (status, body) = call(&t, method, path, Some(token)).await;
            if allowed {
                assert!(
                    (200..300).contains(&status),
                    "{method} {path} with the {holds} token: {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 403,
                    "{method} {path} with the {holds} token: {body}"
                );
                assert!(body.contains(scope), "{body}");
            }
        }
    }
    // The live stream from a browser: the token in the query.
    let (status, _) = call(
        &t,
        "GET",
        "/api/v1/views/signal_by_type/live?access_token=read-secret-0123456789",
        None,
    )
    .await;
    assert_eq!(status, 200);
    for open in ["/health", "/ready"] {
        let (status, body) = call(&t, "GET", open, None).await;
        assert!(status == 200 || status == 503, "{open}: {status} {body}");
        assert!(!body.contains("API token"), "{open} is open: {body}");
    }
    dashboard_pages_need_a_read_token_or_the_login_cookie(&t).await;
}

async fn dashboard_pages_need_a_read_token_or_the_login_cookie(t: &Tributary) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, auth: Option<(&str, String)>| {
        let mut req = client.get(format!("{}{path}", t.base));
        if let Some((h, v)) = auth {
            req = req.header(h, v);
        }
        req.send()
    };
    for (path, auth) in [
        ("/", None),
        ("/views/signal_by_type", None),
        (
            "/batch",
            Some((
                "authorization",
                "Bearer ingest-secret-0123456789".to_string(),
            )),
        ),
        (
            "/sql",
            Some(("cookie", "tributary_token=guess".to_string())),
        ),
    ] {
        let r = get(path, auth).await.unwrap();
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(r.headers()["location"], "/login", "{path}");
    }
    let r = get(
        "/",
        Some(("authorization", "Bearer read-secret-0123456789".into())),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // The login form: a wrong token is refused with the reason, a right one becomes a
    // session cookie that other sites' requests do not carry.
    let login = |token: &str| {
        client
            .post(format!("{}/login", t.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    let r = login("guess").await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("unknown or lacks the read scope")
    );
    let r = login("ingest-secret-0123456789").await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "an ingest-only token cannot read the dashboard"
    );
    let r = login("read-secret-0123456789").await.unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("tributary_token=read-secret-0123456789;")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = Some((
        "cookie",
        "tributary_token=read-secret-0123456789".to_string(),
    ));
    for path in ["/batch", "/streams/readings", "/api/v1/status"] {
        let r = get(path, session.clone()).await.unwrap();
        assert_eq!(r.status(), 200, "{path} with the session cookie");
    }
    // The cookie carries the token's scopes, no more.
    let r = client
        .post(format!("{}/api/v1/batch/runs", t.base))
        .header("cookie", "tributary_token=read-secret-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = get("/logout", None).await.unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn no_tokens_means_loopback_only_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let config = Tributary::configure(dir.path(), "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("--config")
        .arg(&config)
        .arg("up")
        .env("TRIBUTARY_HTTP__ADDR", "0.0.0.0:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without API tokens") && err.contains("allow-unauthenticated"),
        "{err}"
    );
}
