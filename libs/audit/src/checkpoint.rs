//! Checkpoints: the tree's size and root hash in the C2SP tlog-checkpoint
//! format, signed as a C2SP signed note.
//!
//! ```text
//! audit.tether.example
//! 42
//! gfC5JOjhbSv4k5iNaz/Cn45YIQeUXe33HXey1Sk7NVI=
//!
//! — audit.tether.example 9Z6WEXWHPYfo9vdy9gzf4EhFcgzkQjNuq6QD8ABlRxU8Cog8GgYRUunTMmLkz9CK9jZo6GEQ72EfLWYpDeO2yhAa+A4=
//! ```

use signed_note::{Note, NoteError, StandardVerifier, Verifier as _, VerifierList};
use tlog_tiles::Hash;

use crate::key::NoteSigner;
use crate::verify::VerifyError;

/// A checkpoint whose signature was made here or has been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedCheckpoint {
    origin: String,
    size: u64,
    root: Hash,
    text: String,
}

impl SignedCheckpoint {
    /// The log's name (also the signing key's name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// How many records the checkpoint covers (leaves `0..size`).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 6962 root hash of those records.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The signed note, to publish or save; read it back with
    /// [`crate::verify::checkpoint`].
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for SignedCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a checkpoint could not be signed (the origin is checked when the log
/// is opened, so this does not happen in practice).
#[derive(Debug, thiserror::Error)]
#[error("signing the checkpoint: {0}")]
pub struct SignError(String);

pub(crate) fn sign(
    signer: &NoteSigner,
    origin: &str,
    size: u64,
    root: Hash,
) -> Result<SignedCheckpoint, SignError> {
    let body = tlog_tiles::Checkpoint::new(origin, size, root, "")
        .map_err(|e| SignError(e.to_string()))?
        .to_bytes();
    let mut note = Note::new(&body, &[]).map_err(|e| SignError(e.to_string()))?;
    note.add_sigs(&[signer])
        .map_err(|e| SignError(e.to_string()))?;
    let text = String::from_utf8(note.to_bytes()).map_err(|e| SignError(e.to_string()))?;
    Ok(SignedCheckpoint {
        origin: origin.to_owned(),
        size,
        root,
        text,
    })
}

/// Checks `text`'s signature by `vkey` and parses the checkpoint. Other
/// signatures (a witness's, say) are ignored; the one by `vkey` must be
/// there and valid, and the checkpoint's origin must be the key's name.
pub(crate) fn open(text: &str, vkey: &str) -> Result<SignedCheckpoint, VerifyError> {
    let verifier = StandardVerifier::new(vkey).map_err(|_| VerifyError::BadVerifierKey)?;
    let (name, id) = (verifier.name().to_owned(), verifier.key_id());
    let note = Note::from_bytes(text.as_bytes())
        .map_err(|_| VerifyError::Malformed("not a signed note"))?;
    let (verified, _others) = note
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| match e {
            NoteError::UnverifiedNote => VerifyError::NotSignedByKey,
            NoteError::InvalidSignature { .. } => VerifyError::BadSignature,
            _ => VerifyError::Malformed("the note's signatures are malformed"),
        })?;
    if !verified.iter().any(|s| s.name() == name && s.id() == id) {
        return Err(VerifyError::NotSignedByKey);
    }
    let checkpoint = tlog_tiles::Checkpoint::from_bytes(note.text())
        .map_err(|_| VerifyError::Malformed("the note is not a checkpoint"))?;
    if checkpoint.origin() != name {
        return Err(VerifyError::WrongOrigin {
            expected: name,
            found: checkpoint.origin().to_owned(),
        });
    }
    Ok(SignedCheckpoint {
        origin: name,
        size: checkpoint.size(),
        root: *checkpoint.hash(),
        text: text.to_owned(),
    })
}
