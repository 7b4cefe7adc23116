//! The `tributary` binary: parses arguments and wires the layers together.

/// jemalloc, not glibc's malloc: under steady ingest glibc kept about a gigabyte of freed
/// memory in its per-thread arenas (91 MB in use, measured with `malloc_stats`), while
/// jemalloc hands dirty pages back to the system after a decay time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bench;
mod bench_ballista;
mod bench_batch;
mod bench_ingest;
mod bench_procs;
mod bench_scale;
mod bench_serve;
mod bench_soak;
mod cluster;
mod commands;
mod exposure;
mod probe;
mod views_cli;
mod wiring;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tributary_core::shutdown::StopOutcome;
use wiring::Role;

/// Tributary: lambda-architecture analytics. Events come in once; a speed layer and a
/// Delta Lake batch layer compute the same SQL views; serving merges both into one
/// exact answer.
#[derive(Parser, Debug)]
#[command(name = "tributary", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML). Without it, `./tributary.toml` if present, otherwise
    /// the built-in IoT example with its event generator switched on. Keys can be
    /// overridden by TRIBUTARY_… environment variables (TRIBUTARY_HTTP__ADDR=…).
    #[arg(long, short, global = true, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,

    /// How log lines are written to stderr: `text` for people, `json` (one object per
    /// line) for log collectors. Default: the configuration's `log-format`
    /// (TRIBUTARY_LOG_FORMAT), else text.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every role (ingest, speed, batch, serve and the dashboard) in one process.
    Up,
    /// Run only HTTP ingest (needs a shared log: log.kind = "kafka").
    Ingest,
    /// Run only the speed layer (needs a shared log: log.kind = "kafka").
    Speed,
    /// Run only the batch layer's archiver (needs a shared log: log.kind = "kafka").
    Batch,
    /// Run only the serving layer (needs a shared log: log.kind = "kafka").
    Serve,
    /// Run one batch recompute of every view now, with a progress bar, and exit.
    Recompute {
        /// Only merge the events since each view's last cutoff into its states (a view
        /// without states, or whose SQL changed, is recomputed in full anyway).
        #[arg(long)]
        incremental: bool,
        /// Recompute these views only (repeat the flag; default: every view).
        #[arg(long)]
        view: Vec<String>,
    },
    /// Load historical events from a file (JSON, NDJSON, CSV, Parquet; a path or an
    /// object-store URL) into a stream's master table, with a progress bar. Rows are
    /// validated like live events (refused ones go to the dead-letter table) and the
    /// next batch run includes them. Running it again on the same file adds nothing.
    Backfill {
        /// The stream the events belong to.
        #[arg(long)]
        stream: String,
        /// json (an array), ndjson, csv (with a header row) or parquet; by default
        /// from the file name's extension.
        #[arg(long)]
        format: Option<String>,
        /// A local path, or a URL such as file:///data/2025.parquet.
        source: String,
    },
    /// Check the configuration and print each view's compiled shape.
    Check,
    /// Create, replace, pause, resume, drop and list views of a running `tributary up`.
    Views {
        /// Where it listens (default: http:// + the configuration's http.addr).
        #[arg(long)]
        url: Option<String>,
        /// An API token with scope `admin` (for changes) or `read`.
        #[arg(long, env = "TRIBUTARY_TOKEN")]
        token: Option<String>,
        #[command(subcommand)]
        command: views_cli::ViewsCommand,
    },
    /// Exit 0 when URL (e.g. http://127.0.0.1:8080/health) answers 2xx, or when a
    /// `tcp://HOST:PORT` URL accepts a connection: a container health check that needs
    /// no curl.
    Probe {
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3_000)]
        timeout_ms: u64,
    },
    /// Run a Ballista scheduler for batch runs on a recompute cluster
    /// (`batch.engine = "ballista"`, `batch.ballista.scheduler` = this address).
    BallistaScheduler(cluster::SchedulerArgs),
    /// Run a Ballista executor of the scheduler at `--scheduler`; it reads the tables
    /// the configuration's `[storage]` names.
    BallistaExecutor(cluster::ExecutorArgs),
    /// Measure a layer on this machine, beside a reference engine on the same data.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
}

#[derive(Subcommand, Debug)]
enum BenchTarget {
    /// The speed layer from JSON records in the log to updated states (IoT view),
    /// with DuckDB over the same records (Python `duckdb`) as the reference.
    Speed {
        /// Events to generate.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Distinct devices.
        #[arg(long, default_value_t = 1_000)]
        devices: u32,
        /// Most records per partition per micro-batch.
        #[arg(long, default_value_t = 50_000)]
        batch: usize,
        /// Runtime worker threads (pin cores with `taskset` for a strict per-core figure).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Python with `duckdb` installed (default: ./.venv/bin/python).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Views to measure, comma-separated: `iot` (tumbling windows), `sessions`, `join`
        /// (the readings joined with a second stream of alerts), `left_join` (the same as a
        /// LEFT join: every reading, with or without an alert).
        #[arg(long, value_delimiter = ',', default_value = "iot,sessions,join")]
        views: Vec<String>,
    },
    /// View-query latency and freshness against a running Tributary, while ingesting.
    Serve(bench_serve::Args),
    /// The batch layer: archiving, a full and an incremental recompute of the IoT view,
    /// with DuckDB and polars over the same Parquet files (Python `duckdb`, `polars`).
    Batch(bench_batch::Args),
    /// HTTP ingest into the embedded log with 0% and with some bad records, in one run.
    Ingest(bench_ingest::Args),
    /// A long run against a running Tributary at a fixed ingest rate, sampling its
    /// memory, lag, freshness and errors (does memory stay flat?).
    Soak(bench_soak::Args),
    /// One against two speed processes over the same Kafka topic, and one against two
    /// serving processes over them, in one run (needs a broker, e.g. tansu).
    Scale(bench_scale::Args),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,deltalake=warn,datafusion=warn,buoyant_kernel=warn".into()
            }),
        )
        .with_writer(std::io::stderr);
    // Read before the command loads (and reports on) the configuration properly.
    let configured =
        tributary_core::config::load(wiring::config_path(cli.config.clone()).as_deref())
            .map(|(c, _)| c.log_format)
            .unwrap_or_default();
    let format = cli.log_format.unwrap_or(match configured {
        tributary_core::config::LogFormat::Text => LogFormat::Text,
        tributary_core::config::LogFormat::Json => LogFormat::Json,
    });
    // Two TLS back ends are linked in (delta-rs and the HTTPS server pull in both), so
    // rustls cannot choose on its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object per line, for log shippers (Loki, Elasticsearch, CloudWatch).
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    let threads = match &cli.command {
        Command::Bench {
            target: BenchTarget::Speed { threads, .. },
        } => *threads,
        _ => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(threads.max(1))
        .thread_name("tributary")
        // Planning is recursive; SQL is bounded by depth before it is planned
        // (core::sql_limits), and this leaves the planner room beyond those bounds.
        .thread_stack_size(8 * 1024 * 1024)
        .build()?;
    let config = wiring::config_path(cli.config);
    let outcome = runtime.block_on(dispatch(cli.command, config))?;
    Ok(exit_code(outcome))
}

/// Run a role subcommand until it stops, or a one-shot subcommand to its end.
async fn dispatch(command: Command, config: Option<PathBuf>) -> anyhow::Result<StopOutcome> {
    let done = match command {
        Command::Up => return wiring::run(&Role::ALL, config).await,
        Command::Ingest => return wiring::run(&[Role::Ingest], config).await,
        Command::Speed => return wiring::run(&[Role::Speed], config).await,
        Command::Batch => return wiring::run(&[Role::Batch], config).await,
        Command::Serve => return wiring::run(&[Role::Serve], config).await,
        Command::Recompute { incremental, view } => {
            let kind = if incremental {
                tributary_batch::RunKind::Incremental
            } else {
                tributary_batch::RunKind::Full
            };
            commands::recompute(config, kind, view).await
        }
        Command::Backfill {
            stream,
            format,
            source,
        } => commands::backfill(config, stream, source, format).await,
        Command::BallistaScheduler(args) => return cluster::scheduler(config, args).await,
        Command::BallistaExecutor(args) => return cluster::executor(config, args).await,
        Command::Check => commands::check(config).await,
        Command::Views {
            url,
            token,
            command,
        } => {
            let url = match url {
                Some(u) => u,
                None => {
                    let (c, _) = tributary_core::config::load(config.as_deref())?;
                    format!("http://{}", c.http.addr)
                }
            };
            views_cli::run(views_cli::Target { url, token }, command).await
        }
        Command::Probe { url, timeout_ms } => probe::probe(&url, timeout_ms).await,
        Command::Bench { target } => bench(target).await,
    };
    done.map(|()| StopOutcome::Clean)
}

/// How a long-running process's stop maps to its exit status: 0 only for a clean stop
/// on a signal, so a supervisor can tell a crash or an unclean stop from a requested one.
fn exit_code(outcome: StopOutcome) -> std::process::ExitCode {
    match outcome {
        StopOutcome::Clean => std::process::ExitCode::SUCCESS,
        StopOutcome::TaskEnded(why) => {
            eprintln!("tributary: {why}");
            std::process::ExitCode::from(1)
        }
        StopOutcome::Unclean(problems) => {
            eprintln!("tributary: stopped uncleanly: {}", problems.join("; "));
            std::process::ExitCode::from(2)
        }
        StopOutcome::Forced => {
            eprintln!("tributary: a second signal: exiting without waiting for tasks");
            std::process::ExitCode::from(130)
        }
    }
}

async fn bench(target: BenchTarget) -> anyhow::Result<()> {
    match target {
        BenchTarget::Speed {
            events,
            devices,
            batch,
            threads,
            python,
            views,
        } => {
            bench::speed(bench::Args {
                events,
                devices,
                batch,
                threads,
                python,
                views,
            })
            .await
        }
        BenchTarget::Serve(args) => bench_serve::serve(args).await,
        BenchTarget::Batch(args) => bench_batch::batch(args).await,
        BenchTarget::Ingest(args) => bench_ingest::ingest(args).await,
        BenchTarget::Soak(args) => bench_soak::soak(args).await,
        BenchTarget::Scale(args) => bench_scale::scale(args).await,
    }
}
