//! JWT and JWKS for Tether.
//!
//! - [`verify`]: strict verification of any JWT against a [`VerifyPolicy`]:
//!   algorithms from configuration (never from the token), `iss`, `aud`,
//!   `exp`, `nbf`, `iat`, `typ`, a size limit, and refusal of `jku`, `x5u`,
//!   `x5c`, embedded `jwk` and any `crit` header.
//! - [`JwksCache`] (keys fetched from a URL, refreshed on an unknown `kid` at
//!   a bounded rate) and [`StaticKeys`] (keys from configuration).
//! - [`KeyRing`]: ES256 signing keys, generated or loaded, rotated with
//!   overlap, published as a JWKS.
//! - [`DelegatedClaims`] and [`DelegatedTokenVerifier`]: what other services
//!   use to check a delegated token locally, including whether its session
//!   was revoked.
//! - [`RevocationList`] kept current by [`spawn_revocation_sync`] from a
//!   [`RevocationFeed`] ([`GrpcRevocationFeed`]: the identity service's
//!   `ListRevokedSessions`): the piece every verifying service runs.
//! - [`verify_dpop_proof`]: RFC 9449 DPoP proofs, for sender-constrained
//!   (`cnf.jkt`) tokens.
//! - [`Sessions`]: the session a call acts for, from its `authorization:
//!   Bearer` delegated token ([`SessionsConfig`] is the `[sessions]` table).

mod claims;
mod delegated;
mod dpop;
mod error;
mod jwks;
mod jwks_metrics;
mod oidc_http;
mod revocation_sync;
mod session_id;
mod sessions;
mod signing;
mod verify;

pub use claims::{Actor, DelegatedClaims, TOKEN_TYPE_AT_JWT};
pub use delegated::{
    DelegatedTokenVerifier, RevocationCheck, RevocationList, RevocationPage, RevokedSession,
};
pub use dpop::{DPOP_TYP, DpopProof, DpopRequest, token_hash, verify_dpop_proof};
pub use error::TokenError;
pub use jsonwebtoken::jwk::JwkSet;
pub use jsonwebtoken::{Algorithm, DecodingKey};
pub use jwks::{JwksCache, KeySource, StaticKeys};
pub use oidc_http::{HttpError, idp_http_client, oidc_client};
pub use revocation_sync::{GrpcRevocationFeed, RevocationFeed, spawn_revocation_sync};
pub use session_id::{MAX_SESSION_ID_BYTES, SessionIdError, check_session_id};
pub use sessions::{Caller, SessionError, Sessions, SessionsConfig};
pub use signing::{KeyError, KeyRing, SigningKey};
pub use verify::{TypRule, Verified, VerifyPolicy, clip, peek_issuer, verify};

/// Seconds since the Unix epoch (the workspace's one clock).
pub use tether_runtime::clock::unix_now;
