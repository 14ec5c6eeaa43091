//! Generated code for Tether's gRPC contracts (`proto/tether/<area>/v1`).
//!
//! Modules mirror the protobuf packages: `tether_proto::policy::v1` is
//! `tether.policy.v1`. [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

/// Encoded `FileDescriptorSet` of every Tether contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tether_descriptor.bin"));

/// `tether.policy.v1`: the Cedar policy decision point.
pub mod policy {
    #[allow(
        clippy::all,
        clippy::allow_attributes_without_reason,
        reason = "prost and tonic generate bare `#[allow]`s"
    )]
    pub mod v1 {
        tonic::include_proto!("tether.policy.v1");
    }
}

/// `tether.identity.v1`: RFC 8693 token exchange.
pub mod identity {
    #[allow(
        clippy::all,
        clippy::allow_attributes_without_reason,
        reason = "prost and tonic generate bare `#[allow]`s"
    )]
    pub mod v1 {
        tonic::include_proto!("tether.identity.v1");
    }
}

/// `tether.credentials.v1`: just-in-time credentials from Vault/OpenBao.
pub mod credentials {
    #[allow(
        clippy::all,
        clippy::allow_attributes_without_reason,
        reason = "prost and tonic generate bare `#[allow]`s"
    )]
    pub mod v1 {
        tonic::include_proto!("tether.credentials.v1");
    }
}

/// `tether.approval.v1`: CIBA approvals.
pub mod approval {
    #[allow(
        clippy::all,
        clippy::allow_attributes_without_reason,
        reason = "prost and tonic generate bare `#[allow]`s"
    )]
    pub mod v1 {
        tonic::include_proto!("tether.approval.v1");
    }
}

/// `tether.facade.v1`: the agent-facing gateway (`facade.proto`) and the
/// operators' session administration (`admin.proto`).
pub mod facade {
    #[allow(
        clippy::all,
        clippy::allow_attributes_without_reason,
        reason = "prost and tonic generate bare `#[allow]`s"
    )]
    pub mod v1 {
        tonic::include_proto!("tether.facade.v1");
    }
}
