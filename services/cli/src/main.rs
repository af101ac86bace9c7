//! The `vidx` binary: thin wiring around the library crates. See `vidx --help`.

mod app;
mod args;
mod clip;
mod delete;
mod eval;
mod index;
mod node;
mod reindex;
mod remote;
mod run;
mod search;
mod serve;

use std::process::ExitCode;

use clap::Parser;

// mimalloc reuses freed memory instead of returning large tensor buffers to the kernel, which
// would fault in fresh zeroed pages on every model step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in mimalloc 3's `mi_option_t`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory mapped: model steps free and reallocate the same large buffers, and
/// returning them to the kernel costs a page fault and a zeroed page per touch next time.
fn keep_freed_memory() {
    #[allow(unsafe_code)]
    // SAFETY: sets a plain integer option; mimalloc's option table is safe to write at any
    // time and this runs before any worker thread starts.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1)
    };
}

/// FFmpeg's HTTP client connects straight to the hosts listed in `no_proxy` (lowercase), past
/// the proxy through which the URL guard checks every connection (a redirect to
/// `http://localhost:…` would go unchecked with the common `no_proxy=localhost,127.0.0.1`).
/// Move the list to `NO_PROXY`, which vidx's other HTTP clients (object storage, OTLP) read
/// and FFmpeg does not.
fn keep_ffmpeg_behind_the_url_guard() {
    let Some(hosts) = std::env::var_os("no_proxy") else {
        return;
    };
    #[allow(unsafe_code)]
    // SAFETY: runs first in `main`, before any other thread exists, so nothing reads the
    // environment while it changes.
    unsafe {
        if std::env::var_os("NO_PROXY").is_none() {
            std::env::set_var("NO_PROXY", hosts);
        }
        std::env::remove_var("no_proxy");
    }
}

fn main() -> ExitCode {
    keep_ffmpeg_behind_the_url_guard();
    keep_freed_memory();
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(app::EXIT_RUNTIME);
        }
    };
    let outcome = runtime.block_on(app::run(cli));
    // The batch exporter runs on the runtime: flush while it is still there.
    runtime.block_on(async {
        tokio::task::spawn_blocking(app::shutdown_telemetry)
            .await
            .ok()
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(app::exit_code_for(&error))
        }
    }
}
