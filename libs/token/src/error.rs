//! Why a token was refused. Messages never contain the token.

/// A token that must not be trusted, or a key source that cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token is {size} bytes, the limit is {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("algorithm `{0}` is not allowed")]
    DisallowedAlgorithm(String),
    #[error("header `{0}` is not accepted (keys are never taken from a token)")]
    ForbiddenHeader(&'static str),
    #[error("critical header extension `{0}` is not understood")]
    UnknownCritical(String),
    #[error("token type `{found}` is not accepted here (expected {expected})")]
    WrongType { found: String, expected: String },
    #[error("signing key `{0}` is unknown")]
    UnknownKey(String),
    #[error("signing key does not match the token's algorithm")]
    KeyMismatch,
    #[error("signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("issuer `{0}` is not trusted")]
    UntrustedIssuer(String),
    #[error("token is not intended for this audience")]
    WrongAudience,
    #[error(
        "`aud` must be exactly one value, this server's identifier (the token also names other audiences)"
    )]
    MultipleAudiences,
    #[error("required claim `{0}` is missing or malformed")]
    MissingClaim(String),
    /// RFC 9449: the DPoP proof does not prove possession for this request.
    #[error("DPoP proof rejected: {0}")]
    InvalidDpopProof(String),
    #[error("session has been revoked")]
    SessionRevoked,
    /// The keys could not be fetched: not the token's fault, but still a deny.
    #[error("signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl TokenError {
    /// True when the failure is ours or a dependency's, not the token's.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::KeysUnavailable(_))
    }
}
