//! The `hop3` command-line client of hop3-backup: the `backup:*` and `agent:*` commands,
//! their output, progress and exit codes. It talks gRPC to the controller
//! through the contract crate `hop3-proto` and nothing else.

pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;
pub mod progress;
pub mod stream;
pub mod views;

use std::io::{self, Write};

use args::{Cli, Command};
use client::ControllerClient;
use config::{Settings, Sources};
use error::CliError;
use output::Output;
use views::{ErrorBody, ErrorView};

/// Runs the parsed command line. Arguments are validated before anything
/// is read or connected, so a malformed ID never costs a round trip.
pub async fn run(cli: &Cli) -> Result<(), CliError> {
    let command = cli.command()?;
    // Made from the command line's own definition, without a controller.
    match &command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "hop3", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            return clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(CliError::Output);
        }
        _ => {}
    }
    // Read here and handed down: it is never a clap argument, so that clap
    // never shows it (in --help's `[env: ...]`, say).
    let token_env = std::env::var(config::TOKEN_ENV).ok();
    if std::env::var_os("HOP3_CONFIG").is_some() {
        return Err(CliError::Config {
            path: "HOP3_CONFIG".into(),
            reason: "no longer read (it named a different kind of file for each program): set HOP3_CLI_CONFIG instead".into(),
        });
    }
    let config_file = cli.config.clone().or_else(config::default_file);
    let settings = Settings::resolve(Sources {
        controller: cli.controller.as_deref(),
        ca_cert: cli.ca_cert.as_deref(),
        token_env: token_env.as_deref(),
        config_file: config_file.as_deref(),
    })?;
    if let Command::Delete { id, yes } = &command {
        commands::delete::check_can_confirm(id, *yes)?;
    }
    let out = Output::new(cli.json);
    let mut controller = ControllerClient::connect(&settings).await?;
    let c = &mut controller;
    match &command {
        Command::Create { app, options } => commands::create::run(c, out, app, options).await,
        Command::List { app, limit, status } => {
            commands::list::run(c, out, app.as_deref(), *limit, status.as_deref()).await
        }
        Command::CheckAge { app, max_age } => commands::check_age::run(c, out, app, *max_age).await,
        Command::Info { id } => commands::info::run(c, out, id).await,
        Command::Restore { id, target } => commands::restore::run(c, out, id, target).await,
        Command::Delete { id, yes } => commands::delete::run(c, out, id, *yes).await,
        Command::Import { path } => commands::import::run(c, out, path).await,
        Command::Prune {
            app,
            policy,
            schedule,
            dry_run,
        } => {
            let how = match schedule {
                Some(name) => commands::prune::Policy::Schedule(name),
                None => commands::prune::Policy::Flags(policy),
            };
            commands::prune::run(c, out, app.as_deref(), how, *dry_run).await
        }
        Command::Schedule(spec) => commands::schedule::set(c, out, spec).await,
        Command::Schedules { app } => commands::schedule::list(c, out, app.as_deref()).await,
        Command::Unschedule { app, name } => commands::schedule::delete(c, out, app, name).await,
        Command::Pin { id, pinned } => commands::pin::run(c, out, id, *pinned).await,
        Command::AgentList => commands::agents::run(c, out).await,
        Command::AgentForget { host } => commands::agents::forget(c, out, host).await,
        Command::Completions { .. } | Command::Man => Ok(()),
    }
}

/// Prints `err` on stderr: `Error: MESSAGE` and a hint line, or with
/// `--json` one `{"error":{"code","message"}}` document.
pub fn report(err: &CliError, json: bool) {
    // The reader of stdout went away (`hop3 backup:list | head -1`):
    // nobody is left to tell, and saying so would only be noise.
    if let CliError::Output(e) = err
        && e.kind() == io::ErrorKind::BrokenPipe
    {
        return;
    }
    let mut stderr = io::stderr().lock();
    // If stderr itself is gone there is nowhere left to report to.
    let _ = if json {
        let view = ErrorView {
            error: ErrorBody {
                code: err.code_name().to_owned(),
                message: err.to_string(),
            },
        };
        let text = serde_json::to_string(&view).unwrap_or_default();
        writeln!(stderr, "{text}")
    } else {
        match err.hint() {
            Some(hint) => writeln!(stderr, "Error: {err}\nHint: {hint}"),
            None => writeln!(stderr, "Error: {err}"),
        }
    };
}
