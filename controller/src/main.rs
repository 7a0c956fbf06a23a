//! `hop3-controller`: the controller of hop3-backup.

use anyhow::{Context, bail};
use hop3_controller::catalog::Catalog;
use hop3_controller::config::{Admin, CertsCommand, TokensCommand};
use hop3_controller::{Config, auth, certs, server};

fn main() -> anyhow::Result<()> {
    hop3_agent::memory::block_on(run())?
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config: Config = hop3_agent::config_file::parse_with_config()?;
    match config.command.take() {
        None => server::run(config, hop3_agent::server::shutdown_signal()).await,
        Some(Admin::Certs(cmd)) => run_certs(cmd),
        Some(Admin::Tokens(cmd)) => run_tokens(&config, cmd).await,
    }
}

fn run_certs(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { dir, mut names } => {
            if names.is_empty() {
                names = vec!["localhost".into(), "127.0.0.1".into()];
            }
            certs::init(&dir, &names)?;
            println!(
                "Certificate authority and controller certificate written to {}",
                dir.display()
            );
            println!("Start the controller with --tls-dir {}", dir.display());
        }
        CertsCommand::IssueAgent { host, dir, out } => {
            hop3_proto::names::validate_host_id(&host)?;
            let out = out.unwrap_or_else(|| dir.clone());
            certs::issue(&dir, &out, &host, &[])?;
            println!("Certificate of agent {host} written to {}", out.display());
            println!(
                "Copy ca.pem, {host}.pem and {host}.key to the host and start its agent with --tls-dir"
            );
        }
    }
    Ok(())
}

async fn run_tokens(config: &Config, cmd: TokensCommand) -> anyhow::Result<()> {
    let catalog = Catalog::open(&config.catalog_url())
        .await
        .context("cannot open the catalog")?;
    let now = hop3_proto::manifest::Manifest::format_time(time::OffsetDateTime::now_utc());
    match cmd {
        TokensCommand::Create { name } => {
            hop3_proto::names::validate_host_id(&name).context("token name")?;
            let token = auth::new_token();
            if !catalog
                .create_token(&name, &auth::token_hash(&token), &now)
                .await?
            {
                bail!("a token named {name:?} already exists");
            }
            eprintln!(
                "Token {name:?} created. It is shown once: keep it in HOP3_TOKEN or the CLI's 0600 config file."
            );
            println!("{token}");
        }
        TokensCommand::Revoke { name } => {
            if !catalog.revoke_token(&name, &now).await? {
                bail!("no live token named {name:?}");
            }
            println!("Token {name:?} revoked");
        }
        TokensCommand::List => {
            for (name, created, revoked) in catalog.list_tokens().await? {
                match revoked {
                    Some(r) => println!("{name}\tcreated {created}\trevoked {r}"),
                    None => println!("{name}\tcreated {created}"),
                }
            }
        }
    }
    Ok(())
}
