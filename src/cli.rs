//! The operator's commands: `channeld apps create|list|update`, `channeld keys create|list|revoke`.

use std::io::Write;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    apps::{self, App, Quotas},
    auth::{
        Credential, MasterKey, NewKey, NewPublishableKey, Scope, create_key,
        create_publishable_key, find_key, list_keys, list_publishable_keys, revoke_key,
        revoke_publishable_key,
    },
    config::{AppQuotaArgs, AppsCommand, CreateKeyArgs, KeysCommand, Quota},
};

pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub async fn run_apps(db: &PgPool, command: AppsCommand, out: &mut impl Write) -> CliResult {
    match command {
        AppsCommand::Create { name, quotas } => {
            if !apps::is_app_name(&name) {
                return Err(format!(
                    "invalid app name `{name}`: 1-64 characters of a-z, 0-9, `_` and `-`"
                )
                .into());
            }
            if apps::find_app_by_name(db, &name).await?.is_some() {
                return Err(format!(
                    "app {name} exists (`channeld apps update {name} …` changes it)"
                )
                .into());
            }
            let app = apps::create_app(db, &name, &quotas_of(&quotas)).await?;
            writeln!(out, "Created app {}", describe(&app))?;
        }
        AppsCommand::List => {
            let mut rows: Vec<[String; 4]> =
                vec![["APP", "MAX CHANNELS", "MAX CONNECTIONS", "RATE LIMIT"].map(String::from)];
            for app in apps::list_apps(db).await? {
                rows.push([
                    app.name.clone(),
                    limit(app.max_channels),
                    limit(app.max_connections),
                    app.rate_limit
                        .map_or("unlimited".into(), |r| format!("{r}/s")),
                ]);
            }
            write_table(out, &rows)?;
        }
        AppsCommand::Update { name, quotas } => {
            let quotas = quotas_of(&quotas);
            if quotas.max_channels.is_none()
                && quotas.max_connections.is_none()
                && quotas.rate_limit.is_none()
            {
                return Err(
                    "nothing to change: give --max-channels, --max-connections or --rate-limit"
                        .into(),
                );
            }
            let app = apps::update_app(db, &name, &quotas)
                .await?
                .ok_or_else(|| format!("no app {name} (`channeld apps list` shows every app)"))?;
            writeln!(out, "Updated app {}", describe(&app))?;
        }
    }
    Ok(())
}

fn quotas_of(args: &AppQuotaArgs) -> Quotas {
    // parse_quota keeps every number within i32.
    let stored = |quota: Option<Quota>| quota.map(|Quota(n)| n.map(|n| n as i32));
    Quotas {
        max_channels: stored(args.max_channels),
        max_connections: stored(args.max_connections),
        rate_limit: stored(args.rate_limit),
    }
}

fn limit(value: Option<i32>) -> String {
    value.map_or("unlimited".into(), |n| n.to_string())
}

fn describe(app: &App) -> String {
    format!(
        "{} (max channels: {}, max connections: {}, rate limit: {})",
        app.name,
        limit(app.max_channels),
        limit(app.max_connections),
        app.rate_limit
            .map_or("unlimited".into(), |r| format!("{r}/s")),
    )
}

/// The id of the app named `name`, or an error that says how to find the right name.
async fn app_id(db: &PgPool, name: &str) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    Ok(apps::find_app_by_name(db, name)
        .await?
        .ok_or_else(|| format!("no app {name} (`channeld apps list` shows every app; `channeld apps create {name}` makes it)"))?
        .id)
}

pub async fn run_keys(
    db: &PgPool,
    master_key: Option<&MasterKey>,
    command: KeysCommand,
    out: &mut impl Write,
) -> CliResult {
    match command {
        KeysCommand::Create(args) if args.publishable => create_publishable(db, args, out).await,
        KeysCommand::Create(args) => {
            let master_key = master_key.ok_or(
                "CHANNELD_MASTER_KEY (or --master-key) is required to create a secret key: \
                 it encrypts the secret that signs tokens",
            )?;
            create(db, master_key, args, out).await
        }
        KeysCommand::List => list(db, out).await,
        KeysCommand::Revoke { key_id } => revoke(db, &key_id, out).await,
    }
}

/// Revokes by key id (`sk_id_…`), by the whole secret key (`sk_live_…` or `sk_id_…:sk_secret_…`,
/// whose secret must match), or a publishable key (`pk_live_…`).
async fn revoke(db: &PgPool, given: &str, out: &mut impl Write) -> CliResult {
    let given = given.trim();
    let hint = "pass the key id (sk_id_…, shown by `channeld keys list`), the whole secret key \
                (sk_live_…), or a publishable key (pk_live_…)";
    let (revoked, key_id) = if given.starts_with("pk_live_") {
        (revoke_publishable_key(db, given).await?, given.to_owned())
    } else if given.starts_with("sk_live_") || given.contains(':') {
        let credential =
            Credential::parse(given).ok_or_else(|| format!("malformed secret key; {hint}"))?;
        match find_key(db, &credential.key_id).await? {
            Some(key) if credential.matches(&key.secret_sha256) => {
                (revoke_key(db, &key.key_id).await?, key.key_id)
            }
            Some(key) => {
                return Err(format!(
                    "the secret does not match key {}; nothing was revoked",
                    key.key_id
                )
                .into());
            }
            None => (false, credential.key_id),
        }
    } else if given.starts_with("sk_id_") {
        (revoke_key(db, given).await?, given.to_owned())
    } else {
        return Err(format!("`{given}` is not a key; {hint}").into());
    };
    if !revoked {
        return Err(format!("no key {key_id} (`channeld keys list` shows every key)").into());
    }
    writeln!(out, "revoked {key_id}")?;
    Ok(())
}

/// What both kinds of key share: a name, scopes, patterns and an optional lifetime.
struct Checked {
    name: String,
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
}

fn check(args: &CreateKeyArgs) -> Result<Checked, Box<dyn std::error::Error + Send + Sync>> {
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
    Ok(Checked {
        name,
        scopes,
        expires_at,
    })
}

async fn create(
    db: &PgPool,
    master_key: &MasterKey,
    args: CreateKeyArgs,
    out: &mut impl Write,
) -> CliResult {
    let checked = check(&args)?;
    let positive = |value: Option<u32>, flag: &str| match value {
        Some(0) => Err(format!("{flag} must be at least 1")),
        Some(n) => i32::try_from(n)
            .map(Some)
            .map_err(|_| format!("{flag} is too large")),
        None => Ok(None),
    };
    let new = NewKey {
        app_id: app_id(db, &args.app).await?,
        name: checked.name,
        scopes: checked.scopes,
        channel_patterns: args.channel_patterns,
        expires_at: checked.expires_at,
        rate_limit: positive(args.rate_limit, "--rate-limit")?,
        rate_burst: positive(args.rate_burst, "--rate-burst")?,
    };
    let (generated, stored) = create_key(db, &new, master_key).await?;
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
    writeln!(out, "  expires:          {}", expiry(stored.expires_at))?;
    writeln!(out)?;
    writeln!(out, "Secret, shown only now:")?;
    writeln!(out, "  {}", generated.live_form())?;
    writeln!(out, "Same key as an id:secret pair:")?;
    writeln!(out, "  {}:{}", generated.key_id, generated.secret)?;
    Ok(())
}

async fn create_publishable(db: &PgPool, args: CreateKeyArgs, out: &mut impl Write) -> CliResult {
    let checked = check(&args)?;
    if let Some(scope) = checked.scopes.iter().find(|s| !s.is_realtime()) {
        return Err(format!(
            "a publishable key may only hold publish, subscribe, presence and send (not {scope})"
        )
        .into());
    }
    if args.allowed_origins.is_empty() {
        return Err(
            "a publishable key needs at least one --allowed-origin (`*` allows any)".into(),
        );
    }
    let new = NewPublishableKey {
        app_id: app_id(db, &args.app).await?,
        name: checked.name,
        actions: checked.scopes,
        channel_patterns: args.channel_patterns,
        allowed_origins: args.allowed_origins,
        expires_at: checked.expires_at,
    };
    let stored = create_publishable_key(db, &new).await?;
    if args.quiet {
        writeln!(out, "{}", stored.key)?;
        return Ok(());
    }
    writeln!(
        out,
        "Created publishable key {} ({})",
        stored.key, stored.name
    )?;
    writeln!(out, "  actions:          {}", stored.actions.join(", "))?;
    writeln!(
        out,
        "  channel patterns: {}",
        stored.channel_patterns.join(", ")
    )?;
    writeln!(
        out,
        "  allowed origins:  {}",
        stored.allowed_origins.join(", ")
    )?;
    writeln!(out, "  expires:          {}", expiry(stored.expires_at))?;
    Ok(())
}

async fn list(db: &PgPool, out: &mut impl Write) -> CliResult {
    let now = Utc::now();
    let status = |revoked: bool, active: bool| match (revoked, active) {
        (true, _) => "revoked",
        (false, true) => "active",
        (false, false) => "expired",
    };
    let app_names: std::collections::HashMap<i64, String> = apps::list_apps(db)
        .await?
        .into_iter()
        .map(|app| (app.id, app.name))
        .collect();
    let app = |id: i64| {
        app_names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    };
    let mut rows: Vec<[String; 7]> = vec![
        [
            "KEY",
            "APP",
            "NAME",
            "STATUS",
            "EXPIRES",
            "SCOPES",
            "CHANNEL PATTERNS",
        ]
        .map(String::from),
    ];
    for key in list_keys(db).await? {
        rows.push([
            key.key_id.clone(),
            app(key.app_id),
            key.name.clone(),
            status(key.revoked_at.is_some(), key.is_active(now)).to_owned(),
            expiry(key.expires_at),
            key.scopes.join(","),
            key.channel_patterns.join(","),
        ]);
    }
    for key in list_publishable_keys(db).await? {
        rows.push([
            key.key.clone(),
            app(key.app_id),
            key.name.clone(),
            status(key.revoked_at.is_some(), key.is_active(now)).to_owned(),
            expiry(key.expires_at),
            key.actions.join(","),
            format!(
                "{}  (origins: {})",
                key.channel_patterns.join(","),
                key.allowed_origins.join(",")
            ),
        ]);
    }
    write_table(out, &rows)?;
    Ok(())
}

/// Writes `rows` as columns two spaces apart, each as wide as its widest cell (counted in
/// characters), the last one unpadded.
fn write_table<const N: usize>(out: &mut impl Write, rows: &[[String; N]]) -> std::io::Result<()> {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < N {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn expiry(at: Option<DateTime<Utc>>) -> String {
    at.map_or("never".to_owned(), |at| {
        at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    })
}
