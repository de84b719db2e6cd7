//! Versioned CQL migrations: `store/migrations/scylla/NNNN_name.cql`, applied in order by
//! `orderflow migrate` (or on start with `--migrate`) and recorded in `schema_migrations`.
//!
//! A migration is applied once; its checksum is recorded, so a file edited after it was applied
//! is reported instead of silently diverging. Statements use `IF NOT EXISTS`, so two migrators
//! racing (two services started with `--migrate`) both succeed.

use std::{fmt, str::FromStr};

use scylla::client::session::Session;

use crate::{Result, StoreError};

/// One migration file.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub cql: &'static str,
}

/// Every migration, oldest first. Append; never edit one that has shipped.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        cql: include_str!("../../migrations/scylla/0001_initial.cql"),
    },
    // Accounts, verification codes, refresh tokens.
    Migration {
        version: 2,
        name: "accounts",
        cql: include_str!("../../migrations/scylla/0002_accounts.cql"),
    },
    Migration {
        version: 3,
        name: "order_lifecycle",
        cql: include_str!("../../migrations/scylla/0003_order_lifecycle.cql"),
    },
    // Products CRUD: the discontinued flag.
    Migration {
        version: 4,
        name: "catalogue",
        cql: include_str!("../../migrations/scylla/0004_catalogue.cql"),
    },
    // Cancel and ship: the final step of an order.
    Migration {
        version: 5,
        name: "order_lifecycle_final",
        cql: include_str!("../../migrations/scylla/0005_order_lifecycle.cql"),
    },
    // Order modifications and payment claims: the revision fence.
    Migration {
        version: 6,
        name: "order_revisions",
        cql: include_str!("../../migrations/scylla/0006_order_revisions.cql"),
    },
    // Stock adjustments' idempotency keys.
    Migration {
        version: 7,
        name: "stock_adjustment_keys",
        cql: include_str!("../../migrations/scylla/0007_stock_adjustment_keys.cql"),
    },
    // Orders awaiting a bank transfer (expiry, per-customer cap) and the idempotency fence.
    Migration {
        version: 8,
        name: "unpaid_orders",
        cql: include_str!("../../migrations/scylla/0008_unpaid_orders.cql"),
    },
    // Payment tokens and verification codes kept in the store, off the topics.
    Migration {
        version: 9,
        name: "secrets",
        cql: include_str!("../../migrations/scylla/0009_secrets.cql"),
    },
    // The unit prices of a revision's lines, for price adjustments.
    Migration {
        version: 10,
        name: "line_prices",
        cql: include_str!("../../migrations/scylla/0010_line_prices.cql"),
    },
    // The outbox: intents of the events announcing the API's changes.
    Migration {
        version: 11,
        name: "outbox",
        cql: include_str!("../../migrations/scylla/0011_outbox.cql"),
    },
    // Refresh tokens and their families expire (TTLs).
    Migration {
        version: 12,
        name: "refresh_token_ttls",
        cql: include_str!("../../migrations/scylla/0012_refresh_token_ttls.cql"),
    },
];

/// The schema version this build needs.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The keyspace's replication, as `CREATE KEYSPACE` takes it.
///
/// Parsed from `simple:<factor>` (SimpleStrategy, for development) or
/// `<dc>:<factor>[,<dc>:<factor>…]` (NetworkTopologyStrategy, for production).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    Simple(u32),
    NetworkTopology(Vec<(String, u32)>),
}

impl Default for Replication {
    fn default() -> Self {
        Replication::Simple(1)
    }
}

impl FromStr for Replication {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let factor = |dc: &str, n: &str| {
            n.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("replication factor for {dc} must be a positive integer"))
        };
        let pairs: Vec<(&str, &str)> = s
            .split(',')
            .map(|part| {
                part.split_once(':').ok_or_else(|| {
                    format!(
                        "replication `{s}`: expected `simple:<factor>` or \
                         `<datacenter>:<factor>[,…]`"
                    )
                })
            })
            .collect::<std::result::Result<_, _>>()?;
        match pairs.as_slice() {
            [(kind, n)] if kind.trim().eq_ignore_ascii_case("simple") => {
                Ok(Replication::Simple(factor("simple", n)?))
            }
            _ => pairs
                .iter()
                .map(|(dc, n)| {
                    let dc = dc.trim();
                    if dc.is_empty()
                        || !dc
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
                    {
                        return Err(format!("replication: `{dc}` is not a datacenter name"));
                    }
                    Ok((dc.to_string(), factor(dc, n)?))
                })
                .collect::<std::result::Result<_, _>>()
                .map(Replication::NetworkTopology),
        }
    }
}

impl fmt::Display for Replication {
    /// The CQL map literal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replication::Simple(n) => {
                write!(
                    f,
                    "{{'class': 'SimpleStrategy', 'replication_factor': {n}}}"
                )
            }
            Replication::NetworkTopology(dcs) => {
                f.write_str("{'class': 'NetworkTopologyStrategy'")?;
                for (dc, n) in dcs {
                    write!(f, ", '{dc}': {n}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// Whether `name` is a keyspace name CQL takes unquoted (we never quote it).
pub fn valid_keyspace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<i32>,
    pub version: i32,
}

/// Creates the keyspace if missing and applies every migration it lacks.
pub async fn migrate(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
) -> Result<MigrationReport> {
    if !valid_keyspace(keyspace) {
        return Err(StoreError::Invalid(format!(
            "`{keyspace}` is not a valid keyspace name (letters, digits and _, starting with a letter)"
        )));
    }
    create_keyspace(session, keyspace, replication).await?;
    ddl(
        session,
        &format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations \
             (version int PRIMARY KEY, name text, checksum text, applied_at bigint)"
        ),
    )
    .await?;
    let applied = applied_migrations(session, keyspace).await?;
    let mut report = MigrationReport {
        applied: Vec::new(),
        version: 0,
    };
    for migration in MIGRATIONS {
        let checksum = orderflow_schemas::stable_digest(migration.cql.as_bytes());
        if let Some((_, recorded)) = applied.iter().find(|(v, _)| *v == migration.version) {
            if *recorded != checksum {
                return Err(StoreError::Invalid(format!(
                    "migration {} ({}) was changed after it was applied to keyspace {keyspace} \
                     (checksum {recorded} recorded, {checksum} now): add a new migration instead",
                    migration.version, migration.name
                )));
            }
            report.version = migration.version;
            continue;
        }
        for statement in statements(migration.cql) {
            ddl(session, &qualify(&statement, keyspace))
                .await
                .or_else(|e| already_added(&statement, e))
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "migration {} ({}): {e}",
                        migration.version, migration.name
                    ))
                })?;
        }
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.schema_migrations (version, name, checksum, applied_at) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                (
                    migration.version,
                    migration.name,
                    checksum.as_str(),
                    orderflow_schemas::now_millis(),
                ),
            )
            .await
            .map_err(super::unavailable)?;
        tracing::info!(
            keyspace,
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        report.applied.push(migration.version);
        report.version = migration.version;
    }
    Ok(report)
}

/// Creates the keyspace without tablets where the server has them: this store's lightweight
/// transactions need a vnode keyspace on ScyllaDB releases whose tablets do not support LWT
/// (tablets are the default for new keyspaces since 2025.1). Servers that do not know the
/// option (older ScyllaDB, Cassandra) get the plain statement.
async fn create_keyspace(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
) -> Result<()> {
    let plain =
        format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}");
    match ddl(
        session,
        &format!("{plain} AND tablets = {{'enabled': false}}"),
    )
    .await
    {
        Err(e) if e.to_string().to_ascii_lowercase().contains("tablets") => {
            tracing::debug!(error = %e, "the server has no tablets option; creating the keyspace without it");
            ddl(session, &plain).await
        }
        other => other,
    }
}

/// The schema version recorded in the keyspace (0 when it has none).
pub async fn current_version(session: &Session, keyspace: &str) -> Result<i32> {
    Ok(applied_migrations(session, keyspace)
        .await?
        .iter()
        .map(|(v, _)| *v)
        .max()
        .unwrap_or(0))
}

async fn applied_migrations(session: &Session, keyspace: &str) -> Result<Vec<(i32, String)>> {
    let result = session
        .query_unpaged(
            format!("SELECT version, checksum FROM {keyspace}.schema_migrations"),
            (),
        )
        .await;
    let result = match result {
        Ok(result) => result,
        // No keyspace or table yet: nothing applied.
        Err(e) if is_missing_schema(&e.to_string()) => return Ok(Vec::new()),
        Err(e) => return Err(super::unavailable(e)),
    };
    let rows = result.into_rows_result().map_err(super::unavailable)?;
    let applied = rows
        .rows::<(i32, Option<String>)>()
        .map_err(super::corrupt)?
        .map(|row| row.map(|(v, c)| (v, c.unwrap_or_default())))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(super::corrupt)?;
    Ok(applied)
}

fn is_missing_schema(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("unconfigured table")
        || message.contains("keyspace") && message.contains("does not exist")
        || message.contains("non-existing keyspace")
}

async fn ddl(session: &Session, statement: &str) -> Result<()> {
    session
        .query_unpaged(statement.to_string(), ())
        .await
        .map_err(super::unavailable)?;
    session
        .await_schema_agreement()
        .await
        .map_err(super::unavailable)?;
    Ok(())
}

/// The statements of a migration file: `--` comments dropped, split on `;`.
fn statements(cql: &str) -> Vec<String> {
    let without_comments: String = cql
        .lines()
        .map(|line| match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Prefixes the table a `CREATE TABLE IF NOT EXISTS <table>` (or an `ALTER TABLE <table>`)
/// names with the keyspace, so the migration runs on a session with no keyspace selected.
fn qualify(statement: &str, keyspace: &str) -> String {
    const CREATE: &str = "CREATE TABLE IF NOT EXISTS ";
    const ALTER: &str = "ALTER TABLE ";
    match statement.strip_prefix(CREATE) {
        Some(rest) if !rest.contains('.') || rest.find('.') > rest.find('(') => {
            format!("{CREATE}{keyspace}.{rest}")
        }
        _ => match statement.strip_prefix(ALTER) {
            Some(rest) if !rest.split(' ').next().unwrap_or("").contains('.') => {
                format!("{ALTER}{keyspace}.{rest}")
            }
            _ => statement.to_string(),
        },
    }
}

/// `ALTER TABLE … ADD` has no `IF NOT EXISTS`: when a migration stopped after adding the
/// column but before it was recorded, running it again finds the column there. That is done.
fn already_added(statement: &str, e: StoreError) -> Result<()> {
    let message = e.to_string().to_ascii_lowercase();
    if statement.starts_with("ALTER TABLE ")
        && statement.contains(" ADD ")
        && (message.contains("conflicts with an existing column")
            || message.contains("already exists"))
    {
        return Ok(());
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_parses_both_strategies() {
        assert_eq!("simple:3".parse(), Ok(Replication::Simple(3)));
        assert_eq!(
            "dc1:3, dc-2:2".parse(),
            Ok(Replication::NetworkTopology(vec![
                ("dc1".into(), 3),
                ("dc-2".into(), 2)
            ]))
        );
        assert_eq!(
            Replication::Simple(1).to_string(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(
            Replication::NetworkTopology(vec![("eu".into(), 3)]).to_string(),
            "{'class': 'NetworkTopologyStrategy', 'eu': 3}"
        );
        for bad in ["", "simple", "simple:0", "dc1:x", "d'c:3", "simple:-1"] {
            assert!(bad.parse::<Replication>().is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn migration_files_split_into_qualified_statements() {
        let all: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| statements(m.cql))
            .map(|s| qualify(&s, "ks"))
            .collect();
        assert!(all.len() >= 10, "{all:#?}");
        for s in &all {
            assert!(
                s.starts_with("CREATE TABLE IF NOT EXISTS ks.") || s.starts_with("ALTER TABLE ks."),
                "{s}"
            );
            assert!(!s.contains("--") && !s.contains(';'), "{s}");
        }
        assert!(all.iter().any(
            |s| s.starts_with("CREATE TABLE IF NOT EXISTS ks.products ( sku text PRIMARY KEY,")
        ));
        assert!(all.contains(&"ALTER TABLE ks.products ADD discontinued boolean".to_string()));
        assert!(all.contains(&"ALTER TABLE ks.refresh_families ADD expires_at bigint".to_string()));
        assert!(all.contains(&"ALTER TABLE ks.orders ADD revision int static".to_string()));
        assert!(all.contains(&"ALTER TABLE ks.orders ADD payment_claim int static".to_string()));
        assert!(all.contains(&"ALTER TABLE ks.orders ADD payment_token text static".to_string()));
        assert!(all
            .iter()
            .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS ks.verification_emails (")));
        assert!(all
            .iter()
            .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS ks.stock_adjustment_keys (")));
        assert!(all
            .iter()
            .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS ks.outbox (")
                && s.ends_with("AND gc_grace_seconds = 10800")));
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(
            versions.windows(2).all(|w| w[1] == w[0] + 1) && versions[0] == 1,
            "versions are 1, 2, 3, …: {versions:?}"
        );
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert!(valid_keyspace("orderflow"));
        assert!(valid_keyspace("orderflow_test_01"));
        for bad in ["", "1abc", "order-flow", "a.b", "x; DROP"] {
            assert!(!valid_keyspace(bad), "{bad:?}");
        }
    }
}
