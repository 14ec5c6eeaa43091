//! What a session id (`sid`) looks like, for every place that takes one
//! by name rather than from a verified token: the operators' session
//! administration, in the identity exchange, the facade and the CLI.
//!
//! The identity exchange mints `s_<32 hex digits>`; the rule accepts a
//! little more (ids from another minting scheme, or a test's), and nothing
//! that could smuggle a control character, a separator or whitespace into
//! a log line, a SQL `LIKE`, a table cell or a page token.

/// The longest session id any Tether service accepts, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// Why a session id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    #[error("a session id is required")]
    Empty,
    #[error("a session id is at most {MAX_SESSION_ID_BYTES} bytes")]
    TooLong,
    #[error("a session id has only ASCII letters, digits, `_`, `-` and `:`")]
    Charset,
}

/// Checks the syntax of `sid`: 1 to [`MAX_SESSION_ID_BYTES`] bytes of
/// ASCII letters, digits, `_`, `-` and `:`. Says nothing about whether
/// the session exists.
pub fn check_session_id(sid: &str) -> Result<(), SessionIdError> {
    if sid.is_empty() {
        return Err(SessionIdError::Empty);
    }
    if sid.len() > MAX_SESSION_ID_BYTES {
        return Err(SessionIdError::TooLong);
    }
    if !sid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
    {
        return Err(SessionIdError::Charset);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_pass_and_everything_odd_is_refused() {
        check_session_id("s_0123456789abcdef0123456789abcdef").unwrap();
        check_session_id("s-1").unwrap();
        check_session_id(&"a".repeat(MAX_SESSION_ID_BYTES)).unwrap();
        assert_eq!(check_session_id(""), Err(SessionIdError::Empty));
        assert_eq!(
            check_session_id(&"a".repeat(MAX_SESSION_ID_BYTES + 1)),
            Err(SessionIdError::TooLong)
        );
        for bad in [
            "s_1\n",
            "s_1\r\nforged: line",
            "s_\u{1b}[31m",
            "s_\u{9b}",
            "s_1\0",
            " s_1",
            "s_1 ",
            "s_1.2",
            "s_1/..",
            "s_%",
            "s_é",
            "s_1'--",
        ] {
            assert_eq!(
                check_session_id(bad),
                Err(SessionIdError::Charset),
                "{bad:?}"
            );
        }
    }
}
