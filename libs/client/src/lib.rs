#![doc = include_str!("../README.md")]

mod agent_key;
mod client;
mod config;
mod error;
mod retry;
mod types;

pub use agent_key::AgentKey;
pub use client::{ApprovalWatch, AuthorizeRequest, Client, CredentialRequest, Session};
pub use config::{ClientConfig, ClientConfigBuilder};
pub use error::{ERROR_DOMAIN, Error, RpcError};
pub use retry::RetryPolicy;
pub use tonic::Code;
pub use types::{
    Acquired, ApprovalGrant, ApprovalRequired, ApprovalState, ApprovalTicket, Authorization,
    Credential, DatabaseCredential, Decision, Entity, GenericCredential, IssuedCredential, Lease,
    LeaseStatus, SessionDetails, SessionInfo, SessionReceipt, SessionState,
};
