//! `vidx clip ID -o out.mp4`: export a hit's clip from the local index (the same cut the web
//! UI plays: from the keyframe at or before the moment to its end).

use vidx_core::ErrorCode;
use vidx_core::TimeRange;
use vidx_core::ports::IndexStore;
use vidx_media::ClipOptions;

use crate::app::{AppContext, EXIT_OK, cli_error};
use crate::args::ClipArgs;

pub async fn run(context: AppContext, args: &ClipArgs) -> anyhow::Result<u8> {
    let id = uuid::Uuid::parse_str(args.id.trim()).map_err(|_| {
        cli_error(
            ErrorCode::InvalidInput,
            format!(
                "`{}` is not a hit id (the `id` of `vidx search --json`)",
                args.id
            ),
        )
    })?;
    if !context.index_dir().exists() {
        return Err(cli_error(
            ErrorCode::NotFound,
            format!("no index at {}", context.index_dir().display()),
        ));
    }
    let store = context.open_existing_store().await?;
    let point = store
        .point(&context.config.general.tenant, id)
        .await
        .map_err(|error| cli_error(error.code(), error.to_string()))?
        .ok_or_else(|| cli_error(ErrorCode::NotFound, format!("no hit {id} in the index")))?;
    let payload = point.payload;
    let range = TimeRange::new(payload.start_ms, payload.end_ms);
    let output = args.output.clone();
    if vidx_server::ingest::is_live_source(&payload.source_uri) {
        // A live stream's moment: cut from the footage retention kept under the data dir.
        let media = vidx_blob::ObjectBlobStore::open(
            &context.data_dir.display().to_string(),
            &Default::default(),
        )
        .map_err(|error| cli_error(ErrorCode::Unavailable, error.to_string()))?;
        let gone = |error: vidx_server::footage::FootageError| match error {
            vidx_server::footage::FootageError::Gone => {
                cli_error(ErrorCode::NotFound, error.to_string())
            }
            other => cli_error(ErrorCode::Unavailable, other.to_string()),
        };
        let found = vidx_server::footage::find(&media, &payload.tenant, &payload.stream_id, range)
            .await
            .map_err(gone)?;
        let scratch = output
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map_or_else(
                || std::path::PathBuf::from("."),
                std::path::Path::to_path_buf,
            );
        let clip = vidx_server::footage::cut(
            &media,
            found,
            range,
            &output,
            &scratch,
            ClipOptions::default(),
        )
        .await
        .map_err(gone)?;
        report(args, &clip, &payload.stream_id, payload.start_ms);
        return Ok(EXIT_OK);
    }
    let source = vidx_media::stored_source(&payload.source_uri).map_err(|reason| {
        cli_error(
            ErrorCode::Unavailable,
            format!("{}: {reason}", payload.source_uri),
        )
    })?;
    let policy = vidx_server::url_policy(&context.config)
        .map_err(|error| cli_error(ErrorCode::InvalidInput, error.to_string()))?;
    let options = ClipOptions {
        url_guard: (!policy.allow_private_hosts).then_some(policy),
    };
    let cut_source = source.clone();
    let clip = tokio::task::spawn_blocking(move || {
        vidx_media::cut_clip(&cut_source, range, &output, &options)
    })
    .await?
    .map_err(|error| cli_error(error.code(), error.to_string()))?;
    report(args, &clip, &source.display_name(), payload.start_ms);
    Ok(EXIT_OK)
}

/// Say what was written: which part of what, and where in it the moment starts.
fn report(args: &ClipArgs, clip: &vidx_media::Clip, of: &str, moment_ms: u64) {
    let offset_ms = moment_ms.saturating_sub(clip.start_ms);
    eprintln!(
        "{}: {}–{} of {}{}; the moment starts {:.3} s in",
        args.output.display(),
        vidx_core::format_time_ms(clip.start_ms),
        vidx_core::format_time_ms(clip.end_ms),
        of,
        if clip.reencoded {
            " (re-encoded to H.264)"
        } else {
            ""
        },
        offset_ms as f64 / 1000.0
    );
}
