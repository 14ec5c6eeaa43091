//! gRPC health tells the truth: NOT_SERVING while a service cannot do its
//! job (the PDP has no policy set, the issuer cannot log in to Vault) and
//! SERVING again once it can; on SIGTERM a real process reports
//! NOT_SERVING first, keeps serving through `server.shutdown_delay_secs`,
//! then drains and exits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::process::{Command, Stdio};
use std::time::Duration;

use tether_credential_issuer::VaultAuth;
use tether_integration_tests::issuer::{CredentialDeps, IssuerSandbox, SessionAuthority};
use tether_integration_tests::pdp::{PdpSandbox, hr_context, hr_request};
use tether_integration_tests::pki::TestPki;
use tether_integration_tests::{copy_dir, eventually, workspace_root};
use tether_proto::policy::v1::policy_decision_client::PolicyDecisionClient;
use tether_proto::policy::v1::{GetPolicySetRequest, LoadStatus};
use tether_runtime::client::InternalChannel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const BIN: &str = env!("CARGO_BIN_EXE_tether-services");
const PDP_SERVICE: &str = "tether.policy.v1.PolicyDecision";
const ISSUER_SERVICE: &str = "tether.credentials.v1.CredentialIssuer";
const IDENTITY_SERVICE: &str = "tether.identity.v1.IdentityExchange";

/// The status health reports for `service`, when the empty name ("the
/// server as a whole") reports the same; a disagreement (a change between
/// the two calls) is an error, so [`until`] asks again.
async fn status(channel: &InternalChannel, service: &str) -> Result<ServingStatus, String> {
    let mut client = HealthClient::new(channel.clone());
    let ask = |name: &str| HealthCheckRequest {
        service: name.to_owned(),
    };
    let named = client
        .check(ask(service))
        .await
        .map_err(|e| format!("{e:?}"))?
        .into_inner();
    let whole = client
        .check(ask(""))
        .await
        .map_err(|e| format!("{e:?}"))?
        .into_inner();
    if named.status != whole.status {
        return Err(format!(
            "`{service}` is {:?} but the server is {:?}",
            decode(&named),
            decode(&whole)
        ));
    }
    Ok(decode(&named))
}

fn decode(answer: &HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(answer.status).unwrap()
}

/// Waits until health reports `want` (polling, no fixed sleep).
async fn until(channel: &InternalChannel, service: &str, want: ServingStatus) {
    eventually(Duration::from_secs(30), || async {
        match status(channel, service).await {
            Ok(got) if got == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap_or_else(|last| panic!("health never reported {want:?}; last: {last}"));
}

// ---- the PDP: no policy set, no SERVING -----------------------------------

async fn pdp_not_serving_until_a_valid_pack_is_written(start_with: impl FnOnce(&std::path::Path)) {
    let pack = tempfile::tempdir().unwrap();
    start_with(pack.path());
    let pdp = PdpSandbox::builder()
        .pack(pack.path())
        .start()
        .await
        .unwrap();
    let channel = pdp.channel();
    assert_eq!(
        status(&channel, PDP_SERVICE).await.unwrap(),
        ServingStatus::NotServing
    );
    // Fail closed meanwhile: a decision is UNAVAILABLE, never an allow.
    let refused = pdp
        .client()
        .check(hr_request("read", &hr_context(10, None)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // A valid pack written into the watched directory is loaded.
    copy_dir(&workspace_root().join("examples/hr"), pdp.pack_dir()).unwrap();
    until(&channel, PDP_SERVICE, ServingStatus::Serving).await;
    pdp.client()
        .check(hr_request("read", &hr_context(10, None)))
        .await
        .unwrap();

    // A broken update afterwards keeps the last good set: still SERVING.
    std::fs::write(pdp.pack_dir().join("hr.cedar"), "permit(principal, action").unwrap();
    eventually(Duration::from_secs(30), || {
        let mut client = pdp.client();
        async move {
            let set = client
                .get_policy_set(GetPolicySetRequest {})
                .await?
                .into_inner();
            if set.last_load_status() == LoadStatus::Rejected {
                Ok(())
            } else {
                Err(tonic::Status::unavailable(
                    "the broken update is not read yet",
                ))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        status(&channel, PDP_SERVICE).await.unwrap(),
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn pdp_with_an_empty_policy_directory_is_not_serving_until_a_pack_loads() {
    pdp_not_serving_until_a_valid_pack_is_written(|_| {}).await;
}

#[tokio::test]
async fn pdp_with_a_broken_policy_pack_is_not_serving_until_a_valid_one_loads() {
    pdp_not_serving_until_a_valid_pack_is_written(|dir| {
        copy_dir(&workspace_root().join("examples/hr"), dir).unwrap();
        std::fs::write(dir.join("hr.cedar"), "forbid(principal, action").unwrap();
    })
    .await;
}

// ---- the issuer: NOT_SERVING while Vault refuses its login ---------------

#[tokio::test]
async fn issuer_is_not_serving_while_vault_refuses_its_login() {
    let (deps, auth) = tokio::join!(CredentialDeps::start(600), SessionAuthority::start());
    let deps = deps.expect("starting PostgreSQL and OpenBao (run `integration-tests/run.sh test`)");
    let auth = auth.expect("starting the test IdP and the identity exchange");
    let (role_id, secret_id) = deps.bao.setup_approle(600, 600).await.unwrap();
    // The issuer reads its AppRole secret from a file on every login (as
    // from a mounted Secret); it starts with one OpenBao refuses.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret-id");
    std::fs::write(&secret_file, "00000000-0000-0000-0000-000000000000").unwrap();
    let issuer = IssuerSandbox::builder(deps.bao.addr(), auth.identity())
        .auth(VaultAuth::Approle {
            mount: "approle".into(),
            role_id,
            secret_id: None,
            secret_id_file: Some(secret_file.clone()),
        })
        .start()
        .await
        .unwrap();
    let channel = auth
        .identity()
        .pki()
        .channel("agent-facade", issuer.addr(), "credential-issuer")
        .unwrap();
    assert_eq!(
        status(&channel, ISSUER_SERVICE).await.unwrap(),
        ServingStatus::NotServing
    );
    assert_eq!(issuer.vault_stats().0, 0, "no login succeeded");

    // The operator fixes the Secret: the background retry logs in.
    std::fs::write(&secret_file, &secret_id).unwrap();
    until(&channel, ISSUER_SERVICE, ServingStatus::Serving).await;
    assert!(issuer.vault_stats().0 >= 1);
}

// ---- the identity exchange: NOT_SERVING once its IdP's keys are stale ----

#[tokio::test]
async fn identity_exchange_is_not_serving_once_its_idps_keys_are_past_their_allowed_staleness() {
    let mut auth = SessionAuthority::start_with(|builder| builder.jwks_max_stale_secs(2))
        .await
        .expect("starting the test IdP and the identity exchange");
    let identity = auth.identity();
    let channel = identity
        .pki()
        .channel("agent-facade", identity.addr(), "identity-exchange")
        .unwrap();
    // Never fetched yet: not stale.
    assert_eq!(
        status(&channel, IDENTITY_SERVICE).await.unwrap(),
        ServingStatus::Serving
    );
    // An exchange fetches the IdP's keys.
    auth.session().await.unwrap();
    assert_eq!(
        status(&channel, IDENTITY_SERVICE).await.unwrap(),
        ServingStatus::Serving
    );

    // The IdP goes away: once the keys are older than the allowance and
    // cannot be fetched again, health says so.
    auth.idp_mut().stop().await.unwrap();
    until(&channel, IDENTITY_SERVICE, ServingStatus::NotServing).await;
}

// ---- a real process on SIGTERM -------------------------------------------

/// The PDP as a real process (its own `main`), mTLS, with a shutdown delay.
struct PdpProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
    channel: InternalChannel,
    _dir: tempfile::TempDir,
    _bin: tempfile::TempDir,
}

impl PdpProcess {
    async fn start(shutdown_delay_secs: u64, drain_timeout_secs: u64) -> Self {
        let pki = TestPki::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let link = bin.path().join("tether-policy-decision");
        std::os::unix::fs::symlink(BIN, &link).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tls = pki.tls("policy-decision").unwrap().to_toml_section();
        let config = dir.path().join("pdp.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_delay_secs = {shutdown_delay_secs}\ndrain_timeout_secs = {drain_timeout_secs}\n{tls}[policy]\ndir = \"{}\"\nwatch = false\n",
                workspace_root().join("examples/hr").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("pdp.log");
        let mut command = Command::new(&link);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TETHER_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let channel = pki
            .channel("agent-facade", addr, "policy-decision")
            .unwrap();
        let process = Self {
            child,
            log,
            channel,
            _dir: dir,
            _bin: bin,
        };
        until(&process.channel, PDP_SERVICE, ServingStatus::Serving).await;
        process
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (a guard against hanging, not a
    /// timing goal).
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        eventually(Duration::from_secs(60), || {
            let status = self.child.try_wait().unwrap();
            async move { status.ok_or("still running") }
        })
        .await
        .unwrap_or_else(|_| panic!("the process did not exit; log:\n{}", self.log()))
    }
}

impl Drop for PdpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_reports_not_serving_first_keeps_serving_through_the_delay_then_drains() {
    // A delay long enough that the checks below happen inside it.
    let mut pdp = PdpProcess::start(5, 10).await;
    let decisions = PolicyDecisionClient::new(pdp.channel.clone());
    decisions
        .clone()
        .check(hr_request("read", &hr_context(10, None)))
        .await
        .unwrap();

    pdp.sigterm();
    // NOT_SERVING while the port still answers…
    until(&pdp.channel, PDP_SERVICE, ServingStatus::NotServing).await;
    // …and a request arriving during the delay (sent by a load balancer
    // that has not yet seen the change) is still served.
    let served = decisions
        .clone()
        .check(hr_request("read", &hr_context(10, None)))
        .await;
    assert!(served.is_ok(), "{served:?}\n{}", pdp.log());

    let exit = pdp.exit_status().await;
    let log = pdp.log();
    assert!(exit.success(), "{exit:?}\n{log}");
    let delay_at = log
        .find("still serving until the shutdown delay passes")
        .unwrap_or_else(|| panic!("no shutdown delay in the log:\n{log}"));
    let drained_at = log
        .find("drained, stopped")
        .unwrap_or_else(|| panic!("not drained:\n{log}"));
    assert!(
        delay_at < drained_at,
        "the delay comes before the drain:\n{log}"
    );
}

/// A "Vault" that accepts connections and never answers: the issuer's
/// login (and anything else it asks) hangs until its own request timeout.
fn hung_vault() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[tokio::test]
async fn a_stop_with_work_hung_on_vault_is_cut_off_at_the_drain_deadline() {
    // The issuer as a real process whose Vault never answers (request
    // timeout 10 min): its login is in flight for the whole test. SIGTERM
    // must still end the process within `drain_timeout_secs`, not when
    // Vault gives up.
    let (_vault, vault_port) = hung_vault();
    let dir = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let link = bin.path().join("tether-credential-issuer");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, "not-a-real-token").unwrap();
    let config = dir.path().join("issuer.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
shutdown_delay_secs = 0
drain_timeout_secs = 2
[server.tls]
insecure_plaintext = true
[vault]
address = "http://127.0.0.1:{vault_port}"
request_timeout_ms = 600000
creation_timeout_ms = 600000
[vault.auth]
method = "token"
token_file = "{token}"
[store]
data_dir = "{data}"
[profiles.readonly]
vault_path = "database/creds/readonly"
max_ttl_secs = 600
[sessions]
token_issuer = "https://127.0.0.1:1"
audience = "https://tether.local/facade"
jwks_url = "https://127.0.0.1:1/.well-known/jwks.json"
identity_exchange = "https://127.0.0.1:1"
"#,
            token = token_file.display(),
            data = dir.path().display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("issuer.log");
    let mut command = Command::new(&link);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TETHER_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // Up once its port accepts and it has opened its registry: from then
    // on it waits on Vault (the start-up reconciler, the login).
    let started = eventually(Duration::from_secs(30), || {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && read_log().contains("lease registry ready");
        async move { if up { Ok(()) } else { Err("not up yet") } }
    })
    .await;
    assert!(started.is_ok(), "{started:?}; log:\n{}", read_log());
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // A guard against hanging, not a timing goal: without the deadline the
    // process waits out the 10-minute Vault timeout.
    let exit = eventually(Duration::from_secs(60), || {
        let status = child.try_wait().unwrap();
        async move { status.ok_or("still running") }
    })
    .await;
    let log_text = read_log();
    let _ = child.kill();
    let exit = exit.unwrap_or_else(|_| panic!("the issuer did not exit; log:\n{log_text}"));
    assert!(exit.success(), "{exit:?}\n{log_text}");
    assert!(
        log_text.contains("drain deadline passed with work still running")
            || log_text.contains("did not stop in time; aborting it"),
        "the hung work was cut off, and said so:\n{log_text}"
    );
    assert!(
        !log_text.contains("not-a-real-token"),
        "the Vault token is never logged"
    );
}
