//! The Merkle tree's stored hashes as `tlog_tiles` reads them. All hashing
//! and proof logic is `tlog_tiles`' (RFC 6962); this module only supplies
//! the hashes it asks for, from memory or from the store.

use std::cell::RefCell;
use std::collections::HashMap;

use tlog_tiles::{Hash, HashReader};

/// A whole tree held in memory: the verifier's own recomputation.
#[derive(Debug, Default)]
pub(crate) struct MemoryTree {
    /// Every stored hash, in `tlog_tiles::stored_hash_index` order.
    hashes: Vec<Hash>,
    size: u64,
}

impl MemoryTree {
    /// Appends the leaf whose RFC 6962 leaf hash is `leaf_hash`.
    pub(crate) fn push(&mut self, leaf_hash: Hash) -> Result<(), tlog_tiles::Error> {
        let new = tlog_tiles::stored_hashes_for_record_hash(self.size, leaf_hash, self)?;
        self.hashes.extend(new);
        self.size += 1;
        Ok(())
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree made of the first `size` leaves.
    pub(crate) fn root(&self, size: u64) -> Result<Hash, tlog_tiles::Error> {
        if size > self.size {
            return Err(tlog_tiles::Error::IndexesNotInTree);
        }
        tlog_tiles::tree_hash(size, self)
    }
}

impl HashReader for MemoryTree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.hashes.get(i))
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Answers with the hashes fetched so far and notes the ones it lacks
/// (answering those with a placeholder). Which hashes a `tlog_tiles`
/// function reads depends only on the sizes and indexes it is given, never
/// on hash values, so a dry run learns them all; see
/// `AuditLog::with_stored_hashes`.
#[derive(Debug, Default)]
pub(crate) struct Prefetch {
    known: HashMap<u64, Hash>,
    missing: RefCell<Vec<u64>>,
}

impl Prefetch {
    /// The indexes asked for but not known, since the last call.
    pub(crate) fn take_missing(&mut self) -> Vec<u64> {
        let mut missing = self.missing.take();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    pub(crate) fn add(&mut self, hashes: impl IntoIterator<Item = (u64, Hash)>) {
        self.known.extend(hashes);
    }
}

impl HashReader for Prefetch {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        Ok(indexes
            .iter()
            .map(|i| {
                self.known.get(i).copied().unwrap_or_else(|| {
                    self.missing.borrow_mut().push(*i);
                    Hash::default()
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Certificate Transparency reference vectors for RFC 6962
    /// (certificate-transparency's merkle tree tests): tree heads for every
    /// prefix of eight leaves, and the audit path of leaf 5 in the tree of 8.
    #[test]
    fn matches_the_rfc6962_reference_vectors() {
        let leaves: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut tree = MemoryTree::default();
        for leaf in leaves {
            tree.push(tlog_tiles::record_hash(leaf)).unwrap();
        }
        for (size, want) in roots.iter().enumerate() {
            assert_eq!(
                hex::encode(tree.root(size as u64).unwrap().0),
                *want,
                "size {size}"
            );
        }
        assert!(tree.root(9).is_err());

        let path: Vec<String> = tlog_tiles::prove_record(8, 5, &tree)
            .unwrap()
            .iter()
            .map(|h| hex::encode(h.0))
            .collect();
        assert_eq!(
            path,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
    }

    #[test]
    fn prefetch_learns_what_a_proof_reads() {
        let mut tree = MemoryTree::default();
        for i in 0..13_u8 {
            tree.push(tlog_tiles::record_hash(&[i])).unwrap();
        }
        let mut reader = Prefetch::default();
        let _ = tlog_tiles::prove_record(13, 5, &reader).unwrap();
        let missing = reader.take_missing();
        assert!(!missing.is_empty());
        let fetched = tree.read_hashes(&missing).unwrap();
        reader.add(missing.into_iter().zip(fetched));
        let proof = tlog_tiles::prove_record(13, 5, &reader).unwrap();
        assert!(reader.take_missing().is_empty());
        assert_eq!(proof, tlog_tiles::prove_record(13, 5, &tree).unwrap());
    }
}
