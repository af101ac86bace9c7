//! The `vidx` binary: thin wiring around the library crates. See `vidx --help`.

mod app;
mod args;
mod index;
mod search;

use std::process::ExitCode;

use clap::Parser;

// mimalloc reuses freed memory instead of returning large tensor buffers to the kernel, which
// would fault in fresh zeroed pages on every model step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
    match runtime.block_on(app::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(app::exit_code_for(&error))
        }
    }
}
