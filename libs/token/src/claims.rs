//! Claims of a Tether delegated token (RFC 9068 access token + RFC 8693 `act`).

use serde::{Deserialize, Serialize};

/// The `typ` header of every token Tether mints.
pub const TOKEN_TYPE_AT_JWT: &str = "at+jwt";

/// An actor in the delegation chain: `act.sub` acts; a nested `act` is the
/// actor that delegated to it in turn (RFC 8693 §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// Depth of the chain (1 for a single agent).
    pub fn depth(&self) -> usize {
        1 + self.act.as_ref().map_or(0, |a| a.depth())
    }

    /// The chain from the current actor outwards.
    pub fn chain(&self) -> Vec<&str> {
        let mut out = vec![self.sub.as_str()];
        let mut next = self.act.as_deref();
        while let Some(actor) = next {
            out.push(actor.sub.as_str());
            next = actor.act.as_deref();
        }
        out
    }
}

/// A delegated token's claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelegatedClaims {
    pub iss: String,
    /// The human user.
    pub sub: String,
    /// One resource (RFC 8707).
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    /// Session id, threaded through everything.
    pub sid: String,
    /// Space-separated scopes, never wider than the user's.
    #[serde(default)]
    pub scope: String,
    /// The agent acting for `sub`.
    pub act: Actor,
    /// The agent's client id (RFC 9068).
    pub client_id: String,
    /// The declared intent (RFC 9396).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<serde_json::Value>,
    /// User attributes copied from the subject token (groups, department…).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub user: serde_json::Map<String, serde_json::Value>,
}

impl DelegatedClaims {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }
}
