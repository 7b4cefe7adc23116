//! The deploy kit's configuration: `deploy/tributary.toml` (which the compose file and
//! the Kubernetes manifests give every role) passes `tributary check` with secrets in
//! the documented environment form, and the manifests' ConfigMap carries exactly that
//! file. (deploy/check-deploy.sh lints the image file and validates the manifests and
//! the compose file against their schemas.)

use std::path::Path;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `tributary check` on the deploy configuration with `env` set.
fn check(env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("--config")
        .arg(repo("deploy/tributary.toml"))
        .arg("check")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn the_deploy_configuration_passes_check_with_its_documented_secrets() {
    let out = check(&[
        // The form the compose file's header and the Secret show.
        (
            "TRIBUTARY_AUTH__TOKENS",
            r#"[{name = "ops", token = "0123456789abcdef0123456789abcdef", scopes = ["ingest", "read", "admin"]}]"#,
        ),
        ("TRIBUTARY_LOG__BROKERS", "kafka.kafka.svc:9092"),
        ("TRIBUTARY_STORAGE__OPTIONS__AWS_REGION", "eu-west-1"),
        // What the batch and serve roles get where a recompute cluster runs.
        ("TRIBUTARY_BATCH__ENGINE", "ballista"),
        (
            "TRIBUTARY_BATCH__BALLISTA__SCHEDULER",
            "ballista-scheduler.tributary.svc:50050",
        ),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("view signal_by_type over readings"),
        "{stdout}"
    );
    assert!(
        stdout.contains("batch runs: ballista at ballista-scheduler.tributary.svc:50050"),
        "{stdout}"
    );

    // A weak token in that form is refused by `check` as at start-up.
    let out = check(&[(
        "TRIBUTARY_AUTH__TOKENS",
        r#"[{name = "ops", token = "short", scopes = ["admin"]}]"#,
    )]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token `ops`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_configmap_carries_the_deploy_configuration_verbatim() {
    let manifests = std::fs::read_to_string(repo("deploy/k8s/tributary.yaml")).unwrap();
    let start = manifests
        .find("  tributary.toml: |\n")
        .expect("the ConfigMap's tributary.toml");
    let embedded: String = manifests[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("---"))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let file = std::fs::read_to_string(repo("deploy/tributary.toml")).unwrap();
    assert_eq!(
        embedded.trim_end(),
        file.trim_end(),
        "deploy/k8s/tributary.yaml's ConfigMap differs from deploy/tributary.toml"
    );
}
