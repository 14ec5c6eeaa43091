//! Cedar policy packs for Tether.
//!
//! A *pack* is a directory holding one Cedar schema (`*.cedarschema` or
//! `*.cedarschema.json`), any number of policy files (`*.cedar`) and an
//! optional `entities.json` with static entities. [`PolicyPack::load_dir`]
//! parses and **strictly** validates all of it against the schema; a policy
//! that fails is rejected with its file, line and Cedar's message.
//!
//! [`PolicyPack::evaluate`] answers one [`Query`] and fails closed: any
//! evaluation error is a deny, and a step-up `forbid`
//! (`@step_up("ciba")`) turns a deny into [`Outcome::ApprovalRequired`] only
//! when it is the sole reason for the deny and the same request with
//! `context.approval.granted = true` would be allowed.
//!
//! ```
//! use tether_policy::{PolicyPack, Query, Limits, Outcome, PackSources};
//!
//! let pack = PolicyPack::from_sources(PackSources {
//!     schema: ("schema.cedarschema".into(), r#"
//!         entity User;
//!         entity Doc;
//!         action "read" appliesTo { principal: User, resource: Doc };
//!     "#.into()),
//!     policies: vec![("p.cedar".into(), r#"
//!         @id("users-read") permit(principal, action == Action::"read", resource);
//!     "#.into())],
//!     entities: None,
//!     source: "inline".into(),
//! })?;
//! let query = Query {
//!     principal: ("User", "alice"),
//!     action: ("Action", "read"),
//!     resource: ("Doc", "1"),
//!     context_json: "",
//!     entities_json: "",
//! };
//! let decision = pack.evaluate(&query, &Limits::default())?;
//! assert_eq!(decision.outcome, Outcome::Allow);
//! assert_eq!(decision.policy_ids, vec!["users-read".to_string()]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cases;
mod eval;
mod fast;
mod pack;
mod step_up;

pub use cases::{CaseFile, CaseResult, Expected, TestCase, Uid};
pub use eval::{Decision, EvalError, Limits, Outcome, Query, RequestError, StepUp};
pub use fast::reject_duplicate_keys;
pub use pack::{LoadError, PackSources, PackStats, PolicyPack, Problem};
pub use step_up::sanitize_binding_message;
