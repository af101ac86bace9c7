//! The `vidx` binary: thin wiring around the library crates. See `vidx --help`.

mod app;
mod args;
mod index;
mod search;

use std::process::ExitCode;

use clap::Parser;

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
