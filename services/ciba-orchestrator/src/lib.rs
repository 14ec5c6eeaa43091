//! Tether's approval orchestrator: when the policy decision point answers
//! APPROVAL_REQUIRED, the session's user is asked out of band, on their own
//! device, with OpenID Connect Client-Initiated Backchannel Authentication
//! (CIBA Core 1.0), and only an answer verified end to end counts.
//!
//! In progress: this crate holds the CIBA client ([`ciba`]) that the ticket
//! and grant layer (the `tether.approval.v1.ApprovalOrchestrator` service)
//! will be built on. There is no service or binary yet.

pub mod ciba;
