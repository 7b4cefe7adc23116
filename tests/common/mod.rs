//! Drives the real `tributary` binary for end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cluster;
pub mod views;

pub const IOT_STREAM: &str = r#"
[[streams]]
name = "readings"
event-time = "ts"
key = "device"
partitions = 2
fields = [
  { name = "device", type = "string" },
  { name = "device_type", type = "string" },
  { name = "signal", type = "float64" },
  { name = "ts", type = "timestamp" },
]

[[views]]
name = "signal_by_type"
sql = """
SELECT device_type, date_bin(INTERVAL '10 minutes', ts) AS window_start,
       avg(signal) AS avg_signal, max(signal) AS max_signal, count(*) AS readings
FROM readings WHERE signal > 15
GROUP BY device_type, window_start
"""
"#;

/// The device types of the IoT stream's test events.
pub const DEVICE_TYPES: [&str; 3] = ["pump", "fan", "valve"];

/// IoT events `from..from + n`: device `e<i>` (one per event, so each can be found
/// again), type by `i % 3`, signal `i % signals`, a minute apart from midnight.
pub fn numbered_readings(from: usize, n: usize, signals: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                serde_json::json!({
                    "device": format!("e{i:06}"),
                    "device_type": DEVICE_TYPES[i % 3],
                    "signal": (i % signals) as f64,
                    "ts": format!("2026-01-01T{:02}:{:02}:00Z", (i / 60) % 24, i % 60),
                })
            })
            .collect(),
    )
}

pub struct Tributary {
    pub dir: PathBuf,
    /// `None`: no configuration file, the embedded default.
    pub config: Option<PathBuf>,
    pub base: String,
    child: Option<Child>,
    pub client: reqwest::Client,
    /// The subcommand: `up`, or one role.
    pub role: String,
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Tributary {
    /// Write a configuration into `dir` (storage under `dir/data`) and start `up`.
    /// The HTTP address comes from the environment, which also tests overrides.
    pub async fn start(dir: &Path, extra: &str) -> Tributary {
        let config = Self::configure(dir, extra);
        Self::launch(dir, Some(config), "up", &[]).await
    }

    /// Write the configuration (as `start` does) without starting anything.
    pub fn configure(dir: &Path, extra: &str) -> PathBuf {
        Self::configure_pipeline(dir, extra, 200, IOT_STREAM)
    }

    /// Write a configuration with `pipeline` (its `[[streams]]` and `[[views]]`).
    pub fn configure_pipeline(dir: &Path, extra: &str, flush_ms: u64, pipeline: &str) -> PathBuf {
        let config = dir.join("tributary.toml");
        let text = format!(
            "storage-root = \"{}\"\n{extra}\n[speed]\nsegment-width-ms = 1000\n[batch]\narchive-flush-ms = {flush_ms}\n{pipeline}",
            dir.join("data").display()
        );
        std::fs::write(&config, text).unwrap();
        config
    }

    /// Write a configuration on the Kafka test broker (deploy/test.sh starts it), with
    /// topics under a prefix of their own so concurrent tests never share one.
    pub fn configure_kafka(dir: &Path, topic_prefix: &str) -> PathBuf {
        Self::configure_kafka_with(dir, topic_prefix, "")
    }

    /// [`Self::configure_kafka`] with more configuration (`[storage]`, say).
    pub fn configure_kafka_with(dir: &Path, topic_prefix: &str, more: &str) -> PathBuf {
        let extra = format!(
            "[log]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic-prefix = \"{topic_prefix}\"\ntick-interval-ms = 200\n{more}",
            kafka_brokers()
        );
        Self::configure(dir, &extra)
    }

    /// Start `up` on a written configuration.
    pub async fn start_config(dir: &Path, config: PathBuf) -> Tributary {
        Self::launch(dir, Some(config), "up", &[]).await
    }

    /// Start one role (`ingest`, `speed`, `batch`, `serve`, or `up`) with a written
    /// configuration and extra environment.
    pub async fn start_role(
        dir: &Path,
        config: &Path,
        role: &str,
        env: &[(&str, &str)],
    ) -> Tributary {
        Self::launch(dir, Some(config.to_path_buf()), role, env).await
    }

    /// Start `serve` on a written configuration, reaching the speed process `speed`.
    pub async fn start_serve(dir: &Path, config: &Path, speed: &Tributary) -> Tributary {
        Self::start_role(
            dir,
            config,
            "serve",
            &[("TRIBUTARY_SPEED__URL", &speed.base)],
        )
        .await
    }

    /// Start `up` with no configuration file in `dir` (storage from the environment).
    pub async fn start_default(dir: &Path) -> Tributary {
        Self::launch(dir, None, "up", &[]).await
    }

    async fn launch(
        dir: &Path,
        config: Option<PathBuf>,
        role: &str,
        env: &[(&str, &str)],
    ) -> Tributary {
        let mut t = Tributary {
            dir: dir.to_path_buf(),
            config,
            base: String::new(),
            child: None,
            client: reqwest::Client::new(),
            role: role.into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        t.restart().await;
        t
    }

    /// Run a subcommand to completion with this instance's configuration.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tributary"));
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(args).current_dir(&self.dir).output().unwrap()
    }

    /// Start (again) on a fresh port and wait until `/health` says every role is up.
    pub async fn restart(&mut self) {
        self.start_on(free_port()).await;
    }

    /// Start again on the same port (others keep reaching it at the same address).
    pub async fn restart_same_port(&mut self) {
        let port: u16 = self.base.rsplit(':').next().unwrap().parse().unwrap();
        self.start_on(port).await;
    }

    async fn start_on(&mut self, port: u16) {
        self.base = format!("http://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("tributary-{}-{port}.log", self.role)))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tributary"));
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg(&self.role)
            .env("TRIBUTARY_HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("TRIBUTARY_STORAGE_ROOT", self.dir.join("data"));
        // The instance's own environment comes last, so it may override the above.
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning tributary");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/health", self.base))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "tributary exited during start-up: {status}\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tributary did not become healthy\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".log") {
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// SIGKILL: no chance to flush or clean up.
    /// The running process's resident memory as the kernel reports it (`VmRSS`), bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "no graceful exit within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn post(&self, stream: &str, body: &Value) -> (u16, Value) {
        self.post_json(&format!("/api/v1/streams/{stream}/events"), body)
            .await
    }

    /// POST a JSON body to an API path.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, stream: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let path = format!("/api/v1/streams/{stream}/events");
        self.post_body(&path, content_type, body).await
    }

    /// POST `body` as it is, with `content_type`, to an API path.
    pub async fn post_body(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST without a body to an API path.
    pub async fn post_path(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn run_batch(&self) -> Value {
        self.run_batch_kind("full").await
    }

    /// Run table maintenance now (it must succeed); returns what it did to `table`
    /// (`master/readings`, …).
    pub async fn maintain(&self, table: &str) -> Value {
        let (status, report) = self.post_path("/api/v1/batch/maintenance").await;
        assert_eq!(status, 200, "{report}");
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["table"] == table)
            .unwrap_or_else(|| panic!("no {table} in {report}"))
            .clone()
    }

    /// A batch run of `kind` (`full` or `incremental`), waited for; it must succeed.
    pub async fn run_batch_kind(&self, kind: &str) -> Value {
        let r = self
            .client
            .post(format!(
                "{}/api/v1/batch/runs?wait=true&kind={kind}",
                self.base
            ))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "batch run answered {status}: {v}");
        assert_eq!(v["status"], "succeeded", "batch run failed: {v}");
        v
    }

    /// Poll `path` until `check` holds (at most 20 s); returns the last answer.
    pub async fn wait_for(&self, path: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, v) = self.get(path).await;
            if status == 200 && check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "condition not reached on {path}; last answer: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tributary {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The Python interpreter with `deltalake` installed (deploy/test.sh provides it).
pub fn python() -> String {
    let p = std::env::var("DELTA_READER_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    assert!(
        Path::new(&p).exists(),
        "the independent Delta reader needs Python with `deltalake` at {p}: run ./deploy/test.sh, which installs it"
    );
    p
}

/// Run `script` with the independent Delta reader's Python and parse the JSON it prints.
/// deltalake's runtime threads can abort interpreter teardown, so the output is flushed
/// and teardown skipped.
pub fn python_json(script: &str) -> Value {
    let script = format!("{script}\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n");
    let out = Command::new(python())
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The S3-protocol server the object-store tests use (deploy/test.sh installs and
/// starts SeaweedFS): its endpoint, a bucket, and the credentials.
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

pub fn s3() -> S3 {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: these tests need an S3-protocol server; \
                 ./deploy/test.sh installs and starts SeaweedFS"
            )
        })
    };
    S3 {
        endpoint: var("S3_TEST_ENDPOINT"),
        bucket: var("S3_TEST_BUCKET"),
        key_id: var("S3_TEST_KEY_ID"),
        secret: var("S3_TEST_SECRET"),
    }
}

impl S3 {
    /// The object_store options that reach this server (as `[storage.options]`).
    pub fn options(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", self.key_id.as_str()),
            ("aws_secret_access_key", self.secret.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// `[storage]` for a Tributary on this server, local state in `local`.
    pub fn storage_section(&self, local: &Path) -> String {
        let options: String = self
            .options()
            .iter()
            .map(|(k, v)| format!("{k} = \"{v}\"\n"))
            .collect();
        format!(
            "[storage]\nlocal-dir = \"{}\"\n[storage.options]\n{options}",
            local.display()
        )
    }

    /// The same options for the Python reader (`storage_options=`), as a Python dict.
    pub fn python_options(&self) -> String {
        format!(
            "{{'AWS_ENDPOINT_URL': '{}', 'AWS_ALLOW_HTTP': 'true', 'AWS_REGION': 'us-east-1', \
             'AWS_ACCESS_KEY_ID': '{}', 'AWS_SECRET_ACCESS_KEY': '{}'}}",
            self.endpoint, self.key_id, self.secret
        )
    }
}

/// Rows per device in the master table under the S3 `root`, read by the Python
/// `deltalake` reader; none while the archiver has not committed the table yet (callers
/// poll until the counts they expect are there).
pub fn python_master_counts_s3(root: &str) -> std::collections::BTreeMap<String, i64> {
    let script = format!(
        "from deltalake import DeltaTable\nfrom deltalake.exceptions import TableNotFoundError\n\
         import json, collections\n\
         try:\n    t = DeltaTable('{root}/master/readings', storage_options={})\n\
         \x20   rows = t.to_pyarrow_table().column('device').to_pylist()\n\
         except TableNotFoundError:\n    rows = []\n\
         print(json.dumps(collections.Counter(rows)))",
        s3().python_options()
    );
    python_json(&script)
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_i64().unwrap()))
        .collect()
}

/// The Kafka-protocol broker the Kafka tests use (deploy/test.sh starts tansu).
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_TEST_BROKERS").expect(
        "KAFKA_TEST_BROKERS is not set: these tests need a Kafka-protocol broker; \
         ./deploy/test.sh installs and starts tansu",
    )
}

/// Sum of the `readings` column over a view answer's rows.
pub fn total_readings(answer: &Value) -> i64 {
    column_sum(answer, "readings")
}

/// Sum of integer column `column` over a view answer's rows.
pub fn column_sum(answer: &Value, column: &str) -> i64 {
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[column].as_i64().unwrap())
        .sum()
}

/// Rows of `sql` over the Delta table at `path` (registered as `t`), as text, read
/// with delta-rs in the test process. A table not created yet has no rows.
pub async fn delta_rows(path: &Path, sql: &str) -> Vec<Vec<String>> {
    use deltalake::arrow::util::display::array_value_to_string;
    use deltalake::datafusion::prelude::SessionContext;
    if !path.join("_delta_log").exists() {
        return Vec::new();
    }
    let url = url::Url::from_directory_path(path).unwrap();
    let table = deltalake::DeltaTable::try_from_url(url).await.unwrap();
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(|c| array_value_to_string(c, i).unwrap())
                    .collect(),
            );
        }
    }
    out
}

/// `device` → rows in the master table of `readings` under `dir/data`.
pub async fn master_counts(dir: &Path) -> std::collections::BTreeMap<String, i64> {
    delta_rows(
        &dir.join("data/master/readings"),
        "SELECT device, count(*) FROM t GROUP BY device",
    )
    .await
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap()))
    .collect()
}
