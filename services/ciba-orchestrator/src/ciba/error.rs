//! Why a CIBA operation failed. No message carries a secret, an assertion, a
//! notification token or an ID token.

/// A failure of the CIBA client. Never an approval.
#[derive(Debug, thiserror::Error)]
pub enum CibaError {
    /// The configuration is invalid, a key or secret file cannot be used, or
    /// the IdP does not offer what the configuration needs (found at
    /// discovery). Fix the configuration or the IdP's client registration.
    #[error("{0}")]
    Config(String),
    /// A caller-supplied value cannot be sent (empty user, zero expiry...).
    /// Nothing was sent to the IdP.
    #[error("{0}")]
    InvalidRequest(String),
    /// The IdP refused to start the authentication (`unknown_user_id`,
    /// `access_denied`, `invalid_binding_message`, `invalid_client`...).
    /// Nothing was sent to the user's device; retrying as is will not help.
    #[error("the IdP refused the authentication request: `{error}`{}", describe(.description))]
    Refused {
        /// The OAuth error code.
        error: String,
        /// The IdP's description, clipped.
        description: Option<String>,
    },
    /// The IdP could not be reached, failed (5xx, 429), answered a token
    /// request with an error this client does not expect (e.g.
    /// `invalid_client`), or answered with something unreadable. Retryable;
    /// a pending request stays pending until its deadline.
    #[error("the IdP is unavailable: {0}")]
    Unavailable(String),
    /// The operating system's random generator or the signer failed.
    #[error("{0}")]
    Internal(String),
}

impl CibaError {
    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

fn describe(description: &Option<String>) -> String {
    match description {
        Some(d) if !d.is_empty() => format!(" ({d})"),
        _ => String::new(),
    }
}
