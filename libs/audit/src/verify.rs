//! Verification that needs no database: only leaves, checkpoints, proofs
//! and the log's verifier key.
//!
//! - [`checkpoint`] checks a checkpoint's signature.
//! - [`log`] recomputes the whole tree from the stored leaves and checks it
//!   against a signed checkpoint and, given one, proves it consistent with
//!   an earlier saved checkpoint: an altered, removed, reordered or
//!   inserted record changes the root; a truncated tail makes the log
//!   inconsistent with a checkpoint taken before the cut, even when the
//!   current checkpoint was signed honestly over what remains.
//! - [`inclusion`] and [`consistency`] check the proofs
//!   [`AuditLog`](crate::AuditLog) hands out, against checkpoints alone.

use crate::checkpoint::SignedCheckpoint;
use crate::tree::MemoryTree;
use crate::{ConsistencyProof, Hash, InclusionProof, Leaf};

/// Why verification failed. Every variant is a refusal: nothing in the
/// log or the checkpoint may be trusted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the verifier key is not a signed-note Ed25519 key")]
    BadVerifierKey,
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("the checkpoint's signature is invalid")]
    BadSignature,
    #[error("the checkpoint is not signed by the log's key")]
    NotSignedByKey,
    #[error("the checkpoint names the log `{found}`, the key names `{expected}`")]
    WrongOrigin { expected: String, found: String },
    #[error("record {expected} is missing (the next stored record is {found})")]
    IndexGap { expected: u64, found: u64 },
    #[error("record {index} does not match its stored leaf hash")]
    LeafHashMismatch { index: u64 },
    #[error("the log holds {have} records but the checkpoint covers {checkpoint}")]
    MissingRecords { have: u64, checkpoint: u64 },
    #[error("the first {size} records do not hash to the checkpoint's root")]
    RootMismatch { size: u64 },
    #[error("the current checkpoint covers {current} records, an earlier one covered {earlier}")]
    Rollback { earlier: u64, current: u64 },
    #[error("the log of {new} records is not an extension of the earlier one of {old} records")]
    Inconsistent { old: u64, new: u64 },
    #[error("the inclusion proof for record {index} does not lead to the checkpoint's root")]
    NotIncluded { index: u64 },
    #[error("the proof is for a tree of {proof} records, the checkpoint covers {checkpoint}")]
    SizeMismatch { proof: u64, checkpoint: u64 },
    #[error("recomputing the tree: {0}")]
    Tree(#[from] tlog_tiles::Error),
}

/// What [`log`] established.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Records covered by the current checkpoint.
    pub size: u64,
    pub root: Hash,
    /// Records stored after the checkpoint was taken: present, but not yet
    /// covered by any signature.
    pub uncovered: u64,
}

/// Checks that `text` is a checkpoint signed by `vkey` (the log's verifier
/// key, `<origin>+<id>+<key>`) and returns it.
pub fn checkpoint(text: &str, vkey: &str) -> Result<SignedCheckpoint, VerifyError> {
    crate::checkpoint::open(text, vkey)
}

/// Verifies the whole log: `leaves` as stored (in index order, from 0),
/// the `current` checkpoint and, when the auditor saved one, an `earlier`
/// checkpoint; both must be signed by `vkey`.
///
/// Checks, in order: the checkpoints' signatures; that indexes are dense;
/// that each leaf matches its stored leaf hash; that the first
/// `current.size` leaves hash to the current root; and that the earlier
/// checkpoint's tree is a prefix of the current one (an RFC 6962
/// consistency proof computed from the leaves and checked against both
/// roots).
pub fn log(
    leaves: &[Leaf],
    vkey: &str,
    current: &str,
    earlier: Option<&str>,
) -> Result<Verified, VerifyError> {
    let current = checkpoint(current, vkey)?;
    let earlier = earlier.map(|text| checkpoint(text, vkey)).transpose()?;

    let mut tree = MemoryTree::default();
    for leaf in leaves {
        if leaf.index != tree.size() {
            return Err(VerifyError::IndexGap {
                expected: tree.size(),
                found: leaf.index,
            });
        }
        let hash = tlog_tiles::record_hash(leaf.data.as_bytes());
        if hash != leaf.hash {
            return Err(VerifyError::LeafHashMismatch { index: leaf.index });
        }
        tree.push(hash)?;
    }

    if tree.size() < current.size() {
        return Err(VerifyError::MissingRecords {
            have: tree.size(),
            checkpoint: current.size(),
        });
    }
    let root = tree.root(current.size())?;
    if root != current.root() {
        return Err(VerifyError::RootMismatch {
            size: current.size(),
        });
    }

    if let Some(earlier) = earlier {
        if earlier.size() > current.size() {
            return Err(VerifyError::Rollback {
                earlier: earlier.size(),
                current: current.size(),
            });
        }
        let proof = ConsistencyProof {
            old_size: earlier.size(),
            new_size: current.size(),
            path: if earlier.size() == 0 {
                Vec::new()
            } else {
                tlog_tiles::prove_tree(current.size(), earlier.size(), &tree)?
            },
        };
        consistency(&proof, &earlier, &current)?;
    }

    Ok(Verified {
        size: current.size(),
        root,
        uncovered: tree.size() - current.size(),
    })
}

/// Checks that `leaf` (the stored leaf text) is record `proof.index` of
/// the tree `checkpoint` signs.
pub fn inclusion(
    proof: &InclusionProof,
    leaf: &str,
    checkpoint: &SignedCheckpoint,
) -> Result<(), VerifyError> {
    if proof.tree_size != checkpoint.size() {
        return Err(VerifyError::SizeMismatch {
            proof: proof.tree_size,
            checkpoint: checkpoint.size(),
        });
    }
    let not_included = VerifyError::NotIncluded { index: proof.index };
    if proof.index >= proof.tree_size {
        return Err(not_included);
    }
    let hash = tlog_tiles::record_hash(leaf.as_bytes());
    tlog_tiles::check_record(
        &proof.path,
        proof.tree_size,
        checkpoint.root(),
        proof.index,
        hash,
    )
    .map_err(|_| not_included)
}

/// Checks that the tree `new` signs extends the tree `old` signs (every
/// record `old` covers is still there, unchanged and in place).
pub fn consistency(
    proof: &ConsistencyProof,
    old: &SignedCheckpoint,
    new: &SignedCheckpoint,
) -> Result<(), VerifyError> {
    let inconsistent = VerifyError::Inconsistent {
        old: old.size(),
        new: new.size(),
    };
    if old.size() > new.size() {
        return Err(VerifyError::Rollback {
            earlier: old.size(),
            current: new.size(),
        });
    }
    if proof.old_size != old.size() || proof.new_size != new.size() {
        return Err(inconsistent);
    }
    if old.size() == 0 {
        // The empty tree is a prefix of every tree.
        return if proof.path.is_empty() {
            Ok(())
        } else {
            Err(inconsistent)
        };
    }
    tlog_tiles::check_tree(&proof.path, new.size(), new.root(), old.size(), old.root())
        .map_err(|_| inconsistent)
}
