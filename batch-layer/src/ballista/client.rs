//! One job on the Ballista scheduler: submit a physical plan, wait for it under a
//! deadline, fetch every output partition from the executor that holds it.
//!
//! Ballista's own `execute_physical_plan` does the same but hides the job: its id (to
//! cancel it when the deadline passes), its queue and run times (for the bench), and
//! which executor ran each task (for the run history). This is that loop, with those
//! kept.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ballista_core::client::BallistaClient;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelJobParams, ExecuteQueryParams, GetJobStatusParams, KeyValuePair, PartitionLocation,
    SuccessfulJob, execute_query_params::Query, execute_query_result, job_status,
};
use ballista_core::utils::{GrpcClientConfig, create_grpc_client_endpoint};
use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionConfig;
use futures::TryStreamExt;
use tonic::transport::Channel;

/// How often a waiting client asks for its job's status (Ballista's client uses 50 ms).
const POLL: Duration = Duration::from_millis(50);

/// Why a job produced no result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The plan could not be made or encoded for shipping.
    #[error("cannot ship the plan: {0}")]
    Plan(#[source] DataFusionError),
    /// The scheduler could not be reached or refused the submission: nothing ran.
    #[error("cannot submit to the scheduler: {0}")]
    Submit(String),
    /// The job was accepted and then failed (a task failed more often than the
    /// scheduler retries it, an executor was lost with its outputs, a result could
    /// not be fetched).
    #[error("job {job} failed: {reason}")]
    Failed {
        /// The scheduler's id of the job.
        job: String,
        /// What the scheduler or the fetch reported.
        reason: String,
    },
    /// The job did not finish within the deadline and was cancelled.
    #[error("job {job} did not finish within {timeout:?}; cancelled")]
    Timeout {
        /// The scheduler's id of the job.
        job: String,
        /// `batch.ballista.job-timeout-ms`.
        timeout: Duration,
    },
}

impl JobError {
    /// Whether trying the job again may succeed: a job that ran and failed (an
    /// executor lost mid-run) may; a scheduler that refused it, or a plan that cannot
    /// ship, will fail again.
    pub fn may_pass(&self) -> bool {
        !matches!(self, JobError::Submit(_) | JobError::Plan(_))
    }
}

/// A finished job's output and where its time went.
#[derive(Debug, Default)]
pub struct JobOutput {
    /// Every output partition's batches.
    pub batches: Vec<RecordBatch>,
    /// Tasks of the job's final stage, by the executor that ran them.
    pub tasks: BTreeMap<String, u64>,
    /// Time the job waited in the scheduler's queue (planning into stages included).
    pub queued: Duration,
    /// Time its stages ran on the executors.
    pub running: Duration,
    /// Time to fetch its output from the executors.
    pub fetching: Duration,
}

/// Submit `plan` (an encoded `PhysicalPlanNode`) to the scheduler at `scheduler`
/// (`host:port`) in session `session`; its output once every task has run.
pub async fn run_job(
    scheduler: &str,
    plan: Vec<u8>,
    session: String,
    timeout: Duration,
) -> Result<JobOutput, JobError> {
    let config = SessionConfig::new_with_ballista();
    let grpc = GrpcClientConfig::from(&config.ballista_config());
    let mut client = connect(scheduler, &grpc).await?;
    let job = submit(&mut client, plan, session, &config).await?;
    let waited = tokio::time::timeout(timeout, wait(&mut client, &job)).await;
    let success = match waited {
        Ok(done) => done?,
        Err(_) => {
            // Its tasks would go on holding executor slots the next run needs.
            if let Err(e) = client
                .cancel_job(CancelJobParams {
                    job_id: job.clone(),
                })
                .await
            {
                tracing::warn!(%job, error = %e, "could not cancel a timed-out Ballista job");
            }
            return Err(JobError::Timeout { job, timeout });
        }
    };
    let mut out = JobOutput {
        queued: Duration::from_millis(success.started_at.saturating_sub(success.queued_at)),
        running: Duration::from_millis(success.ended_at.saturating_sub(success.started_at)),
        ..JobOutput::default()
    };
    let fetching = Instant::now();
    for location in success.partition_location {
        let executor = location
            .executor_meta
            .as_ref()
            .map_or_else(|| "?".to_string(), |m| m.id.clone());
        *out.tasks.entry(executor).or_default() += 1;
        let batches = fetch(location, &grpc).await.map_err(|e| JobError::Failed {
            job: job.clone(),
            reason: format!("fetching a result partition: {e}"),
        })?;
        out.batches.extend(batches);
    }
    out.fetching = fetching.elapsed();
    Ok(out)
}

async fn connect(
    scheduler: &str,
    grpc: &GrpcClientConfig,
) -> Result<SchedulerGrpcClient<Channel>, JobError> {
    let submit = |e: &dyn std::fmt::Display| JobError::Submit(e.to_string());
    let endpoint = create_grpc_client_endpoint(format!("http://{scheduler}"), Some(grpc))
        .map_err(|e| submit(&e))?;
    let channel = endpoint.connect().await.map_err(|e| submit(&e))?;
    Ok(SchedulerGrpcClient::new(channel)
        .max_encoding_message_size(grpc.max_message_size)
        .max_decoding_message_size(grpc.max_message_size))
}

/// The job's id once the scheduler has queued it.
async fn submit(
    client: &mut SchedulerGrpcClient<Channel>,
    plan: Vec<u8>,
    session: String,
    config: &SessionConfig,
) -> Result<String, JobError> {
    let settings = config
        .options()
        .entries()
        .into_iter()
        .map(|e| KeyValuePair {
            key: e.key,
            value: e.value,
        })
        .collect();
    let mut request = tonic::Request::new(ExecuteQueryParams {
        query: Some(Query::PhysicalPlan(plan)),
        settings,
        session_id: session,
        operation_id: uuid_like(),
    });
    // Schedulers from 55.0 on refuse submissions without the client's version.
    ballista_core::version::insert_version_header(request.metadata_mut());
    let response = client
        .execute_query(request)
        .await
        .map_err(|e| JobError::Submit(e.message().to_string()))?
        .into_inner();
    match response.result {
        Some(execute_query_result::Result::Success(ok)) => Ok(ok.job_id),
        Some(execute_query_result::Result::Failure(failure)) => {
            Err(JobError::Submit(format!("{failure:?}")))
        }
        None => Err(JobError::Submit("the scheduler answered nothing".into())),
    }
}

/// Poll until the job has succeeded or failed.
async fn wait(
    client: &mut SchedulerGrpcClient<Channel>,
    job: &str,
) -> Result<SuccessfulJob, JobError> {
    let failed = |reason: String| JobError::Failed {
        job: job.to_string(),
        reason,
    };
    loop {
        let status = client
            .get_job_status(GetJobStatusParams {
                job_id: job.to_string(),
            })
            .await
            .map_err(|e| failed(format!("asking its status: {}", e.message())))?
            .into_inner()
            .status
            .and_then(|s| s.status);
        match status {
            Some(job_status::Status::Successful(done)) => return Ok(done),
            Some(job_status::Status::Failed(f)) => return Err(failed(f.error)),
            None | Some(job_status::Status::Queued(_)) | Some(job_status::Status::Running(_)) => {
                tokio::time::sleep(POLL).await
            }
        }
    }
}

/// One output partition, from the executor that wrote it.
async fn fetch(
    location: PartitionLocation,
    grpc: &GrpcClientConfig,
) -> Result<Vec<RecordBatch>, DataFusionError> {
    let layout = location.layout();
    let meta = location
        .executor_meta
        .ok_or_else(|| DataFusionError::Internal("a partition without its executor".into()))?;
    let partition = location
        .partition_id
        .ok_or_else(|| DataFusionError::Internal("a partition without its id".into()))?;
    let port = u16::try_from(meta.port)
        .map_err(|_| DataFusionError::Internal(format!("executor port {}", meta.port)))?;
    let mut client = BallistaClient::try_new(
        &meta.host,
        port,
        grpc.max_message_size,
        false,
        None,
        grpc.io_retries_times,
        grpc.io_retry_wait_time_ms,
        0,
        0,
    )
    .await
    .map_err(|e| e.into_datafusion())?;
    let stream = client
        .fetch_partition(&meta.id, &partition.into(), location.file_id, layout, true)
        .await
        .map_err(|e| e.into_datafusion())?;
    stream.try_collect().await
}

/// An id that tells one submission from another in the scheduler's logs.
fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        tributary_core::time::now_micros()
    )
}
