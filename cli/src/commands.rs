//! The `tollgate` command line: each subcommand, run to its end, and the one error type
//! they fail with (the binary prints it and exits 1). Every subcommand that touches the
//! backends starts from `tollgate::app` (load_config, open).

use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;
use tollgate::app::{self, Access, StartError};
use tollgate::auth::{self, Role};
use tollgate::config::Config;
use tollgate::server::{self, RunOptions};

pub const DEFAULT_CONFIG: &str = "conf/tollgate.yaml";

/// Why a subcommand failed; printed as it reads, after `tollgate: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] tollgate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] tollgate::app::StartError),
    #[error(transparent)]
    Store(#[from] tollgate::store::StoreError),
    #[error(transparent)]
    Auth(#[from] tollgate::auth::AuthError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Bad arguments, or a verdict (balances that disagree).
    #[error("{0}")]
    Message(String),
}

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError::Message(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> CliError {
        CliError::Message(message.to_owned())
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway (the default command).
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take over the sockets of a running instance (graceful upgrade; then SIGQUIT the old one).
        #[arg(long, short)]
        upgrade: bool,
    },
    /// Run the admin API alone (control plane), against the configured backends: in
    /// distributed mode beside any number of gateways sharing the same Redis and MongoDB.
    Admin {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Create an admin user (the first admin never comes from self-registration). Reads
    /// the password from standard input (one line).
    CreateAdmin {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        email: String,
        /// The operators' tenant the admin belongs to (created with 0 credits if absent).
        #[arg(long, default_value = "operators")]
        tenant: String,
    },
    /// Print a signed JWT for the configured key.
    Token {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Compare ledger balances, durable balances and the store's records, per tenant.
    /// Exits 1 when they disagree. Usage still in a running gateway's memory is not
    /// visible here: run it when traffic is quiet (the gateway also checks periodically).
    Reconcile {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Serve the demo echo upstream alone (quickstart, load tests).
    Echo {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
    },
    /// Load and validate a config file, then exit.
    CheckConfig {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    User,
    Admin,
}

/// Prints one line per tenant; returns whether all agree.
async fn reconcile(config: &Config) -> Result<bool, CliError> {
    let parts = app::open(config, Access::Offline).await?;
    let journaled = tollgate::usage::journaled_credits(&config.data_dir)
        .map_err(StartError::data_dir(config, "usage journal"))?;
    let pending = |tenant: &str| journaled.get(tenant).copied().unwrap_or(0);
    let reports = tollgate::reconcile::reconcile(&*parts.store, &*parts.ledger, &pending).await?;
    let unresolved = tollgate::ledger::worklog::unresolved(&config.data_dir)
        .map_err(StartError::data_dir(config, "ledger work"))?;
    let open = tollgate::ledger::worklog::still_open(&config.data_dir)
        .map_err(StartError::data_dir(config, "ledger work"))?;
    let mut unresolved_by_tenant = std::collections::HashMap::<&str, i64>::new();
    for u in &unresolved {
        *unresolved_by_tenant
            .entry(u.tenant_id.as_str())
            .or_default() += u.credits;
    }
    println!(
        "{:<24} {:>12} {:>12} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "tenant",
        "ledger",
        "durable",
        "journaled",
        "ledger diff",
        "store diff",
        "unresolved",
        "leased",
        "forfeited"
    );
    let mut consistent = true;
    for r in &reports {
        let ledger = r.ledger.map_or("-".to_owned(), |l| l.to_string());
        let given_up = unresolved_by_tenant
            .get(r.tenant_id.as_str())
            .copied()
            .unwrap_or(0);
        println!(
            "{:<24} {:>12} {:>12} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10}",
            r.tenant_id,
            ledger,
            r.durable,
            r.pending,
            r.ledger_difference,
            r.store_difference,
            given_up,
            r.leased,
            r.forfeited
        );
        // Work given up may have left the ledger off by up to its credits (short for a
        // void or a deferred charge, over for a deferred refund that landed); an expired
        // lease leaves it short by up to its forfeited margin: both explained.
        let diff = r.ledger_difference;
        consistent &=
            r.store_difference == 0 && (-given_up - r.forfeited..=given_up).contains(&diff);
    }
    for u in &unresolved {
        println!(
            "unresolved {} of tenant {}, charge {}: the ledger may be off by up to {} credits",
            u.kind, u.tenant_id, u.charge_id, u.credits
        );
    }
    let waiting: usize = open.values().map(Vec::len).sum();
    if waiting > 0 {
        println!(
            "{waiting} voids or deferred charges wait in the data dir for the gateway's next start"
        );
    }
    Ok(consistent)
}

pub fn execute(command: Command) -> Result<(), CliError> {
    match command {
        Command::Run { config, upgrade } => {
            let config = app::load_config(&config)?;
            let control_plane = tollgate_admin_api::control_plane(&config, upgrade);
            server::run(config, RunOptions { upgrade }, control_plane).map_err(CliError::from)
        }
        Command::Admin { config } => {
            let config = app::load_config(&config)?;
            let control_plane = tollgate_admin_api::control_plane(&config, false);
            server::run_control_plane(config, control_plane).map_err(CliError::from)
        }
        Command::CreateAdmin {
            config,
            email,
            tenant,
        } => {
            let config = app::load_config(&config)?;
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| format!("reading the password from stdin: {e}"))?;
            let password = password.trim_end_matches(['\r', '\n']);
            let runtime = app::store_runtime()?;
            let id = runtime.block_on(async {
                let parts = app::open(&config, Access::Offline).await?;
                tollgate_admin_api::create_admin(
                    &*parts.store,
                    &*parts.docs,
                    &email,
                    password,
                    &tenant,
                )
                .await
                .map_err(CliError::Message)
            })?;
            println!("{id}");
            Ok(())
        }
        Command::Token {
            config,
            tenant,
            user,
            role,
            ttl,
        } => {
            let config = app::load_config(&config)?;
            let role = match role {
                RoleArg::User => Role::User,
                RoleArg::Admin => Role::Admin,
            };
            if !tollgate::vocab::is_valid_tenant_id(&tenant) {
                return Err("--tenant: 1 to 64 characters of A-Z a-z 0-9 _ . -".into());
            }
            // A longer-lived token would outlive the revocation of a change to its user.
            if !(1..=tollgate::config::MAX_TOKEN_TTL_SECS).contains(&ttl) {
                return Err(CliError::Message(format!(
                    "--ttl: 1 to {} seconds (7 days)",
                    tollgate::config::MAX_TOKEN_TTL_SECS
                )));
            }
            let token = auth::mint(&config.auth, &tenant, &user, role, ttl)?;
            println!("{token}");
            Ok(())
        }
        Command::Reconcile { config } => {
            let config = app::load_config(&config)?;
            let runtime = app::store_runtime()?;
            let consistent = runtime.block_on(reconcile(&config))?;
            if consistent {
                Ok(())
            } else {
                Err("balances disagree (see above)".into())
            }
        }
        Command::Echo { listen } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime
                .block_on(async {
                    let listener = tokio::net::TcpListener::bind(listen).await?;
                    tracing::info!(%listen, "echo upstream listening");
                    tollgate::demo_upstream::serve(listener, Default::default()).await
                })
                .map_err(|e| CliError::Message(format!("echo upstream on {listen}: {e}")))
        }
        Command::CheckConfig { config } => {
            app::load_config(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
    }
}
