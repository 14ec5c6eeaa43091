//! Roles without leases (issue 12 §2): when the connection to OpenBao
//! drops while `database/creds/…` runs, OpenBao can commit the role and
//! register no lease. The issuer never cuts a creation off itself (it
//! finishes in the background and is revoked), and the database sweep drops
//! what a killed issuer left behind, never a role a live lease owns.
//!
//! OpenBao is made to stop mid-creation deterministically: PostgreSQL names
//! a synchronous standby that never connects, and the `hr-stuck` role's
//! creation statements ask for synchronous commit, so each creation waits
//! after its commit until OpenBao's request is cancelled, which is the
//! moment the issuer's connection drops. PostgreSQL then keeps the role
//! ("committed locally") and OpenBao, its context cancelled, registers no
//! lease. Every other transaction commits with local durability
//! (`synchronous_commit = local`: flushed, as by default with no standby).
//!
//! Everything is real: the issuer binary (`tether-services` linked as
//! `tether-credential-issuer`), OpenBao 2.7.2, PostgreSQL 15 with default
//! durability, the test IdP and identity exchange, gRPC with mTLS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sqlx::Connection as _;
use tether_credential_issuer::{DatabaseSweepConfig, LeaseStatus, Profile, Registry};
use tether_integration_tests::eventually;
use tether_integration_tests::issuer::{
    CredentialDeps, DelegatedSession, IssuerSandbox, SessionAuthority, hr_profiles,
};
use tether_integration_tests::openbao::{HR_REVOKE, OpenBao};
use tether_integration_tests::postgres::{ADMIN_USER, PgCluster, free_port};
use tether_proto::credentials::v1::credential_issuer_client::CredentialIssuerClient;
use tether_proto::credentials::v1::{IssueRequest, IssueResponse, credential};
use tether_runtime::client::InternalChannel;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_tether-services");
const READ_PATH: &str = "database/creds/hr-readonly";
const STUCK_PATH: &str = "database/creds/hr-stuck";
const SLOW_PATH: &str = "database/creds/hr-slow";
/// OpenBao's default username template with the root token (display name
/// `token`): `v-token-<role, 8 characters>-<random>-<unix time>`.
const READ_PREFIX: &str = "v-token-hr-reado-";
const STUCK_PREFIX: &str = "v-token-hr-stuck-";
const SLOW_PREFIX: &str = "v-token-hr-slow-";
/// Every role OpenBao creates for these tests.
const VAULT_PREFIX: &str = "v-token-";

/// Creates the role, then waits for a standby that never comes (see the
/// module comment): the commit lands, OpenBao hears of it only if nobody
/// cancels its request. No grants: a waiting commit still holds its row
/// locks, and a grant on schema `hr` would make every other creation wait
/// for it. (`the_database_sweep_drops_only_expired_unowned_roles_with_the_prefix`
/// sweeps a leaked role with grants.)
const STUCK_CREATE: &str = r#"SET LOCAL synchronous_commit = on; CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"#;
/// A creation that takes two seconds, then completes.
const SLOW_CREATE: &str = r#"SELECT pg_sleep(2); CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT USAGE ON SCHEMA hr TO "{{name}}"; GRANT SELECT ON ALL TABLES IN SCHEMA hr TO "{{name}}";"#;

async fn authority() -> SessionAuthority {
    SessionAuthority::start().await.expect(
        "starting the test IdP and the identity exchange (run `integration-tests/run.sh test`)",
    )
}

/// PostgreSQL with default durability and the phantom standby, OpenBao
/// with `hr-readonly` (600 s) and, on a connection of their own,
/// `hr-stuck` (5 s: a leaked role's VALID UNTIL passes soon) and
/// `hr-slow`.
async fn deps() -> CredentialDeps {
    let pg = PgCluster::start_durable()
        .await
        .expect("starting PostgreSQL (run `integration-tests/run.sh test`)");
    let mut admin = pg.admin().await.unwrap();
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'tether_phantom_standby'",
        "ALTER SYSTEM SET synchronous_commit = 'local'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(sql).execute(&mut admin).await.unwrap();
    }
    admin.close().await.unwrap();
    let bao = OpenBao::start()
        .await
        .expect("starting OpenBao (run `integration-tests/run.sh test`)");
    bao.setup_database(&pg, 600).await.unwrap();
    bao.api(
        "POST",
        "database/config/drill",
        Some(json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
                pg.port()
            ),
            "username": ADMIN_USER,
            "password": pg.admin_password(),
            "allowed_roles": "hr-stuck,hr-slow",
            "max_open_connections": 32,
        })),
    )
    .await
    .unwrap();
    for (role, create, ttl) in [("hr-stuck", STUCK_CREATE, 5), ("hr-slow", SLOW_CREATE, 600)] {
        bao.api(
            "POST",
            &format!("database/roles/{role}"),
            Some(json!({
                "db_name": "drill",
                "creation_statements": [create],
                "revocation_statements": [HR_REVOKE],
                "default_ttl": ttl,
                "max_ttl": 86_400,
            })),
        )
        .await
        .unwrap();
    }
    CredentialDeps { bao, pg }
}

/// A file holding the superuser's connection string, as a mounted Secret.
fn admin_url_file(dir: &Path, pg: &PgCluster) -> PathBuf {
    let path = dir.join("db-admin-url");
    std::fs::write(&path, pg.admin_url("postgres")).unwrap();
    path
}

fn sweep(url_file: &Path, prefix: &str) -> DatabaseSweepConfig {
    DatabaseSweepConfig {
        admin_url_file: url_file.to_owned(),
        username_prefix: prefix.into(),
        grace_secs: 0,
    }
}

fn issue_req(profile: &str) -> IssueRequest {
    IssueRequest {
        profile: profile.into(),
        ..IssueRequest::default()
    }
}

fn login(resp: &IssueResponse) -> (String, String) {
    match resp.credential.as_ref().unwrap().kind.as_ref().unwrap() {
        credential::Kind::Database(d) => (d.username.clone(), d.password.clone()),
        credential::Kind::Generic(_) => panic!("expected a database credential"),
    }
}

/// Whether `user` can log in and read `hr.employees`.
async fn logs_in(pg: &PgCluster, user: &str, password: &str) -> Result<(), String> {
    let mut conn = sqlx::postgres::PgConnection::connect_with(&pg.options(user, password))
        .await
        .map_err(|e| format!("{user}: {e}"))?;
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM hr.employees")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| format!("{user}: {e}"))?;
    let _ = conn.close().await;
    if n == 2 {
        Ok(())
    } else {
        Err(format!("{user} sees {n} employees"))
    }
}

/// The logins live lease rows record.
async fn owned_logins(registry: &Registry) -> BTreeSet<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT db_username FROM credential_leases WHERE db_username IS NOT NULL \
         AND status IN ('ISSUING', 'ACTIVE', 'REVOKING', 'REVOCATION_FAILED')",
    )
    .fetch_all(registry.pool())
    .await
    .unwrap();
    rows.into_iter().map(|(u,)| u).collect()
}

async fn statuses(registry: &Registry) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM credential_leases GROUP BY status")
            .fetch_all(registry.pool())
            .await
            .unwrap();
    rows.into_iter().collect()
}

/// Creations OpenBao has running in PostgreSQL, waiting after their commit.
async fn creations_waiting(pg: &PgCluster) -> i64 {
    let mut admin = pg.admin().await.unwrap();
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    admin.close().await.unwrap();
    n
}

/// What PostgreSQL's backends are doing (for a failure message).
async fn activity(pg: &PgCluster) -> String {
    let mut admin = pg.admin().await.unwrap();
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT format('%s %s/%s: %s', state, wait_event_type, wait_event, left(query, 80)) \
         FROM pg_stat_activity",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let _ = admin.close().await;
    rows.into_iter()
        .map(|(r,)| r)
        .collect::<Vec<_>>()
        .join("; ")
}

// ---- the issuer as a real process ------------------------------------------

/// The issuer binary, SIGKILLed on drop.
struct IssuerProcess {
    child: Child,
    log: PathBuf,
}

impl IssuerProcess {
    fn spawn(bin: &Path, config: &Path, log: PathBuf) -> Self {
        let mut command = Command::new(bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TETHER_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap it.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for IssuerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client as the agent facade, once the issuer answers.
async fn connect(
    auth: &SessionAuthority,
    port: u16,
    process: &IssuerProcess,
) -> CredentialIssuerClient<InternalChannel> {
    let channel = auth
        .identity()
        .pki()
        .channel(
            "agent-facade",
            ([127, 0, 0, 1], port).into(),
            "credential-issuer",
        )
        .unwrap();
    eventually(Duration::from_secs(30), || {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|_| ())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("the issuer did not start: {e:?}\n{}", process.log()));
    CredentialIssuerClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkills_with_creations_in_flight_leave_no_role_without_a_live_lease() {
    const ROUNDS: usize = 3;
    const STUCK_CALLS: usize = 4;
    const READ_CALLS: usize = 2;
    let (deps, auth) = tokio::join!(deps(), authority());
    deps.pg.create_database("tether").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("tether-credential-issuer");
    std::os::unix::fs::symlink(BIN, &bin).unwrap();
    let url_file = admin_url_file(dir.path(), &deps.pg);
    let port = free_port().unwrap();
    let sessions = auth.sessions_config();
    let tls = auth.identity().pki().tls("credential-issuer").unwrap();
    let config = dir.path().join("credential-issuer.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
shutdown_delay_secs = 0
drain_timeout_secs = 2
[sessions]
token_issuer = "{token_issuer}"
audience = "{audience}"
jwks_url = "{jwks_url}"
identity_exchange = "{identity_exchange}"
[vault]
address = "{addr}"
request_timeout_ms = 1000
creation_timeout_ms = 2000
[vault.auth]
method = "token"
token = "root"
[store]
url = "{store}"
[profiles.hr-read]
vault_path = "{READ_PATH}"
max_ttl_secs = 600
[profiles.hr-read.database_sweep]
admin_url_file = "{url_file}"
username_prefix = "{READ_PREFIX}"
grace_secs = 0
[profiles.stuck]
vault_path = "{STUCK_PATH}"
max_ttl_secs = 600
[profiles.stuck.database_sweep]
admin_url_file = "{url_file}"
username_prefix = "{STUCK_PREFIX}"
grace_secs = 0
[revocation]
sweep_interval_ms = 300
orphan_sweep_interval_ms = 1000
backoff_initial_ms = 100
backoff_max_ms = 1000
clock_skew_ms = 500
"#,
            addr = deps.bao.addr(),
            store = deps.pg.admin_url("tether"),
            url_file = url_file.display(),
            token_issuer = sessions.token_issuer,
            audience = sessions.audience,
            jwks_url = sessions.jwks_url,
            identity_exchange = sessions.identity_exchange,
        ) + &tls.to_toml_section(),
    )
    .unwrap();

    // Each round: creations in flight on the stuck path, credentials handed
    // out on the healthy one, then SIGKILL.
    let mut handed_out: Vec<(String, String)> = Vec::new();
    for round in 0..ROUNDS {
        let process =
            IssuerProcess::spawn(&bin, &config, dir.path().join(format!("round-{round}.log")));
        let client = connect(&auth, port, &process).await;
        let session: DelegatedSession = auth.session().await.unwrap();
        let before = creations_waiting(&deps.pg).await;
        let mut stuck = tokio::task::JoinSet::new();
        for _ in 0..STUCK_CALLS {
            let mut client = client.clone();
            let request = session.request(issue_req("stuck"));
            stuck.spawn(async move { client.issue(request).await });
        }
        let mut read = tokio::task::JoinSet::new();
        for _ in 0..READ_CALLS {
            let mut client = client.clone();
            let request = session.request(issue_req("hr-read"));
            read.spawn(async move { client.issue(request).await });
        }
        while let Some(result) = read.join_next().await {
            let resp = result.unwrap().unwrap().into_inner();
            let (user, password) = login(&resp);
            assert!(user.starts_with(READ_PREFIX), "{user}");
            handed_out.push((user, password));
        }
        // A stuck creation is committed in PostgreSQL and waiting. (OpenBao
        // runs one creation per database connection config at a time: the
        // others wait their turn inside OpenBao.)
        let waiting = eventually(Duration::from_secs(20), || async {
            let n = creations_waiting(&deps.pg).await;
            if n > before { Ok(()) } else { Err(n) }
        })
        .await;
        if let Err(n) = waiting {
            panic!(
                "{n} creations waiting: {}\n{}",
                activity(&deps.pg).await,
                process.log()
            );
        }
        process.kill();
        while let Some(result) = stuck.join_next().await {
            let status = result.unwrap().unwrap_err();
            assert_ne!(status.code(), Code::Ok);
        }
    }
    // The drill did leave roles without leases behind: at least the one
    // waiting in each round (a queued creation that started before OpenBao
    // saw its connection close may add one).
    let leaked = deps.pg.roles_like(STUCK_PREFIX).await.unwrap();
    assert!(leaked.len() >= ROUNDS, "{leaked:?}");
    assert!(deps.bao.leases(STUCK_PATH).await.unwrap().is_empty());

    // Restart: the reconciler settles the interrupted issuances, the
    // database sweep drops the leaked roles once their VALID UNTIL (5 s)
    // and the grace (creation timeout + issuing window + skew) passed.
    let process = IssuerProcess::spawn(&bin, &config, dir.path().join("final.log"));
    let mut client = connect(&auth, port, &process).await;
    let registry = Registry::open(
        &deps.pg.admin_url("tether"),
        &tether_store::PoolSettings::default(),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(90), || async {
        let roles: BTreeSet<String> = deps
            .pg
            .roles_like(VAULT_PREFIX)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let owned = owned_logins(&registry).await;
        let unowned: Vec<&String> = roles.difference(&owned).collect();
        let statuses = statuses(&registry).await;
        let stuck_leases = deps
            .bao
            .leases(STUCK_PATH)
            .await
            .map_err(|e| e.to_string())?;
        if unowned.is_empty() && !statuses.contains_key("ISSUING") && stuck_leases.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "roles no live lease owns: {unowned:?}; rows by status {statuses:?}; leases on the stuck path {stuck_leases:?}"
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", process.log()));

    // Every credential handed out still works, and is still live.
    assert_eq!(handed_out.len(), ROUNDS * READ_CALLS);
    let owned = owned_logins(&registry).await;
    for (user, password) in &handed_out {
        assert!(owned.contains(user), "{user} has no live lease");
        logs_in(&deps.pg, user, password).await.unwrap();
    }
    // The interrupted rows say what is known, and never that they were
    // revoked: nothing handed out, outcome unknown, swept.
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, last_error FROM credential_leases WHERE profile = 'stuck'")
            .fetch_all(registry.pool())
            .await
            .unwrap();
    // (A call the kill overtook before its row was written left none.)
    assert!(
        (ROUNDS..=ROUNDS * STUCK_CALLS).contains(&rows.len()),
        "{rows:?}"
    );
    for (status, note) in &rows {
        assert_eq!(status, LeaseStatus::Abandoned.as_str(), "{rows:?}");
        let note = note.as_deref().unwrap_or_default();
        assert!(
            note.starts_with("abandoned: creation outcome unknown")
                && note.contains("dropped by the database sweep"),
            "{rows:?}"
        );
    }
    // The restarted issuer still serves.
    let session = auth.session().await.unwrap();
    let resp = client
        .issue(session.request(issue_req("hr-read")))
        .await
        .unwrap()
        .into_inner();
    let (user, password) = login(&resp);
    logs_in(&deps.pg, &user, &password).await.unwrap();

    // Each drop is logged with the role's name, never a password or the
    // admin connection string.
    let log = process.log();
    for role in &leaked {
        assert!(log.contains(role.as_str()), "{role} not in the log");
    }
    assert!(!log.contains(deps.pg.admin_password()));
    for (_, password) in &handed_out {
        assert!(!log.contains(password.as_str()));
    }
}

// ---- the issuer's own timeout -----------------------------------------------

#[tokio::test]
async fn a_creation_outliving_the_call_finishes_in_the_background_and_is_revoked() {
    let (deps, auth) = tokio::join!(deps(), authority());
    let mut profiles = hr_profiles(600);
    profiles.insert(
        "slow".into(),
        Profile {
            vault_path: SLOW_PATH.into(),
            max_ttl_secs: 600,
            database_sweep: None,
        },
    );
    // The call waits 1 s; the creation takes 2 s, and may take 10.
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .profiles(profiles)
        .vault_timeout_ms(1_000)
        .creation_timeout_ms(10_000)
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let status = issuer
        .client()
        .issue(session.request(issue_req("slow")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // The row does not pretend to know: outcome unknown, nothing handed
    // out, nothing revoked yet.
    let registry = issuer.registry().unwrap();
    let rows = registry.leases_of(session.sid(), 10, 0).await.unwrap();
    assert_eq!(rows.len(), 1);
    let id = rows[0].id.clone();
    assert_eq!(rows[0].status, LeaseStatus::Issuing, "{rows:?}");
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("abandoned: creation outcome unknown")),
        "{rows:?}"
    );

    // The creation completes at OpenBao (it was not cut off), and what it
    // made is recorded on the row and revoked: the lease and the role go.
    let row = eventually(Duration::from_secs(30), || async {
        let row = registry.get(&id).await.unwrap().unwrap();
        let leases = deps
            .bao
            .leases(SLOW_PATH)
            .await
            .map_err(|e| e.to_string())?;
        let roles = deps
            .pg
            .roles_like(SLOW_PREFIX)
            .await
            .map_err(|e| e.to_string())?;
        if row.vault_lease_id.is_some()
            && row.status == LeaseStatus::Revoked
            && leases.is_empty()
            && roles.is_empty()
        {
            Ok(row)
        } else {
            Err(format!(
                "row {} (vault lease {:?}, {:?}); leases {leases:?}; roles {roles:?}",
                row.status.as_str(),
                row.vault_lease_id,
                row.last_error
            ))
        }
    })
    .await
    .unwrap();
    assert!(
        row.vault_lease_id
            .as_deref()
            .is_some_and(|l| l.starts_with(SLOW_PATH)),
        "{row:?}"
    );
    // Nothing else was touched: the session still gets credentials.
    let resp = issuer
        .client()
        .issue(session.request(issue_req("hr-read")))
        .await
        .unwrap()
        .into_inner();
    let (user, password) = login(&resp);
    logs_in(&deps.pg, &user, &password).await.unwrap();
}

// ---- the database sweep's guards ----------------------------------------------

#[tokio::test]
async fn the_database_sweep_drops_only_expired_unowned_roles_with_the_prefix() {
    let (deps, auth) = tokio::join!(deps(), authority());
    let dir = tempfile::tempdir().unwrap();
    let url_file = admin_url_file(dir.path(), &deps.pg);
    let mut profiles = hr_profiles(600);
    profiles.get_mut("hr-read").unwrap().database_sweep = Some(sweep(&url_file, READ_PREFIX));
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .profiles(profiles)
        .start()
        .await
        .unwrap();
    let session = auth.session().await.unwrap();
    let resp = issuer
        .client()
        .issue(session.request(issue_req("hr-read")))
        .await
        .unwrap()
        .into_inner();
    let (owned, password) = login(&resp);
    assert!(owned.starts_with(READ_PREFIX), "{owned}");

    let mut admin = deps.pg.admin().await.unwrap();
    let leaked = format!("{READ_PREFIX}leaked-without-a-lease");
    let future = format!("{READ_PREFIX}valid-for-an-hour");
    let other = "v-token-hr-write-not-this-profile";
    for sql in [
        // A live lease's role whose VALID UNTIL has passed.
        format!(r#"ALTER ROLE "{owned}" VALID UNTIL '2000-01-01'"#),
        // What a killed issuance leaves: a login role with grants, no lease.
        format!(r#"CREATE ROLE "{leaked}" WITH LOGIN PASSWORD 'x' VALID UNTIL '2000-01-01'"#),
        format!(r#"GRANT USAGE ON SCHEMA hr TO "{leaked}""#),
        format!(r#"GRANT SELECT ON ALL TABLES IN SCHEMA hr TO "{leaked}""#),
        format!(r#"CREATE ROLE "{future}" WITH LOGIN VALID UNTIL 'infinity'"#),
        format!(r#"CREATE ROLE "{other}" WITH LOGIN VALID UNTIL '2000-01-01'"#),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    until_gone(&deps.pg, &leaked).await;
    // A pass that starts after the one that dropped it drops a second one:
    // by then the first pass has looked at every candidate.
    let second = format!("{READ_PREFIX}leaked-second");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"CREATE ROLE "{second}" WITH LOGIN VALID UNTIL '2000-01-01'"#
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    until_gone(&deps.pg, &second).await;
    for role in [owned.as_str(), future.as_str(), other] {
        assert_eq!(
            deps.pg.roles_like(role).await.unwrap(),
            vec![role.to_owned()],
            "{role} was dropped"
        );
    }
    // The live lease's role logs in again once its VALID UNTIL is back.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"ALTER ROLE "{owned}" VALID UNTIL 'infinity'"#
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    logs_in(&deps.pg, &owned, &password).await.unwrap();
}

/// Waits until no role named like `role` is left.
async fn until_gone(pg: &PgCluster, role: &str) {
    eventually(Duration::from_secs(30), || async {
        let left = pg.roles_like(role).await.map_err(|e| e.to_string())?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await
    .unwrap();
}
