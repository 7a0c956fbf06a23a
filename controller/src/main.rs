//! `hop3-controller`: the controller of hop3-backup.

use anyhow::Context;
use hop3_controller::catalog::Catalog;
use hop3_controller::config::{Admin, CertsCommand, KeysCommand, StoreCommand, TokensCommand};
use hop3_controller::store::{S3Bucket, StoreUrl};
use hop3_controller::tokens::Tokens;
use hop3_controller::{Config, auth, certs, recovery, server};

fn main() -> anyhow::Result<()> {
    hop3_controller::config::take_env_passphrase();
    hop3_wire::tls::use_ring_provider();
    hop3_wire::memory::block_on(run())?
}

async fn run() -> anyhow::Result<()> {
    let mut config: Config =
        hop3_wire::config_file::parse_with_config(hop3_wire::config_file::CONTROLLER_CONFIG)?;
    hop3_wire::logging::init(config.log_format);
    match config.command.take() {
        None => server::run(config, hop3_wire::serving::shutdown_signal()).await,
        Some(Admin::Certs(cmd)) => run_certs(cmd),
        Some(Admin::Tokens(cmd)) => run_tokens(&config, cmd).await,
        Some(Admin::Store(StoreCommand::Check { url })) => check_store(&config, &url).await,
        Some(Admin::Keys(cmd)) => run_keys(&config, cmd).await,
    }
}

/// `keys init | add-recipient | rotate | retire | list`.
async fn run_keys(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    use hop3_wire::encryption::{KeyId, recipient};
    let dir = config.keys_dir();
    match cmd {
        KeysCommand::Init { passphrase } => {
            let created = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)?;
            let passphrase = match passphrase {
                false => None,
                true => Some(config.keys_passphrase().await?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--passphrase: give the passphrase in the file of --keys-passphrase-file or in HOP3_KEYS_PASSPHRASE"
                    )
                })?),
            };
            let r = dir.init(&created, passphrase).await?;
            println!("{r}");
            eprintln!(
                "Made the identity {} (key {}) and {}.",
                dir.0.join(hop3_controller::keys::IDENTITY_FILE).display(),
                KeyId::of(&r),
                dir.0.join(hop3_controller::keys::RECIPIENTS_FILE).display()
            );
            eprintln!(
                "Backups encrypted to this key can only be restored with this identity: if it is lost, they are lost.\n\
                 Keep a copy of it offline, or add an escrow key whose identity you keep elsewhere:\n  \
                 age-keygen -o escrow.txt   (keep escrow.txt off this host)\n  \
                 hop3-controller keys add-recipient age1... --note escrow"
            );
        }
        KeysCommand::AddRecipient {
            recipient: key,
            note,
        } => {
            let r = recipient(&key)?;
            if dir.add_recipient(&r, &note).await? {
                println!(
                    "New backups are encrypted to {} (key {}) too.",
                    r,
                    KeyId::of(&r)
                );
            } else {
                println!("{} (key {}) is already a recipient.", r, KeyId::of(&r));
            }
        }
        KeysCommand::Rotate => {
            let created = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)?;
            let (r, replaced) = dir
                .rotate(&created, config.keys_passphrase().await?)
                .await?;
            println!("{r}");
            let replaced: Vec<String> = replaced.iter().map(ToString::to_string).collect();
            eprintln!(
                "New backups are encrypted to key {} once the controller restarts; backups encrypted to {} still open with the identities kept in {}.",
                KeyId::of(&r),
                replaced.join(", "),
                dir.0.join(hop3_controller::keys::IDENTITY_FILE).display()
            );
        }
        KeysCommand::Retire { key } => {
            let id = KeyId::parse(&key)?;
            let recipients = recipients_of(&dir).await?;
            if recipients.key_ids().contains(&id) {
                anyhow::bail!(
                    "key {id} is a recipient of new backups: run `hop3-controller keys rotate` first (or take it out of {}), and restart the controller",
                    dir.0.join(hop3_controller::keys::RECIPIENTS_FILE).display()
                );
            }
            let identities = dir.identities(config.keys_passphrase().await?).await?;
            if !identities.key_ids().contains(&id) {
                anyhow::bail!(
                    "{} holds no identity of key {id}: the backups sealed to it cannot be opened here to encrypt them again",
                    dir.0.join(hop3_controller::keys::IDENTITY_FILE).display()
                );
            }
            let per_key = backups_per_key(config).await?;
            let left = per_key.counts.get(id.as_str()).copied().unwrap_or(0);
            if left == 0 && per_key.unreadable == 0 {
                println!(
                    "No backup is sealed to key {id}: its identity can be destroyed (take it out of {}).",
                    dir.0.join(hop3_controller::keys::IDENTITY_FILE).display()
                );
                return Ok(());
            }
            dir.retire(&id).await?;
            let to: Vec<String> = recipients
                .key_ids()
                .iter()
                .map(ToString::to_string)
                .collect();
            let more = match per_key.unreadable {
                0 => String::new(),
                n => format!(" (and any of the {n} it could not read here)"),
            };
            println!(
                "Retiring key {id}: the controller encrypts its {left} backups{more} again, to {}, in the background (each checked before its old objects go).\n\
                 `hop3-controller keys list` shows how many are left; once none is, the identity of {id} can be destroyed.",
                to.join(", ")
            );
        }
        KeysCommand::List => {
            let identities = match dir.identities(config.keys_passphrase().await?).await {
                Ok(i) => i,
                Err(e @ hop3_controller::keys::KeysError::Locked(_)) => {
                    eprintln!("{e}: its key is not shown");
                    Default::default()
                }
                Err(e) => return Err(e.into()),
            };
            let held = identities.key_ids();
            let recipients = recipients_of(&dir).await?;
            let counts = backups_per_key(config).await?.counts;
            let retiring = dir.retiring().await?;
            let opens = |id: &KeyId| {
                let n = match counts.get(id.as_str()) {
                    Some(n) => format!("opens {n} backups"),
                    None => "opens no backup".to_owned(),
                };
                match retiring.iter().any(|r| r == id.as_str()) {
                    true => format!("{n}, being retired"),
                    false => n,
                }
            };
            let ids = recipients.key_ids();
            for (id, r) in ids.iter().zip(recipients.to_strings()) {
                let here = if held.contains(id) {
                    "identity here"
                } else {
                    "identity not here"
                };
                println!("{id}  {r}  {here}, {}", opens(id));
            }
            for (id, r) in held.iter().zip(identities.recipients()) {
                if !ids.contains(id) {
                    println!(
                        "{id}  {r}  identity here, not a recipient of new backups, {}",
                        opens(id)
                    );
                }
            }
        }
    }
    Ok(())
}

/// The recipients of the keys directory, which must have some.
async fn recipients_of(
    dir: &hop3_controller::keys::KeysDir,
) -> anyhow::Result<hop3_wire::encryption::Recipients> {
    dir.recipients().await?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no keys: run `hop3-controller keys init`",
            dir.0.display()
        )
    })
}

/// How many COMPLETED backups each key id opens, from their manifests.
struct PerKey {
    counts: std::collections::BTreeMap<String, usize>,
    /// Backups whose manifest could not be read (counted for no key).
    unreadable: usize,
}

/// [`PerKey`] of the store and catalog the configuration names.
async fn backups_per_key(config: &Config) -> anyhow::Result<PerKey> {
    use futures::StreamExt;
    let mut counts = std::collections::BTreeMap::new();
    let mut unreadable = 0;
    if !catalog_exists(&config.catalog_url()).await {
        return Ok(PerKey { counts, unreadable });
    }
    let store = config.open_store().await?;
    let catalog = Catalog::open(&config.catalog_url())
        .await
        .context("cannot open the catalog to count the backups of each key")?;
    let rows = catalog
        .list(
            None,
            Some(hop3_controller::catalog::BackupStatus::Completed),
            u32::MAX,
        )
        .await?;
    catalog.close().await;
    let mut manifests = futures::stream::iter(rows)
        .map(|row| {
            let store = &store;
            async move { store.read_manifest(&row.app, &row.backup_id).await }
        })
        .buffer_unordered(16);
    while let Some(manifest) = manifests.next().await {
        // A backup that cannot be read here is for `backup:info` to explain.
        let Ok(manifest) = manifest else {
            unreadable += 1;
            continue;
        };
        for key in manifest.encrypted.iter().flat_map(|e| &e.keys) {
            *counts.entry(key.clone()).or_insert(0) += 1;
        }
    }
    if unreadable > 0 {
        eprintln!(
            "{unreadable} backups could not be read from {} (`hop3 backup:info ID` says why): they are counted for no key",
            config.store
        );
    }
    Ok(PerKey { counts, unreadable })
}

/// `store check URL`: each step with ok or why not; exit 1 when one failed.
async fn check_store(config: &Config, url: &StoreUrl) -> anyhow::Result<()> {
    let StoreUrl::S3 { bucket, prefix } = url else {
        anyhow::bail!(
            "store check is for s3:// stores; a directory is checked by the controller at start"
        );
    };
    let bucket = S3Bucket::open(bucket, prefix, &config.s3.options())?;
    println!("Checking {url}");
    let steps = bucket.check().await;
    for s in &steps {
        match &s.outcome {
            Ok(()) => println!("  ok    {}", s.what),
            Err(why) => println!("  FAIL  {}: {why}", s.what),
        }
    }
    if steps.len() < 6 || steps.iter().any(|s| s.outcome.is_err()) {
        anyhow::bail!("{url} cannot keep backups as it is: see the failed step");
    }
    println!("{url} can keep backups.");
    Ok(())
}

/// The names the controller's certificate is valid for: as given, or the
/// loopback ones.
fn controller_names(names: Vec<String>) -> Vec<String> {
    if names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into()]
    } else {
        names
    }
}

fn run_certs(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { dir, names } => {
            certs::init(&dir, &controller_names(names))?;
            println!(
                "Certificate authority and controller certificate written to {}",
                dir.display()
            );
            println!("Start the controller with --tls-dir {}", dir.display());
        }
        CertsCommand::ReissueController { dir, names } => {
            certs::reissue_controller(&dir, &controller_names(names))?;
            println!(
                "Controller certificate written to {}; restart the controller to use it",
                dir.join(format!("{}.pem", hop3_wire::tls::CONTROLLER_NAME))
                    .display()
            );
        }
        CertsCommand::IssueAgent { host, dir, out } => {
            hop3_proto::names::validate_host_id(&host)?;
            let out = out.unwrap_or_else(|| dir.clone());
            certs::issue_agent(&dir, &out, &host)?;
            println!("Certificate of agent {host} written to {}", out.display());
            println!(
                "Copy ca.pem, {host}.pem and {host}.key to the host and start its agent with --tls-dir"
            );
        }
    }
    Ok(())
}

/// Whether the catalog at `url` may hold anything: a SQLite file that does
/// not exist (a fresh store, before the controller's first start) holds no
/// tokens to move.
async fn catalog_exists(url: &str) -> bool {
    match url.strip_prefix("sqlite://") {
        Some(path) => {
            let path = path.split('?').next().unwrap_or(path);
            tokio::fs::try_exists(path).await.unwrap_or(true)
        }
        None => true,
    }
}

async fn run_tokens(config: &Config, cmd: TokensCommand) -> anyhow::Result<()> {
    let store = config.open_store().await?;
    let tokens = Tokens::new(store.root());
    if !tokens.exists().await? && catalog_exists(&config.catalog_url()).await {
        // A catalog from before the tokens file may hold tokens: they move
        // first, or the file would hide them for good.
        let catalog = Catalog::open(&config.catalog_url()).await.context(
            "cannot open the catalog to move its tokens to the store's tokens file \
             (if it is corrupt, start the controller once: it sets it aside and rebuilds it)",
        )?;
        recovery::adopt_tokens(&catalog, &tokens).await?;
        catalog.close().await;
    }
    let now = hop3_proto::manifest::Manifest::format_time(time::OffsetDateTime::now_utc());
    match cmd {
        TokensCommand::Create { name } => {
            hop3_proto::names::validate_host_id(&name).context("token name")?;
            let token = auth::new_token();
            tokens
                .create(&name, &auth::token_hash(&token), &now)
                .await?;
            eprintln!(
                "Token {name:?} created. It is shown once: keep it in HOP3_TOKEN or the CLI's 0600 config file."
            );
            println!("{token}");
        }
        TokensCommand::Revoke { name } => {
            tokens.revoke(&name, &now).await?;
            println!("Token {name:?} revoked");
        }
        TokensCommand::List => {
            for t in tokens.list().await? {
                match t.revoked_at {
                    Some(r) => println!("{}\tcreated {}\trevoked {r}", t.name, t.created_at),
                    None => println!("{}\tcreated {}", t.name, t.created_at),
                }
            }
        }
    }
    Ok(())
}
