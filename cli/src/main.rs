//! `hop3`: parses the command line, runs the command on a tokio runtime,
//! reports a failure once and turns it into the exit code.

use std::process::ExitCode;

use clap::Parser;
use hop3_cli::args::Cli;
use hop3_cli::error::exit;

fn main() -> ExitCode {
    // rustls refuses to pick between ring and the aws-lc-rs that the
    // controller's S3 client brings into a workspace build.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // clap prints its own usage errors and exits with 2.
    let cli = Cli::parse();
    // One command, one connection: a single-threaded runtime is enough; the
    // confirmation prompt reads stdin on the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(hop3_cli::run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            hop3_cli::report(&err, cli.json);
            ExitCode::from(err.exit_code())
        }
    }
}
