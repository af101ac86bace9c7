//! `vidx search --endpoint` and `vidx index --endpoint`: the same commands against a running
//! `vidx run` over gRPC.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vidx_core::ErrorCode;
use vidx_core::fusion::SearchHit;
use vidx_proto::v1;
use vidx_proto::v1::index_service_client::IndexServiceClient;
use vidx_proto::v1::ingest_service_client::IngestServiceClient;
use vidx_proto::v1::search_service_client::SearchServiceClient;

use crate::app::{EXIT_OK, EXIT_PARTIAL, cli_error};
use crate::args::{DeleteArgs, IndexArgs, RemoteArgs, SearchArgs, StreamsArgs};
use crate::search::print_hits;

async fn connect(endpoint: &str, remote: &RemoteArgs) -> anyhow::Result<Channel> {
    let mut builder = Endpoint::from_shared(endpoint.to_string())
        .map_err(|error| {
            cli_error(
                ErrorCode::InvalidInput,
                format!("--endpoint {endpoint}: {error}"),
            )
        })?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    if endpoint.starts_with("https://") {
        builder = builder
            .tls_config(client_tls(remote)?)
            .context("TLS configuration")?;
    } else if !endpoint.starts_with("http://") {
        return Err(cli_error(
            ErrorCode::InvalidInput,
            format!("--endpoint {endpoint}: must start with http:// or https://"),
        ));
    } else if remote.ca.is_some() || remote.cert.is_some() {
        return Err(cli_error(
            ErrorCode::InvalidInput,
            format!("--ca and --cert need an https:// endpoint, not {endpoint}"),
        ));
    }
    builder.connect().await.map_err(|error| {
        // The cause (an unknown CA, a refused client certificate) is in the source chain.
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        cli_error(
            ErrorCode::Unavailable,
            format!("cannot reach {endpoint}: {reason}"),
        )
    })
}

/// The client side of TLS: the public web PKI, or `--ca`; with `--cert`/`--key`, a client
/// certificate for servers that ask for one (server.tls.client_ca).
fn client_tls(remote: &RemoteArgs) -> anyhow::Result<ClientTlsConfig> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|error| {
            cli_error(
                ErrorCode::InvalidInput,
                format!("{flag} {}: {error}", path.display()),
            )
        })
    };
    let mut config = match &remote.ca {
        Some(path) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca", path)?))
        }
        None => ClientTlsConfig::new().with_webpki_roots(),
    };
    match (&remote.cert, &remote.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read("--cert", cert)?,
                read("--key", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(cli_error(
                ErrorCode::InvalidInput,
                "--cert and --key go together (the client certificate and its key)",
            ));
        }
    }
    Ok(config)
}

fn request<T>(message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| cli_error(ErrorCode::InvalidInput, "--token: not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Flags that only mean something to the local index or the local models: with
/// `--endpoint` they would be silently ignored, so they are refused by name instead.
fn refuse_local_flags(command: &str, set: &[(&str, bool)]) -> anyhow::Result<()> {
    let named: Vec<&str> = set
        .iter()
        .filter(|(_, present)| *present)
        .map(|(flag, _)| *flag)
        .collect();
    if named.is_empty() {
        return Ok(());
    }
    Err(cli_error(
        ErrorCode::InvalidInput,
        format!(
            "vidx {command} --endpoint: {} only apply to the local index and models (the server uses its own configuration); drop {}",
            named.join(", "),
            if named.len() == 1 { "it" } else { "them" }
        ),
    ))
}

/// The flags of [`CommonArgs`](crate::args::CommonArgs) that name local models. (`--data-dir`
/// is accepted: it also says where `vidx` keeps nothing else but the index.)
fn common_local_flags(common: &crate::args::CommonArgs) -> [(&'static str, bool); 3] {
    [
        ("--text-model-dir", common.text_model_dir.is_some()),
        ("--visual-model-dir", common.visual_model_dir.is_some()),
        ("--device", common.device.is_some()),
    ]
}

/// A gRPC status as a CLI error with the matching exit code.
fn status_error(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let code = match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            ErrorCode::InvalidInput
        }
        Code::NotFound => ErrorCode::NotFound,
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::Unauthenticated | Code::PermissionDenied => ErrorCode::InvalidInput,
        Code::Unavailable | Code::DeadlineExceeded => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    cli_error(code, format!("{:?}: {}", status.code(), status.message()))
}

pub async fn search(endpoint: &str, remote: &RemoteArgs, args: &SearchArgs) -> anyhow::Result<u8> {
    let token = remote.token.as_deref();
    refuse_local_flags("search", &common_local_flags(&args.common))?;
    // Search by example goes to the server: the image's bytes, or the hit's id.
    let image = match &args.image {
        Some(path) => std::fs::read(path).map_err(|error| {
            cli_error(
                ErrorCode::InvalidInput,
                format!("--image {}: {error}", path.display()),
            )
        })?,
        None => Vec::new(),
    };
    let mut client = SearchServiceClient::new(connect(endpoint, remote).await?);
    let message = v1::SearchRequest {
        query: args.query.clone().unwrap_or_default(),
        stream_id: None,
        stream_ids: args.streams.clone(),
        labels: vidx_core::labels::to_map(&crate::search::label_args(&args.labels)?)
            .into_iter()
            .collect(),
        from_ms: args.from,
        to_ms: args.to,
        top_k: u32::try_from(args.top_k).unwrap_or(u32::MAX),
        mode: args.mode.clone(),
        image,
        like_id: args.like.clone().unwrap_or_default(),
    };
    let response = client
        .search(request(message, token)?)
        .await
        .map_err(status_error)?
        .into_inner();
    if args.windows {
        crate::search::print_windows(&response.windows, args.common.json)?;
        return Ok(EXIT_OK);
    }
    let hits: Vec<SearchHit> = response.hits.into_iter().map(SearchHit::from).collect();
    print_hits(&hits, args.common.json)?;
    Ok(EXIT_OK)
}

/// Submit every input, then follow the jobs to the end with a progress bar.
pub async fn index(endpoint: &str, remote: &RemoteArgs, args: &IndexArgs) -> anyhow::Result<u8> {
    let token = remote.token.as_deref();
    let mut local = common_local_flags(&args.common).to_vec();
    local.extend([
        ("--segment-secs", args.segment_secs.is_some()),
        ("--frames", args.frames.is_some()),
        ("--model", args.model.is_some()),
        ("--model-dir", args.model_dir.is_some()),
    ]);
    refuse_local_flags("index", &local)?;
    let labels: std::collections::HashMap<String, String> =
        vidx_core::labels::to_map(&crate::search::label_args(&args.labels)?)
            .into_iter()
            .collect();
    let mut client = IngestServiceClient::new(connect(endpoint, remote).await?);
    let mut jobs = Vec::new();
    let mut failures = 0usize;
    for input in &args.inputs {
        // The service reads files itself: send the absolute path it will see on a shared
        // volume, and URLs as they are.
        let source = if input.contains("://") {
            input.clone()
        } else {
            std::fs::canonicalize(input)
                .map(|path| path.display().to_string())
                .unwrap_or_else(|_| input.clone())
        };
        let message = v1::SubmitRequest {
            source: source.clone(),
            stream_id: None,
            labels: labels.clone(),
        };
        match client.submit(request(message, token)?).await {
            Ok(response) => {
                let job_id = response.into_inner().job_id;
                if args.common.json {
                    println!(
                        "{}",
                        serde_json::json!({ "input": input, "job_id": job_id })
                    );
                } else {
                    println!("{input}: job {job_id}");
                }
                jobs.push((input.clone(), job_id));
            }
            Err(status) => {
                failures += 1;
                eprintln!("{input}: {:?}: {}", status.code(), status.message());
            }
        }
    }
    if args.no_wait {
        return Ok(if failures > 0 { EXIT_PARTIAL } else { EXIT_OK });
    }
    let bar = if args.common.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(1000);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:30} {percent:>3}% [{elapsed_precise}] {msg}")
        {
            bar.set_style(style);
        }
        bar
    };
    // Each job's changes as the service pushes them (WatchJob), all jobs at once.
    let mut watches = tokio_stream::StreamMap::new();
    let mut latest: Vec<Option<v1::Job>> = vec![None; jobs.len()];
    for (index, (_, job_id)) in jobs.iter().enumerate() {
        let stream = client
            .watch_job(request(
                v1::GetJobRequest {
                    job_id: job_id.clone(),
                },
                token,
            )?)
            .await
            .map_err(status_error)?
            .into_inner();
        watches.insert(index, stream);
    }
    let mut finished: Vec<v1::Job> = Vec::new();
    while let Some((index, job)) = tokio_stream::StreamExt::next(&mut watches).await {
        let job = job.map_err(status_error)?;
        let input = &jobs[index].0;
        let state = v1::JobState::try_from(job.state).unwrap_or(v1::JobState::Unspecified);
        // A live source never finishes by itself: report it and leave it running
        // (`vidx streams` follows it).
        if matches!(state, v1::JobState::Done | v1::JobState::Failed) || job.stream.is_some() {
            if job.stream.is_some() && !args.common.json {
                eprintln!(
                    "{input}: live stream, job {} — follow it with `vidx streams --endpoint …`, \
                     stop it with `vidx streams --stop {}`",
                    job.job_id, job.job_id
                );
            }
            watches.remove(&index);
            latest[index] = None;
            finished.push(job);
        } else {
            bar.set_message(format!(
                "{input}: {} ({}/{} segments)",
                state
                    .as_str_name()
                    .trim_start_matches("JOB_STATE_")
                    .to_lowercase(),
                job.segments_done + job.segments_failed,
                job.segments_total
            ));
            latest[index] = Some(job);
        }
        let progress_sum =
            finished.len() as f32 + latest.iter().flatten().map(|job| job.progress).sum::<f32>();
        bar.set_position((progress_sum / jobs.len().max(1) as f32 * 1000.0) as u64);
    }
    // A watch that ended before its job did (the service went away).
    for (index, job) in latest.iter().enumerate() {
        if job.is_some() {
            failures += 1;
            eprintln!(
                "{}: the service stopped reporting on job {} before it finished",
                jobs[index].0, jobs[index].1
            );
        }
    }
    bar.finish_and_clear();
    for job in &finished {
        let failed = job.state == v1::JobState::Failed as i32 || job.segments_failed > 0;
        failures += usize::from(failed);
        if args.common.json {
            println!(
                "{}",
                serde_json::json!({
                    "job_id": job.job_id,
                    "source": job.source,
                    "state": v1::JobState::try_from(job.state).map(|s| s.as_str_name()).unwrap_or("?"),
                    "segments_total": job.segments_total,
                    "segments_done": job.segments_done,
                    "segments_failed": job.segments_failed,
                    "error": job.error,
                })
            );
        } else {
            println!(
                "{}: {} of {} segments indexed{}{}",
                job.source,
                job.segments_done,
                job.segments_total,
                if job.segments_failed > 0 {
                    format!(", {} failed", job.segments_failed)
                } else {
                    String::new()
                },
                if job.error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", job.error)
                }
            );
        }
    }
    Ok(if failures > 0 { EXIT_PARTIAL } else { EXIT_OK })
}

fn stream_state_name(state: i32) -> &'static str {
    match v1::StreamState::try_from(state) {
        Ok(v1::StreamState::Connecting) => "connecting",
        Ok(v1::StreamState::Live) => "live",
        Ok(v1::StreamState::Degraded) => "degraded",
        Ok(v1::StreamState::Stopped) => "stopped",
        _ => "unknown",
    }
}

/// `vidx streams`: list the caller's live streams, or stop one.
pub async fn streams(
    endpoint: &str,
    remote: &RemoteArgs,
    args: &StreamsArgs,
) -> anyhow::Result<u8> {
    let token = remote.token.as_deref();
    let mut client = IngestServiceClient::new(connect(endpoint, remote).await?);
    let streams = match &args.stop {
        Some(job_id) => vec![
            client
                .stop_stream(request(
                    v1::StopStreamRequest {
                        job_id: job_id.clone(),
                    },
                    token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner(),
        ],
        None => {
            client
                .list_streams(request(v1::ListStreamsRequest {}, token)?)
                .await
                .map_err(status_error)?
                .into_inner()
                .streams
        }
    };
    if streams.is_empty() && !args.common.json {
        println!("no live streams");
    }
    for stream in &streams {
        let state = stream_state_name(stream.state);
        if args.common.json {
            println!(
                "{}",
                serde_json::json!({
                    "job_id": stream.job_id,
                    "stream_id": stream.stream_id,
                    "source": stream.source,
                    "state": state,
                    "reason": stream.reason,
                    "segments": stream.segments,
                    "reconnects": stream.reconnects,
                    "last_end_ms": stream.last_end_ms,
                })
            );
        } else {
            let reason = if stream.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", stream.reason)
            };
            println!(
                "{}  {:<10} {}  segments {}  reconnects {}  {}{reason}",
                stream.job_id,
                state,
                stream.stream_id,
                stream.segments,
                stream.reconnects,
                stream.source
            );
        }
    }
    Ok(EXIT_OK)
}

/// `vidx delete --endpoint`: the query node deletes in the shared index.
pub async fn delete(endpoint: &str, remote: &RemoteArgs, args: &DeleteArgs) -> anyhow::Result<u8> {
    let token = remote.token.as_deref();
    refuse_local_flags("delete", &common_local_flags(&args.common))?;
    let mut client = IndexServiceClient::new(connect(endpoint, remote).await?);
    let response = match (&args.stream, args.before) {
        (Some(stream_id), _) => client
            .delete_stream(request(
                v1::DeleteStreamRequest {
                    stream_id: stream_id.clone(),
                },
                token,
            )?)
            .await
            .map_err(status_error)?,
        (None, Some(before_ms)) => client
            .delete_before(request(v1::DeleteBeforeRequest { before_ms }, token)?)
            .await
            .map_err(status_error)?,
        (None, None) => {
            return Err(cli_error(
                ErrorCode::InvalidInput,
                "vidx delete: pass --stream ID or --before T",
            ));
        }
    }
    .into_inner();
    crate::delete::print_removed(
        response.points,
        response.thumbnails,
        response.footage,
        args.common.json,
    );
    Ok(EXIT_OK)
}

/// `vidx reindex --endpoint`: start (or join) the node's reindex and follow it to its end.
pub async fn reindex(
    endpoint: &str,
    remote: &RemoteArgs,
    args: &crate::args::ReindexArgs,
) -> anyhow::Result<u8> {
    use vidx_proto::v1::reindex_status::State;
    let token = remote.token.as_deref();
    refuse_local_flags("reindex", &common_local_flags(&args.common))?;
    let mut client = IndexServiceClient::new(connect(endpoint, remote).await?);
    let mut status = client
        .reindex(request(v1::ReindexRequest {}, token)?)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last = None;
    loop {
        let state = State::try_from(status.state).unwrap_or(State::Unspecified);
        let key = (status.state, status.sources_done, status.sources_skipped);
        if !args.common.json && last != Some(key) && status.generation > 0 {
            eprintln!("{}", crate::reindex::progress_line(&status));
            last = Some(key);
        }
        match state {
            // Searches answer from the new generation from the switch on; the old one is
            // dropped after the node's grace period.
            State::Switched | State::Done => {
                crate::reindex::print_status(&status, args.common.json);
                return Ok(if status.sources_skipped > 0 {
                    crate::app::EXIT_PARTIAL
                } else {
                    EXIT_OK
                });
            }
            State::Failed => {
                return Err(cli_error(
                    ErrorCode::Unavailable,
                    format!("reindex failed: {}", status.error),
                ));
            }
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        status = client
            .get_reindex_status(request(v1::ReindexStatusRequest {}, token)?)
            .await
            .map_err(status_error)?
            .into_inner();
    }
}
