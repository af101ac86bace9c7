//! `vidx delete`: forget indexed moments of the caller's tenant — every moment of one stream,
//! or every moment indexed before a time — with their thumbnails, kept live footage and
//! cached clips, in the local index or (`--endpoint`) through a query node.

use std::sync::Arc;

use vidx_core::ErrorCode;
use vidx_server::lifecycle::{MediaPlaces, Scope};

use crate::app::{AppContext, EXIT_OK, cli_error};
use crate::args::DeleteArgs;

pub async fn run(context: AppContext, args: &DeleteArgs) -> anyhow::Result<u8> {
    if let Some(endpoint) = &args.remote.endpoint {
        return crate::remote::delete(endpoint, &args.remote, args).await;
    }
    let scope = match (&args.stream, args.before) {
        (Some(stream_id), None) if !stream_id.trim().is_empty() => Scope::Stream(stream_id.clone()),
        (None, Some(before_ms)) => Scope::Before(before_ms),
        _ => {
            return Err(cli_error(
                ErrorCode::InvalidInput,
                "vidx delete: pass a non-empty --stream ID or --before T",
            ));
        }
    };
    if !context.index_dir().exists() {
        return Err(cli_error(
            ErrorCode::NotFound,
            format!("no index at {}", context.index_dir().display()),
        ));
    }
    let store = context.open_existing_store().await?;
    let media = vidx_blob::ObjectBlobStore::open(
        &context.data_dir.display().to_string(),
        &Default::default(),
    )
    .map_err(|error| cli_error(ErrorCode::Unavailable, error.to_string()))?;
    let places = MediaPlaces {
        store: Some(Arc::new(media)),
        clip_dir: Some(context.data_dir.join("clips")),
    };
    let removed =
        vidx_server::lifecycle::delete(&store, &places, &context.config.general.tenant, &scope)
            .await
            .map_err(|error| cli_error(error.code(), error.to_string()))?;
    print_removed(
        removed.points,
        removed.thumbnails,
        removed.footage,
        args.common.json,
    );
    Ok(EXIT_OK)
}

/// What was deleted, as text or JSON.
pub fn print_removed(points: u64, thumbnails: u64, footage: u64, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "points": points, "thumbnails": thumbnails, "footage": footage })
        );
    } else {
        println!("deleted {points} moments, {thumbnails} thumbnails, {footage} footage segments");
    }
}
