//! The dashboard in a real browser: Debian's headless Chromium, driven by playwright-core
//! (tests/browser/*.mjs), against the real binary. Every page is loaded and checked
//! against the API, with and without API tokens, and with a view of 10,000 windows.
//! Fails, never skips, when the browser or the dashboard's browser build is missing.
//! Screenshots of every page, light and dark, land in target/screenshots.

mod common;

use std::path::{Path, PathBuf};

use common::Tributary;
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The dashboard's browser build and the browser, or a loud failure saying how to get them.
fn prerequisites() -> (PathBuf, String) {
    let site = root().join("target/site");
    assert!(
        site.join("pkg/tributary_web.js").exists(),
        "the dashboard's browser build is missing under {}: run ./deploy/test.sh (it runs deploy/build-web.sh)",
        site.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "headless Chromium not found at {chromium}: run ./deploy/test.sh, which installs Debian's chromium"
    );
    assert!(
        root()
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is not installed: run ./deploy/test.sh (npm ci in tests/browser)"
    );
    (site, chromium)
}

fn node(script: &str, args: &[&str], env: &[(&str, &str)], t: &Tributary) -> String {
    let (_, chromium) = prerequisites();
    let out = std::process::Command::new("node")
        .arg(root().join("tests/browser").join(script))
        .args(args)
        .env("CHROMIUM", &chromium)
        .envs(env.iter().copied())
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{stderr}\n{}",
        t.logs()
    );
    eprintln!("{script}:\n{stdout}");
    stdout
}

/// Readings for `types` device types over `windows` ten-minute windows from 2029-01-01.
fn readings(types: usize, windows: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for w in 0..windows {
        for t in 0..types {
            let minutes = w as i64 * 10;
            let ts = chrono::DateTime::from_timestamp(1_861_920_000 + minutes * 60, 0).unwrap();
            out.push(json!({
                "device": format!("dev-{t}-{}", w % 3),
                "device_type": format!("type-{t}"),
                "signal": 20 + (w * 7 + t) % 50,
                "ts": ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }));
        }
    }
    out
}

async fn seed(t: &Tributary, events: Vec<Value>, token: Option<&str>) {
    let client = reqwest::Client::new();
    for chunk in events.chunks(5000) {
        let mut req = client
            .post(format!("{}/api/v1/streams/readings/events", t.base))
            .json(&chunk);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "seeding: {}", r.text().await.unwrap());
    }
}

fn screenshots(name: &str) -> String {
    let dir = root().join("target/screenshots").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir.display().to_string()
}

#[tokio::test]
async fn every_page_shows_what_the_api_says_and_updates_live() {
    let (site, _) = prerequisites();
    let dir = tempfile::tempdir().unwrap();
    // A Delta sink, so the overview has a sink to show.
    let extra = format!(
        "[[sinks]]\nname = \"archive\"\nview = \"signal_by_type\"\nkind = \"delta\"\nmode = \"update\"\npath = \"sinks/archive\"\nevery-ms = 200\n[http]\nsite-dir = \"{}\"",
        site.display()
    );
    let t = Tributary::start(dir.path(), &extra).await;
    let mut events = readings(6, 40);
    // One record the schema refuses, so the streams page has a dead letter to show.
    events.push(json!({ "device": "broken", "signal": "loud", "ts": "2029-01-01T00:00:00Z" }));
    let (status, body) = t.post("readings", &json!(events)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rejected"], 1, "{body}");
    node(
        "dashboard.mjs",
        &[&t.base, &screenshots("open")],
        &[("SINK", "archive")],
        &t,
    );
}

#[tokio::test]
async fn with_tokens_the_dashboard_asks_for_one_and_keeps_it_for_the_session() {
    let (site, _) = prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let token = "browser-admin-token-0123456789";
    let extra = format!(
        "[http]\nsite-dir = \"{}\"\n[auth]\ntokens = [{{ name = \"ops\", token = \"{token}\", scopes = [\"admin\"] }}]",
        site.display()
    );
    let t = Tributary::start(dir.path(), &extra).await;
    seed(&t, readings(6, 40), Some(token)).await;
    // Without a token nothing but the login form is served.
    let page = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/views/signal_by_type", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    node(
        "dashboard.mjs",
        &[&t.base, &screenshots("tokens")],
        &[("TOKEN", token)],
        &t,
    );
}

#[tokio::test]
async fn a_view_of_ten_thousand_windows_stays_interactive() {
    let (site, _) = prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[http]\nsite-dir = \"{}\"", site.display());
    let t = Tributary::start(dir.path(), &extra).await;
    seed(&t, readings(10, 1000), None).await;
    t.wait_for("/api/v1/views/signal_by_type?limit=0", |v| {
        v["total_rows"] == 10_000
    })
    .await;
    node("windows.mjs", &[&t.base], &[], &t);
}

#[tokio::test]
async fn the_dashboard_says_when_the_server_is_gone_and_recovers() {
    use tokio::io::AsyncBufReadExt;

    let (site, chromium) = prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[http]\nsite-dir = \"{}\"", site.display());
    let mut t = Tributary::start(dir.path(), &extra).await;
    seed(&t, readings(3, 10), None).await;
    let mut child = tokio::process::Command::new("node")
        .arg(root().join("tests/browser/offline.mjs"))
        .arg(&t.base)
        .arg(screenshots("offline"))
        .env("CHROMIUM", &chromium)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running node");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("offline.mjs said nothing for a minute")
            .unwrap()
            .unwrap_or_default()
    };
    assert_eq!(next().await, "LIVE");
    t.terminate();
    let said = next().await;
    assert_eq!(said, "OFFLINE", "{said}");
    t.restart_same_port().await;
    let said = next().await;
    assert_eq!(said, "BACK", "{said}\n{}", t.logs());
    assert!(child.wait().await.unwrap().success());
}
