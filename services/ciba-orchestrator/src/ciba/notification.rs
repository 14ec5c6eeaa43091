//! Ping mode's `client_notification_token`: a fresh bearer token per
//! request, of which only a hash is kept.

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::CibaError;

/// Random bytes per token: 256 bits (CIBA asks for at least 128).
const TOKEN_BYTES: usize = 32;

/// The bearer token the IdP presents when it pings about one request. Sent
/// once, in the backchannel request; keep only its [`hash`](Self::hash).
pub struct NotificationToken(String);

impl NotificationToken {
    /// 256 bits from the operating system's random generator, base64url.
    pub fn generate() -> Result<Self, CibaError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| CibaError::Internal("the system random generator failed".into()))?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The token itself, for the backchannel request only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What to store instead of the token.
    pub fn hash(&self) -> NotificationTokenHash {
        NotificationTokenHash::of(&self.0)
    }
}

impl std::fmt::Debug for NotificationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NotificationToken(***)")
    }
}

/// SHA-256 of a notification token: what a ticket store keeps. Compared
/// only in constant time ([`matches`](Self::matches)); deliberately not
/// `PartialEq`.
#[derive(Clone, Copy)]
pub struct NotificationTokenHash([u8; 32]);

impl NotificationTokenHash {
    /// The hash of a token (e.g. one presented in a ping).
    pub fn of(token: &str) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, for storage.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads [`to_hex`](Self::to_hex)'s form.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Self)
    }

    /// Whether `presented` (the bearer token of a ping) is the token this
    /// is the hash of, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let candidate = Self::of(presented);
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &candidate.0).is_ok()
    }
}

impl std::fmt::Debug for NotificationTokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NotificationTokenHash({}…)", &self.to_hex()[..8])
    }
}

/// The token of an `Authorization: Bearer <token>` header value (the
/// scheme is case-insensitive), or `None`.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_base64url_and_fresh() {
        let a = NotificationToken::generate().unwrap();
        let b = NotificationToken::generate().unwrap();
        assert_eq!(a.expose().len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(a.expose()).unwrap().len(), 32);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "NotificationToken(***)");
    }

    #[test]
    fn only_the_hash_is_kept_and_it_matches_the_token_alone() {
        let token = NotificationToken::generate().unwrap();
        let stored = NotificationTokenHash::from_hex(&token.hash().to_hex()).unwrap();
        assert!(stored.matches(token.expose()));
        assert!(!stored.matches(&format!("{}x", token.expose())));
        assert!(!stored.matches(""));
        assert!(!format!("{stored:?}").contains(&stored.to_hex()));
        assert!(NotificationTokenHash::from_hex("abcd").is_none());
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer a b"), None);
    }
}
