//! An OpenID CIBA Core 1.0 client, poll and ping delivery (no maintained
//! Rust CIBA client exists).
//!
//! - [`CibaConfig`]: the IdP (endpoints from its OIDC discovery document),
//!   this client's id and authentication (`private_key_jwt` per RFC 7523 or
//!   `client_secret_basic`), the delivery mode (`push` is refused: FAPI-CIBA
//!   forbids it), scope, expiry and ID-token algorithms.
//! - [`BindingMessage`]: the sentence shown on the user's device, sanitized
//!   as the PDP sanitizes it, with a random [`ConfirmationCode`] the agent's
//!   own UI shows too (number matching).
//! - [`CibaClient::start`]: the backchannel authentication request; in ping
//!   mode it returns the per-request [`NotificationToken`] (store only its
//!   [`NotificationTokenHash`]).
//! - [`PollState`]: the polling state machine of one request, a pure
//!   function of (token-endpoint answer, now), persistable so that a ticket
//!   store can resume after a restart. [`CibaClient::poll_once`] and
//!   [`CibaClient::wait`] are the thin async driver around it.
//! - [`Outcome`]: an approval counts only after the ID token is verified
//!   (signature against the IdP's JWKS, `iss`, `aud` = this client, `exp`)
//!   and its `sub` is the requested user; an approval given with another
//!   account is [`Outcome::ApprovedByOtherUser`], never an approval.
//!
//! No client secret, assertion, notification token or ID token reaches a
//! log line, an error message or a `Debug` output.
//!
//! ```no_run
//! # async fn example(config: tether_ciba_orchestrator::ciba::CibaConfig)
//! # -> Result<(), tether_ciba_orchestrator::ciba::CibaError> {
//! use tether_ciba_orchestrator::ciba::{AuthenticationRequest, CibaClient, Sentence};
//!
//! let client = CibaClient::new(&config)?;
//! let message = client.binding_message(Sentence::Policy("Offboard employee 1042?"))?;
//! // show message.code() in the agent's UI
//! let started = client
//!     .start(&AuthenticationRequest {
//!         user: "alice",
//!         binding_message: &message,
//!         requested_expiry: None,
//!     })
//!     .await?;
//! let outcome = client.wait(started.pending).await;
//! assert!(!outcome.is_approved() || outcome.approver() == Some("alice"));
//! # Ok(())
//! # }
//! ```

mod auth;
mod binding;
mod client;
mod config;
mod error;
mod notification;
mod outcome;
mod poll;

pub use auth::Secret;
pub use binding::{BindingMessage, ConfirmationCode, Sentence};
pub use client::{AuthReqId, AuthenticationRequest, CibaClient, IdToken, PendingRequest, Started};
pub use config::{CibaConfig, ClientAuthConfig, DeliveryMode, DeliveryModeSetting, HttpSettings};
pub use error::CibaError;
pub use notification::{NotificationToken, NotificationTokenHash, bearer_token};
pub use outcome::{Approval, ExpiredBy, Failure, Outcome};
pub use poll::{DEFAULT_INTERVAL, Due, PollState, SLOW_DOWN_STEP, TokenAnswer, Transition};
