//! `hop3-agent`: the per-host agent of hop3-backup.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hop3_agent::{AgentOptions, server};
use hop3_agent::{Callers, ControllerToken};
use hop3_wire::join_token::JoinToken;

/// Serves this host's Hop3 apps to a hop3-backup controller: archives,
/// dumps and restores them.
#[derive(clap::Parser, Debug)]
#[command(name = "hop3-agent", version)]
struct Args {
    /// Address to serve the agent's gRPC API on.
    #[arg(long, env = "HOP3_AGENT_LISTEN", default_value = "127.0.0.1:7411")]
    listen: SocketAddr,
    /// The controller to register with.
    #[arg(long, env = "HOP3_CONTROLLER", default_value = "http://127.0.0.1:7410")]
    controller: String,
    /// The URL the controller should use to reach this agent [default: http://LISTEN].
    #[arg(long, env = "HOP3_AGENT_ADVERTISE")]
    advertise: Option<String>,
    /// Serve and call over mutual TLS with DIR/ca.pem and DIR/HOST_ID.pem/.key
    /// (from hop3-controller certs issue-agent HOST_ID).
    #[arg(long, env = "HOP3_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<std::path::PathBuf>,
    /// Allow plain gRPC (authenticated by the join token only, sent in
    /// clear) on a non-loopback address.
    #[arg(long, env = "HOP3_INSECURE")]
    insecure: bool,
    /// Without TLS: the controller's join token, which this agent presents
    /// when it registers and asks of every caller (HOP3_JOIN_TOKEN, when set,
    /// holds the token itself).
    #[arg(
        long,
        env = "HOP3_JOIN_TOKEN_FILE",
        value_name = "FILE",
        default_value = "/var/hop3/backups/join-token"
    )]
    join_token_file: std::path::PathBuf,
    /// TOML file of settings, keyed by flag name (flags and environment win over it).
    /// [default: HOP3_AGENT_CONFIG, else /etc/hop3/agent.toml when it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// How logs are written on stderr.
    #[arg(long, env = "HOP3_LOG_FORMAT", value_enum, default_value_t)]
    log_format: hop3_wire::logging::LogFormat,
    #[command(flatten)]
    agent: AgentOptions,
    #[command(subcommand)]
    command: Option<Tool>,
}

/// One-off commands (the agent serves when none is given).
#[derive(clap::Subcommand, Debug)]
enum Tool {
    /// Make a small demo app under ROOT/apps/NAME (a git repository, its
    /// deployed tree, some data, an ENV, an app.json) to try backups on.
    DemoApp {
        /// The app's name.
        name: String,
        /// Attach it to this PostgreSQL database (postgresql://USER:PW@HOST/DB).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    hop3_wire::tls::use_ring_provider();
    hop3_wire::memory::block_on(run())?
}

async fn run() -> anyhow::Result<()> {
    let args: Args =
        hop3_wire::config_file::parse_with_config(hop3_wire::config_file::AGENT_CONFIG)?;
    hop3_wire::logging::init(args.log_format);
    if let Some(Tool::DemoApp { name, postgres }) = &args.command {
        hop3_proto::names::validate_app_name(name)?;
        let root = hop3_agent::HostRoot::new(&args.agent.root);
        let dir = hop3_agent::make_demo_app(&root, name, postgres.as_deref()).await?;
        println!("Demo app {name} made in {}", dir.display());
        println!("Back it up with: hop3 backup:create {name}");
        return Ok(());
    }
    let state = Arc::new(args.agent.state());
    let tls = match &args.tls_dir {
        Some(dir) => Some(hop3_wire::tls::TlsFiles::load(dir, &state.host_id)?),
        None => None,
    };
    if tls.is_none() && args.controller.starts_with("https://") {
        anyhow::bail!(
            "the controller is at an https:// URL: pass --tls-dir DIR with this host's certificate (hop3-controller certs issue-agent {})",
            state.host_id
        );
    }
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.insecure {
        anyhow::bail!(
            "refusing to serve plain, unauthenticated gRPC on {}: use --tls-dir DIR, listen on a loopback address, or pass --insecure",
            args.listen
        );
    }
    // Without TLS the join token is what the controller and this agent know
    // each other by.
    let join = match &tls {
        Some(_) => None,
        None => {
            let path = args.join_token_file.clone();
            let token =
                tokio::task::spawn_blocking(move || JoinToken::from_env_or_file(&path)).await??;
            Some((token, Arc::new(ControllerToken::default())))
        }
    };
    let callers = match &join {
        Some((_, calls)) => Callers::ControllerToken(calls.clone()),
        None => Callers::ControllerCertificate,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let advertise = args
        .advertise
        .unwrap_or_else(|| format!("{scheme}://{local}"));
    let (reporter, health) = hop3_wire::serving::health(&[server::AGENT_SERVICE]).await;
    tracing::info!(listen = %local, root = %args.agent.root.display(), host_id = %state.host_id, "hop3-agent serving");
    tokio::spawn(server::register_loop(
        state.clone(),
        tls.clone(),
        join,
        args.controller,
        advertise,
        reporter.clone(),
    ));
    hop3_wire::serving::notify_ready();
    server::serve(
        state,
        tls,
        callers,
        hop3_wire::serving::incoming(listener),
        (reporter, health),
        hop3_wire::serving::shutdown_signal(),
    )
    .await?;
    Ok(())
}
