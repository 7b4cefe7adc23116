//! The one-shot subcommands: `check`, `recompute` and `backfill`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tributary_core::config::LogKind;

use crate::wiring::{batch_layer, load, open_log};

/// `tributary check`: the configuration and each view's compiled shape.
pub async fn check(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, source, pipeline) = load(path).await?;
    // Object-store options are checked by name here too, without touching the store.
    tributary_core::cloud::register(&config.storage.options)?;
    println!("configuration {source}: OK");
    for s in &pipeline.streams {
        println!(
            "stream {}: {} fields, {} partitions",
            s.name,
            s.fields.len(),
            s.partitions
        );
    }
    match config.batch.engine {
        tributary_core::config::BatchEngine::Local => println!("batch runs: local"),
        tributary_core::config::BatchEngine::Ballista => println!(
            "batch runs: ballista at {} ({} tasks per scan{})",
            config.batch.ballista.scheduler,
            config.batch.ballista.partitions,
            if config.batch.ballista.fallback_to_local {
                ", local when unreachable"
            } else {
                ""
            }
        ),
    }
    for v in &pipeline.views {
        println!(
            "view {} over {}: keys [{}], window {}, values [{}]",
            v.name,
            v.stream,
            v.keys.join(", "),
            v.window,
            v.values.join(", ")
        );
    }
    for v in &pipeline.append_views {
        println!(
            "append view {} over {}: columns [{}]",
            v.name,
            v.stream,
            v.schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for s in &config.sinks {
        let target = match s.kind {
            tributary_core::config::SinkKind::Webhook => s.url.clone().unwrap_or_default(),
            tributary_core::config::SinkKind::Kafka => s.topic.clone().unwrap_or_default(),
            tributary_core::config::SinkKind::Delta => s
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        };
        println!(
            "sink {}: view {} -> {} {target}, {} mode{}",
            s.name,
            s.view,
            s.kind.name(),
            s.mode.name(),
            if config.run_sinks {
                ""
            } else {
                " (run-sinks = false: not delivered by this process)"
            }
        );
    }
    Ok(())
}

/// One batch run from the command line.
pub async fn recompute(
    path: Option<PathBuf>,
    kind: tributary_batch::RunKind,
    views: Vec<String>,
) -> anyhow::Result<()> {
    let (config, _, pipeline) = load(path).await?;
    let storage = config.open_storage()?;
    let opened = open_log(&config, &storage, &pipeline).await;
    let (log, _) = match config.log.kind {
        LogKind::Embedded => opened.context(
            "a running `tributary up` holds the embedded log; trigger the run there with \
             `curl -X POST 'http://ADDR/api/v1/batch/runs?wait=true'`",
        )?,
        LogKind::Kafka => opened?,
    };
    let batch = batch_layer(&config, &pipeline, &storage, &log);
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let progress_bar = bar.clone();
    let progress = Arc::new(move |msg: &str, done: u64, total: u64| {
        progress_bar.set_length(total);
        progress_bar.set_position(done);
        progress_bar.set_message(msg.to_string());
    });
    let only = (!views.is_empty()).then_some(views);
    let (_, run) = batch.try_start_views(kind, only, progress)?;
    let result = run.await;
    bar.finish_and_clear();
    let record = result?;
    println!("{}", serde_json_pretty(&record));
    Ok(())
}

fn serde_json_pretty(record: &tributary_batch::RunRecord) -> String {
    format!(
        "run {}: {:?}, cutoff {}, {} rows in, {} state rows out, {} ms",
        record.id,
        record.status,
        record.cutoff.as_deref().unwrap_or("-"),
        record.rows_in,
        record.rows_out,
        record.duration_ms.unwrap_or(0)
    )
}

/// `tributary backfill`: load a file of historical events into a stream's master table.
pub async fn backfill(
    path: Option<PathBuf>,
    stream: String,
    source: String,
    format: Option<String>,
) -> anyhow::Result<()> {
    use tributary_batch::backfill::{self, Format};
    let (config, _, pipeline) = load(path).await?;
    let Some(schema) = pipeline.stream(&stream).cloned() else {
        let known: Vec<_> = pipeline.streams.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "unknown stream `{stream}`; the configuration has: {}",
            known.join(", ")
        );
    };
    let format =
        match format {
            None => None,
            Some(f) => Some(Format::parse(&f).with_context(|| {
                format!("--format `{f}`: expected json, ndjson, csv or parquet")
            })?),
        };
    let storage = config.open_storage()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} rows ({per_sec}, {eta} left)",
        )
        .expect("static template"),
    );
    let progress_bar = bar.clone();
    let progress = move |done: u64, total: u64| {
        progress_bar.set_length(total);
        progress_bar.set_position(done);
    };
    let report = backfill::run(&storage, &schema, &source, format, &progress).await;
    bar.finish_and_clear();
    let report = report?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("the report serializes")
    );
    Ok(())
}
