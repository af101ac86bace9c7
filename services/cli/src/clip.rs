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
    let output = args.output.clone();
    let range = TimeRange::new(payload.start_ms, payload.end_ms);
    let cut_source = source.clone();
    let clip = tokio::task::spawn_blocking(move || {
        vidx_media::cut_clip(&cut_source, range, &output, &options)
    })
    .await?
    .map_err(|error| cli_error(error.code(), error.to_string()))?;
    let offset_ms = payload.start_ms.saturating_sub(clip.start_ms);
    eprintln!(
        "{}: {:.3}–{:.3} s of {}{}; the moment starts {:.3} s in",
        args.output.display(),
        clip.start_ms as f64 / 1000.0,
        clip.end_ms as f64 / 1000.0,
        source.display_name(),
        if clip.reencoded {
            " (re-encoded to H.264)"
        } else {
            ""
        },
        offset_ms as f64 / 1000.0
    );
    Ok(EXIT_OK)
}
