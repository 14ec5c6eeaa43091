//! The token exchange itself (RFC 8693), shared by the gRPC and HTTP
//! interfaces. Nothing is minted unless every check passes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tether_runtime::clip;
use tether_token::{
    Actor, DelegatedClaims, DpopRequest, KeyRing, TOKEN_TYPE_AT_JWT, TokenError, TypRule,
    VerifyPolicy, peek_issuer, unix_now, verify, verify_dpop_proof,
};

use crate::agents::{Agent, AgentRegistry};
use crate::config::Config;
use crate::error::{ExchangeError, OAuthCode};
use crate::issuers::{SubjectKind, TrustedIssuers};
use crate::store::{SessionRecord, Store, UsedAssertion};

pub use tether_runtime::clock::unix_now_ms;

pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_ID: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

const MAX_AUDIENCE_BYTES: usize = 512;
const MAX_SCOPE_BYTES: usize = 1024;
const MAX_SCOPE_TOKENS: usize = 64;
const MAX_INTENT_BYTES: usize = 8 * 1024;
const MAX_REASON_BYTES: usize = 256;
/// How old a DPoP proof may be (RFC 9449 §11.1: seconds, not minutes).
const DPOP_MAX_AGE: Duration = Duration::from_secs(60);
/// What an agent's assertion is called in errors, by its use.
const ACTOR_TOKEN: &str = "actor token";
const CLIENT_ASSERTION: &str = "client assertion";

/// An exchange request, transport-neutral.
#[derive(Debug, Default, Clone)]
pub struct ExchangeInput {
    pub subject_token: String,
    pub subject_token_type: String,
    pub actor_token: String,
    pub actor_token_type: String,
    pub audience: String,
    pub scope: String,
    pub requested_token_type: String,
    pub authorization_details: String,
    /// The request's RFC 9449 `DPoP` header (HTTP only): the proof of
    /// possession a sender-constrained subject token needs.
    pub dpop_proof: Option<String>,
}

/// A minted delegated token.
#[derive(Debug, Clone)]
pub struct Minted {
    pub access_token: String,
    pub claims: DelegatedClaims,
    pub session_expires_at: i64,
}

/// What introspection reveals about an active token.
#[derive(Debug, Clone)]
pub struct Introspection {
    pub claims: DelegatedClaims,
    pub session_expires_at: i64,
}

/// Holds everything an exchange needs.
#[derive(Debug)]
pub struct Exchanger {
    issuer: String,
    token_endpoint: String,
    max_lifetime: i64,
    max_depth: usize,
    leeway: Duration,
    max_token_bytes: usize,
    max_assertion_lifetime: Duration,
    issuers: TrustedIssuers,
    agents: AgentRegistry,
    spiffe: Option<(String, crate::spiffe::BundleKeys)>,
    ring: Arc<KeyRing>,
    store: Store,
    /// How tokens this service minted are verified (built once).
    own_tokens: VerifyPolicy,
}

/// An authenticated caller of `/introspect` and `/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OAuthClient {
    /// A registered agent (`private_key_jwt`): its own tokens only.
    Agent(String),
    /// An allowed Tether service (`tls_client_auth`, its SPIFFE ID): any
    /// token.
    Service(Arc<str>),
}

impl OAuthClient {
    /// Whether this client may see and end the session of a token: an agent
    /// only when it is the token's current actor (`act.sub`).
    pub fn may_manage(&self, claims: &DelegatedClaims) -> bool {
        match self {
            Self::Agent(id) => claims.act.sub == *id,
            Self::Service(_) => true,
        }
    }
}

impl std::fmt::Display for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Agent(id) => write!(f, "agent:{id}"),
            Self::Service(id) => f.write_str(id),
        }
    }
}

/// Who proved themselves with the actor token.
struct ProvenActor {
    /// `act.sub`: the agent id, or its SPIFFE id.
    sub: String,
    agent: Arc<Agent>,
    /// The assertion's single-use id, recorded with the exchange's other
    /// writes (none for a JWT-SVID).
    used: Option<UsedAssertion>,
}

/// The user, from a verified subject token.
struct Subject {
    /// The IdP that authenticated the user.
    idp: String,
    sub: String,
    exp: i64,
    scopes: Option<Vec<String>>,
    groups: Vec<String>,
    user: Map<String, Value>,
    /// The delegation chain the subject token carries: an IdP's `act`, or
    /// a re-exchanged delegated token's.
    act: Option<Actor>,
    /// Set when the subject token is one of ours (re-exchange).
    parent: Option<DelegatedClaims>,
    /// Its RFC 7800 confirmation (`cnf`): whom it is bound to.
    cnf: Option<Value>,
}

impl Exchanger {
    pub fn new(
        config: &Config,
        ring: Arc<KeyRing>,
        store: Store,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let issuer = config.issuer.trim_end_matches('/').to_owned();
        let spiffe = match &config.spiffe {
            // Re-read when SPIRE rotates its keys (crate::spiffe).
            Some(s) => Some((
                s.trust_domain.clone(),
                crate::spiffe::BundleKeys::open(
                    &s.bundle_path,
                    Duration::from_secs(config.http.jwks_min_refresh_secs),
                )?,
            )),
            None => None,
        };
        let agents = AgentRegistry::new(config, http).map_err(anyhow::Error::msg)?;
        let mut own_tokens = VerifyPolicy::new(
            vec![issuer.clone()],
            agents.all_audiences(),
            vec![tether_token::Algorithm::ES256],
        );
        own_tokens.typ = TypRule::AccessToken;
        own_tokens.leeway = Duration::from_secs(config.tokens.leeway_secs);
        own_tokens.max_token_bytes = config.tokens.max_token_bytes;
        Ok(Self {
            own_tokens,
            token_endpoint: format!("{issuer}/token"),
            issuer,
            max_lifetime: i64::try_from(config.tokens.max_lifetime_secs)?,
            max_depth: config.tokens.max_delegation_depth,
            leeway: Duration::from_secs(config.tokens.leeway_secs),
            max_token_bytes: config.tokens.max_token_bytes,
            max_assertion_lifetime: Duration::from_secs(config.tokens.max_assertion_lifetime_secs),
            issuers: TrustedIssuers::new(config, http).map_err(anyhow::Error::msg)?,
            agents,
            spiffe,
            ring,
            store,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    pub fn ring_arc(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    /// The trusted IdPs (health watches their keys' staleness).
    pub fn issuers(&self) -> &TrustedIssuers {
        &self.issuers
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// RFC 8693 token exchange (counted by outcome, whichever transport
    /// asked).
    pub async fn exchange(&self, input: &ExchangeInput) -> Result<Minted, ExchangeError> {
        let result = self.exchange_checked(input).await;
        crate::metrics::exchange(&result);
        result
    }

    async fn exchange_checked(&self, input: &ExchangeInput) -> Result<Minted, ExchangeError> {
        let intent = self.check_input(input)?;
        // The actor first: its assertion is single-use, spent by this
        // request whatever its outcome.
        let actor = self.verify_actor(&input.actor_token).await?;
        let minted = self.exchange_as(&actor, intent, input).await;
        if minted.is_err()
            && let Some(used) = &actor.used
            && let Err(e) = self
                .store
                .consume_assertion(&used.issuer, &used.jti, used.keep_until_ms)
                .await
        {
            tracing::warn!(error = %e, agent = %used.issuer, "a refused exchange's assertion could not be recorded as used");
        }
        minted
    }

    /// The exchange once the actor is proven: the subject, the checks, the
    /// session and the token.
    async fn exchange_as(
        &self,
        actor: &ProvenActor,
        intent: Option<Value>,
        input: &ExchangeInput,
    ) -> Result<Minted, ExchangeError> {
        let subject = self
            .verify_subject(&input.subject_token, &input.subject_token_type)
            .await?;

        self.check_possession(subject.cnf.as_ref(), input).await?;
        if subject.parent.is_some() && intent.is_some() {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidRequest,
                "`authorization_details` must be empty when re-exchanging a delegated token (the intent is inherited)",
            ));
        }
        if subject.parent.is_none() && intent.is_none() {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidRequest,
                "`authorization_details` (the agent's declared intent) is required",
            ));
        }
        if let Some(parent) = &subject.parent {
            self.check_delegation(parent, &actor.agent.id)?;
        }
        if !actor
            .agent
            .may_act_for(&subject.idp, &subject.sub, &subject.groups)
        {
            return Err(ExchangeError::oauth(
                OAuthCode::UnauthorizedClient,
                format!("agent `{}` may not act for this user", actor.agent.id),
            ));
        }
        if !actor.agent.audiences.iter().any(|a| a == &input.audience) {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidTarget,
                format!(
                    "agent `{}` may not get audience `{}`",
                    actor.agent.id,
                    clip(&input.audience)
                ),
            ));
        }
        let scope = grant_scope(&input.scope, subject.scopes.as_deref(), &actor.agent.scopes)?;

        let now = unix_now();
        // The new actor goes on top of the chain the subject token carries
        // (RFC 8693 §4.1), never in its place; the limit counts it all.
        let act = Actor {
            sub: actor.sub.clone(),
            act: subject.act.clone().map(Box::new),
        };
        if act.depth() > self.max_depth {
            return Err(ExchangeError::oauth(
                OAuthCode::UnauthorizedClient,
                format!(
                    "delegation chain would be {} deep, the limit is {}",
                    act.depth(),
                    self.max_depth
                ),
            ));
        }
        let exp = (now + self.max_lifetime).min(subject.exp);
        if exp <= now {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidGrant,
                "subject token has expired",
            ));
        }
        let (sid, session_expires_at, new_session) = match &subject.parent {
            Some(parent) => {
                let session = self.live_session(&parent.sid, now).await?;
                (parent.sid.clone(), session.expires_at_ms / 1000, None)
            }
            None => {
                let sid = format!("s_{}", uuid::Uuid::new_v4().simple());
                let record = SessionRecord {
                    sid: sid.clone(),
                    user_issuer: subject.idp.clone(),
                    sub: subject.sub.clone(),
                    agent: actor.agent.id.clone(),
                    audience: input.audience.clone(),
                    scope: scope.clone(),
                    intent: intent.as_ref().map(Value::to_string).unwrap_or_default(),
                    created_at_ms: now * 1000,
                    expires_at_ms: exp * 1000,
                    revoked_at_ms: None,
                    revoke_reason: None,
                };
                (sid, exp, Some(record))
            }
        };
        // One commit: the assertion is spent and the session exists, or
        // neither (a concurrent replay of the assertion loses here).
        if !self
            .store
            .record_exchange(actor.used.as_ref(), new_session.as_ref())
            .await?
        {
            return Err(replayed(ACTOR_TOKEN));
        }
        let exp = exp.min(session_expires_at);
        let claims = DelegatedClaims {
            iss: self.issuer.clone(),
            sub: subject.sub,
            aud: input.audience.clone(),
            exp,
            iat: now,
            nbf: None,
            jti: uuid::Uuid::new_v4().to_string(),
            sid,
            scope,
            act,
            client_id: actor.agent.id.clone(),
            authorization_details: intent.or_else(|| {
                subject
                    .parent
                    .as_ref()
                    .and_then(|p| p.authorization_details.clone())
            }),
            user: subject.user,
        };
        let key = self
            .ring
            .current()
            .map_err(|e| ExchangeError::Internal(e.to_string()))?;
        let access_token = key
            .sign(TOKEN_TYPE_AT_JWT, &claims)
            .map_err(|e| ExchangeError::Internal(e.to_string()))?;
        tracing::info!(
            session.id = %claims.sid,
            agent = %claims.client_id,
            act_depth = claims.act.depth(),
            audience = %claims.aud,
            expires_in = claims.exp - now,
            "delegated token minted"
        );
        Ok(Minted {
            access_token,
            claims,
            session_expires_at,
        })
    }

    /// A sender-constrained subject token (RFC 7800 `cnf`) is accepted
    /// only with proof that the caller holds its key: a DPoP proof (RFC
    /// 9449) whose key's thumbprint is `cnf.jkt`, used once. A stolen bound
    /// token must not work as a bearer token. Certificate-bound tokens
    /// (`x5t#S256`, RFC 8705) are refused: this server accepts only Tether's
    /// own certificates, so an agent cannot prove it holds the one the IdP
    /// bound the token to.
    async fn check_possession(
        &self,
        cnf: Option<&Value>,
        input: &ExchangeInput,
    ) -> Result<(), ExchangeError> {
        let Some(cnf) = cnf else {
            return Ok(());
        };
        let rejected = |why: &str| {
            ExchangeError::oauth(
                OAuthCode::InvalidGrant,
                format!("subject token rejected: {why}"),
            )
        };
        let jkt = match (cnf.get("jkt"), cnf.get("x5t#S256")) {
            (Some(Value::String(jkt)), None) if !jkt.is_empty() => jkt,
            (_, Some(_)) => {
                return Err(rejected(
                    "it is bound to a client certificate (`cnf.x5t#S256`), whose possession this server cannot check; ask the IdP for a DPoP-bound or bearer token",
                ));
            }
            _ => {
                return Err(rejected(
                    "its `cnf` names no confirmation method this server checks (`jkt`)",
                ));
            }
        };
        let Some(proof) = &input.dpop_proof else {
            return Err(rejected(
                "it is sender-constrained (`cnf.jkt`): exchange it at /token with a DPoP proof of its key in the `DPoP` header (RFC 9449)",
            ));
        };
        let request = DpopRequest {
            htm: "POST",
            htu: &self.token_endpoint,
            token: &input.subject_token,
            max_age: DPOP_MAX_AGE,
            leeway: self.leeway,
        };
        let dpop_error =
            |e: TokenError| ExchangeError::oauth(OAuthCode::InvalidDpopProof, e.to_string());
        let verified = verify_dpop_proof(proof, &request).map_err(dpop_error)?;
        if verified.jkt != *jkt {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidDpopProof,
                "DPoP proof rejected: its key is not the one the subject token is bound to (`cnf.jkt`)",
            ));
        }
        let keep_until = verified
            .iat
            .saturating_add(i64::try_from((DPOP_MAX_AGE + self.leeway).as_secs()).unwrap_or(0))
            .saturating_add(1)
            .saturating_mul(1000);
        let replay_scope = format!("dpop:{}", verified.jkt);
        if !self
            .store
            .consume_assertion(&replay_scope, &verified.jti, keep_until)
            .await?
        {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidDpopProof,
                "DPoP proof rejected: it was already used (`jti` replay)",
            ));
        }
        Ok(())
    }

    /// Sub-agent delegation: the agent acting in `parent` must list `to`
    /// in its `may_delegate_to`. Being registered (or allowed to act for
    /// the same user) is not enough: the chain grows only where its
    /// current agent chose to extend it.
    fn check_delegation(&self, parent: &DelegatedClaims, to: &str) -> Result<(), ExchangeError> {
        let allowed = self
            .agents
            .get(&parent.client_id)
            .is_some_and(|from| from.may_delegate_to(to));
        if allowed {
            Ok(())
        } else {
            Err(ExchangeError::oauth(
                OAuthCode::UnauthorizedClient,
                format!(
                    "agent `{}` may not delegate to agent `{}` (its `may_delegate_to`)",
                    clip(&parent.client_id),
                    clip(to)
                ),
            ))
        }
    }

    /// Field checks before any token is looked at. Returns the parsed intent.
    fn check_input(&self, input: &ExchangeInput) -> Result<Option<Value>, ExchangeError> {
        let bad = |m: String| Err(ExchangeError::oauth(OAuthCode::InvalidRequest, m));
        if input.subject_token.is_empty() {
            return bad(
                "`subject_token` is required (the agent's own identity is never used in its place)"
                    .into(),
            );
        }
        if input.subject_token_type != TOKEN_TYPE_ACCESS
            && input.subject_token_type != TOKEN_TYPE_ID
        {
            return bad(format!(
                "`subject_token_type` must be `{TOKEN_TYPE_ACCESS}` or `{TOKEN_TYPE_ID}`, got `{}`",
                clip(&input.subject_token_type)
            ));
        }
        if input.actor_token.is_empty() {
            return bad("`actor_token` (the agent's assertion) is required".into());
        }
        if input.actor_token_type != TOKEN_TYPE_JWT {
            return bad(format!(
                "`actor_token_type` must be `{TOKEN_TYPE_JWT}`, got `{}`",
                clip(&input.actor_token_type)
            ));
        }
        for (name, token) in [
            ("subject_token", &input.subject_token),
            ("actor_token", &input.actor_token),
        ] {
            if token.len() > self.max_token_bytes {
                return bad(format!(
                    "`{name}` is {} bytes, the limit is {}",
                    token.len(),
                    self.max_token_bytes
                ));
            }
        }
        if !input.requested_token_type.is_empty() && input.requested_token_type != TOKEN_TYPE_ACCESS
        {
            return bad(format!(
                "`requested_token_type` must be `{TOKEN_TYPE_ACCESS}`, got `{}`",
                clip(&input.requested_token_type)
            ));
        }
        if input.audience.is_empty() {
            return bad("`audience` is required (exactly one)".into());
        }
        if input.audience.len() > MAX_AUDIENCE_BYTES || input.audience.contains(char::is_whitespace)
        {
            return bad("`audience` must be one value of at most 512 bytes".into());
        }
        if input.scope.len() > MAX_SCOPE_BYTES
            || input.scope.split_ascii_whitespace().count() > MAX_SCOPE_TOKENS
            || !input
                .scope
                .chars()
                .all(|c| c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\'))
        {
            return bad(
                "`scope` must be at most 64 space-separated tokens (1 KiB) of printable ASCII"
                    .into(),
            );
        }
        if input.authorization_details.is_empty() {
            return Ok(None);
        }
        if input.authorization_details.len() > MAX_INTENT_BYTES {
            return bad(format!(
                "`authorization_details` is over {MAX_INTENT_BYTES} bytes"
            ));
        }
        let intent: Value = serde_json::from_str(&input.authorization_details).map_err(|e| {
            ExchangeError::oauth(
                OAuthCode::InvalidRequest,
                format!("`authorization_details` is not JSON: {e}"),
            )
        })?;
        let valid = intent.as_array().is_some_and(|items| {
            !items.is_empty()
                && items.iter().all(|i| {
                    i.get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| !t.is_empty())
                })
        });
        if !valid {
            return bad("`authorization_details` must be a non-empty JSON array of objects with a string `type` (RFC 9396)".into());
        }
        Ok(Some(intent))
    }

    async fn verify_actor(&self, token: &str) -> Result<ProvenActor, ExchangeError> {
        let claims =
            unverified_claims(token, self.max_token_bytes).map_err(ExchangeError::actor)?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if sub.starts_with("spiffe://") {
            return self.verify_svid(token, &sub).await;
        }
        let (agent, used) = self
            .verify_agent_assertion(token, &self.own_audiences(), ACTOR_TOKEN)
            .await?;
        // Its single use is recorded, atomically, when the exchange commits
        // (a replay is refused there), or when the exchange is refused.
        Ok(ProvenActor {
            sub: agent.id.clone(),
            agent,
            used: Some(used),
        })
    }

    /// What an actor token's `aud` may be: this server's issuer identifier
    /// (draft-ietf-oauth-rfc7523bis), or its token endpoint URL for
    /// compatibility; always exactly one value.
    fn own_audiences(&self) -> Vec<String> {
        vec![self.issuer.clone(), self.token_endpoint.clone()]
    }

    /// An agent's RFC 7523 assertion, the one verifier for actor tokens and
    /// client authentication: `iss` = `sub` = a registered agent, signed by
    /// one of its keys with an algorithm it is registered for, `aud`
    /// exactly one value and one of `audiences`, unexpired and not too
    /// long-lived, with a single-use `jti`, returned for the caller to
    /// record. `what` names the assertion in errors.
    async fn verify_agent_assertion(
        &self,
        token: &str,
        audiences: &[String],
        what: &str,
    ) -> Result<(Arc<Agent>, UsedAssertion), ExchangeError> {
        let reject = |m: &str| {
            ExchangeError::oauth(OAuthCode::InvalidClient, format!("{what} rejected: {m}"))
        };
        let claims = unverified_claims(token, self.max_token_bytes)
            .map_err(|e| ExchangeError::assertion(what, e))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(agent) = self.agents.get(iss) else {
            return Err(reject(&format!("agent `{}` is not registered", clip(iss))));
        };
        let mut policy = VerifyPolicy::new(
            vec![agent.id.clone()],
            audiences.to_vec(),
            agent.algorithms.clone(),
        );
        policy.typ = TypRule::JwtOrAbsent;
        policy.leeway = self.leeway;
        policy.max_token_bytes = self.max_token_bytes;
        policy.max_lifetime = Some(self.max_assertion_lifetime);
        policy.single_audience = true;
        let verified = verify::<Map<String, Value>, _>(token, &policy, &agent.keys)
            .await
            .map_err(|e| ExchangeError::assertion(what, e))?;
        let claims = verified.claims;
        if claims.get("sub").and_then(Value::as_str) != Some(agent.id.as_str()) {
            return Err(reject("`sub` must equal `iss` (RFC 7523)"));
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if jti.is_empty() || jti.len() > 256 {
            return Err(reject("a single-use `jti` is required"));
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .unwrap_or_default();
        // Kept one second past the last instant the assertion verifies
        // (whole-second `exp` plus leeway), so no replay window opens.
        let keep_until = exp
            .saturating_add(i64::try_from(self.leeway.as_secs()).unwrap_or(0))
            .saturating_add(1)
            .saturating_mul(1000);
        let used = UsedAssertion {
            issuer: agent.id.clone(),
            jti: jti.to_owned(),
            keep_until_ms: keep_until,
        };
        Ok((Arc::clone(agent), used))
    }

    /// RFC 7523 client authentication (`private_key_jwt`) at the endpoint
    /// `path` (`/introspect`, `/revoke`): the agent's assertion, verified
    /// as actor tokens are, with `aud` naming this server (its issuer, its
    /// token endpoint or the endpoint called). `client_id`, when given,
    /// must name the same agent. JWT-SVIDs are refused here: they carry no
    /// single-use `jti`, so a captured one would authenticate again.
    pub async fn authenticate_agent(
        &self,
        assertion: &str,
        client_id: Option<&str>,
        path: &str,
    ) -> Result<OAuthClient, ExchangeError> {
        let reject = |m: String| {
            ExchangeError::oauth(
                OAuthCode::InvalidClient,
                format!("{CLIENT_ASSERTION} rejected: {m}"),
            )
        };
        let claims = unverified_claims(assertion, self.max_token_bytes)
            .map_err(|e| ExchangeError::assertion(CLIENT_ASSERTION, e))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if iss.starts_with("spiffe://") || sub.starts_with("spiffe://") {
            return Err(reject(
                "JWT-SVIDs do not authenticate clients; sign a `private_key_jwt` assertion".into(),
            ));
        }
        if let Some(client_id) = client_id
            && client_id != iss
        {
            return Err(reject(format!(
                "`client_id` `{}` is not the assertion's `iss`",
                clip(client_id)
            )));
        }
        let audiences = [
            self.issuer.clone(),
            self.token_endpoint.clone(),
            format!("{}{path}", self.issuer),
        ];
        let (agent, used) = self
            .verify_agent_assertion(assertion, &audiences, CLIENT_ASSERTION)
            .await?;
        if !self
            .store
            .consume_assertion(&used.issuer, &used.jti, used.keep_until_ms)
            .await?
        {
            return Err(replayed(CLIENT_ASSERTION));
        }
        Ok(OAuthClient::Agent(agent.id.clone()))
    }

    /// A SPIFFE JWT-SVID: signed by the trust bundle, `sub` a registered
    /// SPIFFE id in the trust domain, `aud` one value naming this server (as
    /// for assertions). SVIDs are reusable within their (short) lifetime,
    /// so no `jti` is required.
    async fn verify_svid(&self, token: &str, sub: &str) -> Result<ProvenActor, ExchangeError> {
        let reject = |m: String| {
            ExchangeError::oauth(
                OAuthCode::InvalidClient,
                format!("actor token rejected: {m}"),
            )
        };
        let Some((domain, bundle)) = &self.spiffe else {
            return Err(reject(
                "JWT-SVIDs are not accepted (no trust bundle configured)".into(),
            ));
        };
        let prefix = format!("spiffe://{domain}/");
        if !sub.starts_with(&prefix) {
            return Err(reject(format!(
                "SPIFFE id is not in trust domain `{domain}`"
            )));
        }
        let Some(agent) = self.agents.by_spiffe_id(sub) else {
            return Err(reject(format!(
                "SPIFFE id `{}` is not a registered agent",
                clip(sub)
            )));
        };
        // JWT-SVIDs carry no fixed issuer: accept the token's own `iss`
        // only after the signature proves it came from the bundle.
        let iss = peek_issuer(token, self.max_token_bytes).unwrap_or_default();
        let mut policy =
            VerifyPolicy::new(vec![iss], self.own_audiences(), agent.algorithms.clone());
        policy.single_audience = true;
        policy.typ = TypRule::OneOf(vec![String::new(), "JWT".into(), "JOSE".into()]);
        policy.leeway = self.leeway;
        policy.max_token_bytes = self.max_token_bytes;
        policy.max_lifetime = Some(self.max_assertion_lifetime);
        policy.require_iat = false;
        verify::<Map<String, Value>, _>(token, &policy, bundle)
            .await
            .map_err(ExchangeError::actor)?;
        Ok(ProvenActor {
            sub: sub.to_owned(),
            agent: Arc::clone(agent),
            used: None,
        })
    }

    async fn verify_subject(
        &self,
        token: &str,
        token_type: &str,
    ) -> Result<Subject, ExchangeError> {
        let iss = peek_issuer(token, self.max_token_bytes).map_err(ExchangeError::subject)?;
        if iss == self.issuer {
            if token_type != TOKEN_TYPE_ACCESS {
                return Err(ExchangeError::oauth(
                    OAuthCode::InvalidRequest,
                    "a Tether delegated token has `subject_token_type` access_token",
                ));
            }
            return self.verify_parent(token).await;
        }
        let Some(entry) = self.issuers.get(&iss) else {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidGrant,
                format!(
                    "subject token rejected: issuer `{}` is not trusted",
                    clip(&iss)
                ),
            ));
        };
        let kind = if token_type == TOKEN_TYPE_ACCESS {
            SubjectKind::AccessToken
        } else {
            SubjectKind::IdToken
        };
        let rejected = |why: String| {
            ExchangeError::oauth(
                OAuthCode::InvalidGrant,
                format!("subject token rejected: {why}"),
            )
        };
        let policy = entry
            .policy(kind)
            .map_err(|why| ExchangeError::oauth(OAuthCode::InvalidRequest, why))?;
        let keys = entry.keys().await.map_err(ExchangeError::subject)?;
        let claims = verify::<Map<String, Value>, _>(token, &policy, keys)
            .await
            .map_err(ExchangeError::subject)?
            .claims;
        let user = entry.user(&claims, kind).map_err(rejected)?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .unwrap_or_default();
        Ok(Subject {
            idp: iss,
            sub,
            exp,
            scopes: Some(user.scopes),
            groups: user.groups,
            user: user.attributes,
            act: user.act,
            parent: None,
            cnf: claims.get("cnf").cloned(),
        })
    }

    /// A delegated token presented for re-exchange to a sub-agent.
    async fn verify_parent(&self, token: &str) -> Result<Subject, ExchangeError> {
        let claims = self
            .verify_own(token)
            .await
            .map_err(ExchangeError::subject)?;
        self.live_session(&claims.sid, unix_now()).await?;
        let groups = claims
            .user
            .get("groups")
            .and_then(Value::as_array)
            .map(|g| {
                g.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let idp = claims
            .user
            .get("idp")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Subject {
            idp,
            sub: claims.sub.clone(),
            exp: claims.exp,
            scopes: Some(claims.scopes().map(str::to_owned).collect()),
            groups,
            user: claims.user.clone(),
            act: Some(claims.act.clone()),
            parent: Some(claims),
            cnf: None,
        })
    }

    /// Verifies a token this service minted (signature, claims), not its
    /// session state.
    pub async fn verify_own(&self, token: &str) -> Result<DelegatedClaims, TokenError> {
        Ok(
            verify::<DelegatedClaims, _>(token, &self.own_tokens, self.ring.as_ref())
                .await?
                .claims,
        )
    }

    async fn live_session(&self, sid: &str, now: i64) -> Result<SessionRecord, ExchangeError> {
        let session = self.store.session(sid).await?.ok_or_else(|| {
            ExchangeError::oauth(
                OAuthCode::InvalidGrant,
                "subject token rejected: unknown session",
            )
        })?;
        if session.revoked_at_ms.is_some() {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidGrant,
                "subject token rejected: session has been revoked",
            ));
        }
        if session.expires_at_ms <= now * 1000 {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidGrant,
                "subject token rejected: session has ended",
            ));
        }
        Ok(session)
    }

    /// RFC 7662 for an authenticated client: `None` for anything that is
    /// not an active delegated token, or not one `client` may see (RFC 7662
    /// §2.2: a token the client may not see reveals nothing).
    pub async fn introspect_for(
        &self,
        client: &OAuthClient,
        token: &str,
    ) -> Result<Option<Introspection>, ExchangeError> {
        let Some(found) = self.introspect(token).await? else {
            return Ok(None);
        };
        if !client.may_manage(&found.claims) {
            tracing::info!(
                client = %client,
                session.id = %found.claims.sid,
                "introspection of another agent's token answered inactive"
            );
            return Ok(None);
        }
        Ok(Some(found))
    }

    /// RFC 7662: `None` for anything that is not an active delegated token.
    pub async fn introspect(&self, token: &str) -> Result<Option<Introspection>, ExchangeError> {
        let Ok(claims) = self.verify_own(token).await else {
            return Ok(None);
        };
        let Some(session) = self.store.session(&claims.sid).await? else {
            return Ok(None);
        };
        if session.revoked_at_ms.is_some() || session.expires_at_ms <= unix_now() * 1000 {
            return Ok(None);
        }
        Ok(Some(Introspection {
            session_expires_at: session.expires_at_ms / 1000,
            claims,
        }))
    }

    /// Revokes a session. `None` when it never existed.
    pub async fn revoke_session(
        &self,
        sid: &str,
        reason: &str,
    ) -> Result<Option<(i64, bool)>, ExchangeError> {
        if sid.is_empty() || sid.len() > 128 {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidRequest,
                "`sid` must be 1 to 128 bytes",
            ));
        }
        if reason.len() > MAX_REASON_BYTES {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidRequest,
                "`reason` is over 256 bytes",
            ));
        }
        let result = self.store.revoke(sid, reason, unix_now_ms()).await?;
        if let Some((_, false)) = result {
            tracing::info!(session.id = %sid, reason, "session revoked");
        }
        Ok(result)
    }

    /// RFC 7009: revokes the session of a delegated token `client` may
    /// manage. Unknown or invalid tokens, and other agents' tokens, are
    /// left alone (the endpoint answers 200 either way, RFC 7009 §2.2).
    pub async fn revoke_token(
        &self,
        client: &OAuthClient,
        token: &str,
    ) -> Result<(), ExchangeError> {
        let Ok(claims) = self.verify_own(token).await else {
            return Ok(());
        };
        if !client.may_manage(&claims) {
            tracing::warn!(
                client = %client,
                session.id = %claims.sid,
                "revocation of another agent's token refused"
            );
            return Ok(());
        }
        self.revoke_session(&claims.sid, "revoked via RFC 7009 endpoint")
            .await?;
        Ok(())
    }
}

/// Scope granted: the requested set when it is within both the user's and
/// the agent's; the intersection when nothing was requested.
fn grant_scope(
    requested: &str,
    user: Option<&[String]>,
    agent: &[String],
) -> Result<String, ExchangeError> {
    let user = user.unwrap_or(&[]);
    let requested: Vec<&str> = requested.split_ascii_whitespace().collect();
    if requested.is_empty() {
        let granted: Vec<&str> = user
            .iter()
            .map(String::as_str)
            .filter(|s| agent.iter().any(|a| a == s))
            .collect();
        return Ok(granted.join(" "));
    }
    for scope in &requested {
        if !user.iter().any(|u| u == scope) {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidScope,
                format!("scope `{}` is wider than the user's", clip(scope)),
            ));
        }
        if !agent.iter().any(|a| a == scope) {
            return Err(ExchangeError::oauth(
                OAuthCode::InvalidScope,
                format!("scope `{}` is not allowed for this agent", clip(scope)),
            ));
        }
    }
    let mut granted = requested;
    granted.dedup();
    Ok(granted.join(" "))
}

/// Claims of an unverified token, only to route it to the right verifier.
fn unverified_claims(token: &str, limit: usize) -> Result<Map<String, Value>, TokenError> {
    use base64::Engine as _;
    if token.len() > limit {
        return Err(TokenError::Oversized {
            size: token.len(),
            limit,
        });
    }
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| TokenError::Malformed("expected 3 dot-separated parts".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed("payload is not base64url".into()))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed("payload is not a JSON object".into())),
    }
}

/// A single-use assertion presented again.
fn replayed(what: &str) -> ExchangeError {
    ExchangeError::oauth(
        OAuthCode::InvalidClient,
        format!("{what} rejected: assertion was already used (replay)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn scope_is_never_wider_than_user_or_agent() {
        let user = s(&["openid", "hr:read", "hr:write"]);
        let agent = s(&["hr:read", "hr:offboard"]);
        assert_eq!(grant_scope("", Some(&user), &agent).unwrap(), "hr:read");
        assert_eq!(
            grant_scope("hr:read", Some(&user), &agent).unwrap(),
            "hr:read"
        );
        assert!(matches!(
            grant_scope("hr:offboard", Some(&user), &agent),
            Err(ExchangeError::OAuth {
                code: OAuthCode::InvalidScope,
                ..
            })
        ));
        assert!(matches!(
            grant_scope("hr:write", Some(&user), &agent),
            Err(ExchangeError::OAuth {
                code: OAuthCode::InvalidScope,
                ..
            })
        ));
        assert_eq!(grant_scope("", None, &agent).unwrap(), "");
    }

    fn claims_acted_by(act: Actor) -> DelegatedClaims {
        DelegatedClaims {
            iss: "https://tether.example".into(),
            sub: "alice".into(),
            aud: "https://facade".into(),
            exp: 0,
            iat: 0,
            nbf: None,
            jti: "j".into(),
            sid: "s_1".into(),
            scope: String::new(),
            act,
            client_id: "hr-assistant".into(),
            authorization_details: None,
            user: Map::new(),
        }
    }

    #[test]
    fn agents_manage_only_tokens_they_are_the_current_actor_of() {
        let agent = |id: &str| Actor {
            sub: id.into(),
            act: None,
        };
        let own = claims_acted_by(agent("hr-assistant"));
        let nested = claims_acted_by(Actor {
            sub: "report-writer".into(),
            act: Some(Box::new(agent("hr-assistant"))),
        });
        let hr = OAuthClient::Agent("hr-assistant".into());
        assert!(hr.may_manage(&own));
        assert!(
            !hr.may_manage(&nested),
            "an earlier actor in the chain is not the current one"
        );
        assert!(OAuthClient::Agent("report-writer".into()).may_manage(&nested));
        assert!(!OAuthClient::Agent("formatter".into()).may_manage(&own));
        let facade = OAuthClient::Service("spiffe://tether.local/tether/agent-facade".into());
        assert!(facade.may_manage(&own) && facade.may_manage(&nested));
    }
}
