//! The operator's commands: `channeld keys create|list|revoke`.

use std::io::Write;

use chrono::Utc;
use sqlx::PgPool;

use crate::{
    auth::{NewKey, Scope, create_key, list_keys, revoke_key},
    config::{CreateKeyArgs, KeysCommand},
};

pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub async fn run_keys(db: &PgPool, command: KeysCommand, out: &mut impl Write) -> CliResult {
    match command {
        KeysCommand::Create(args) => create(db, args, out).await,
        KeysCommand::List => list(db, out).await,
        KeysCommand::Revoke { key_id } => {
            if revoke_key(db, &key_id).await? {
                writeln!(out, "revoked {key_id}")?;
                Ok(())
            } else {
                Err(format!("no key with id `{key_id}`").into())
            }
        }
    }
}

async fn create(db: &PgPool, args: CreateKeyArgs, out: &mut impl Write) -> CliResult {
    let name = args.name.trim().to_owned();
    if !(1..=100).contains(&name.chars().count()) {
        return Err("--name must be 1-100 characters".into());
    }
    let scopes = args
        .scopes
        .iter()
        .map(|s| s.trim().parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(bad) = args
        .channel_patterns
        .iter()
        .find(|p| !(1..=256).contains(&p.chars().count()) || p.chars().any(char::is_control))
    {
        return Err(format!(
            "invalid --channel-pattern `{bad}`: 1-256 characters, no control characters"
        )
        .into());
    }
    let expires_at = match args.expires_in {
        Some(lifetime) => Some(Utc::now() + chrono::Duration::from_std(lifetime)?),
        None => None,
    };
    let new = NewKey {
        name,
        scopes,
        channel_patterns: args.channel_patterns,
        expires_at,
    };
    let (generated, stored) = create_key(db, &new).await?;
    if args.quiet {
        writeln!(out, "{}", generated.live_form())?;
        return Ok(());
    }
    writeln!(out, "Created key {} ({})", stored.key_id, stored.name)?;
    writeln!(out, "  scopes:           {}", stored.scopes.join(", "))?;
    writeln!(
        out,
        "  channel patterns: {}",
        stored.channel_patterns.join(", ")
    )?;
    writeln!(
        out,
        "  expires:          {}",
        stored
            .expires_at
            .map_or("never".to_owned(), |at| at.to_rfc3339())
    )?;
    writeln!(out)?;
    writeln!(out, "Secret, shown only now:")?;
    writeln!(out, "  {}", generated.live_form())?;
    writeln!(out, "Same key as an id:secret pair:")?;
    writeln!(out, "  {}:{}", generated.key_id, generated.secret)?;
    Ok(())
}

async fn list(db: &PgPool, out: &mut impl Write) -> CliResult {
    let keys = list_keys(db).await?;
    let now = Utc::now();
    writeln!(
        out,
        "{:<22}  {:<20}  {:<8}  {:<25}  {:<30}  CHANNEL PATTERNS",
        "KEY ID", "NAME", "STATUS", "EXPIRES", "SCOPES"
    )?;
    for key in keys {
        let status = if key.revoked_at.is_some() {
            "revoked"
        } else if key.is_active(now) {
            "active"
        } else {
            "expired"
        };
        writeln!(
            out,
            "{:<22}  {:<20}  {:<8}  {:<25}  {:<30}  {}",
            key.key_id,
            key.name,
            status,
            key.expires_at.map_or("never".to_owned(), |at| at
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()),
            key.scopes.join(","),
            key.channel_patterns.join(","),
        )?;
    }
    Ok(())
}
