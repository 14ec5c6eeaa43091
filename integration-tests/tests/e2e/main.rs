//! The end-to-end tests, one module per capability, linked into one test
//! binary: every module starts the real services and dependencies it
//! needs, and nextest runs each test in its own process. (One binary
//! instead of one per file keeps a clean build's target directory small.)

mod approvals;
mod approvals_logs;
mod approvals_refusals;
mod audit;
mod authzen;
mod ciba;
mod client;
mod demo;
mod deploy;
mod device_page;
mod error_mapping;
mod facade;
mod facade_audit;
mod facade_cancel;
mod facade_refusals;
mod facade_traces;
mod health;
mod identity;
mod identity_edge;
mod identity_idps;
mod identity_logs;
mod identity_replicas;
mod issuer;
mod issuer_kill;
mod issuer_replicas;
mod metrics;
mod monitoring;
mod pdp;
mod pruning;
mod python_agent;
mod session_admin;
mod transport;
