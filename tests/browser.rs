//! The dashboard in a real browser: Debian's headless Chromium, driven by
//! playwright-core (tests/browser/live.mjs), against the real binary. Fails, never
//! skips, when the browser or the dashboard's browser build is missing.

mod common;

use std::path::Path;

use common::Tributary;

#[tokio::test]
async fn dashboard_hydrates_and_updates_live_without_reload() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let site = root.join("target/site");
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
    let script_dir = root.join("tests/browser");
    assert!(
        script_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run ./deploy/test.sh (npm ci in tests/browser)"
    );

    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[http]\nsite-dir = \"{}\"", site.display());
    let t = Tributary::start(dir.path(), &extra).await;
    let shots = root.join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = std::process::Command::new("node")
        .arg(script_dir.join("live.mjs"))
        .arg(&t.base)
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}\n{}",
        t.logs()
    );
    eprintln!("{stdout}");
}
