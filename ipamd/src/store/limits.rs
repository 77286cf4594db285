//! How big one transaction may be. etcd refuses a request over 1.5 MiB
//! (`--max-request-bytes`) and a transaction of more than 128 operations
//! (`--max-txn-ops`), both by default; we stay under them with a margin, so
//! a change that outgrows them is split into several transactions (pool
//! changes carry their progress in the pool record, see `ipam/pool_op.rs`)
//! instead of failing on a real etcd only.

use super::{Check, Op, Txn};

/// Most writes (puts and deletes) in one transaction.
pub const MAX_OPS: usize = 100;
/// Most checks (compares) in one transaction.
pub const MAX_CHECKS: usize = 100;
/// Fewer bytes of keys and values than this in one transaction.
pub const MAX_BYTES: usize = 1024 * 1024;

impl Txn {
    /// The bytes of keys and values the transaction sends (a lower bound of
    /// its request size; the framing adds a few bytes per item).
    pub fn size_bytes(&self) -> usize {
        let ops: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => key.len() + value.len() + 8,
                Op::Delete { key } => key.len() + 8,
            })
            .sum();
        let checks: usize = self
            .checks
            .iter()
            .map(|c| match c {
                Check::Version { key, .. } => key.len() + 16,
                Check::PrefixUnchangedSince { prefix, .. } => prefix.len() + 16,
            })
            .sum();
        ops + checks
    }

    /// Whether the transaction fits etcd's default limits with our margin;
    /// if not, what is too big.
    pub fn check_limits(&self) -> Result<(), String> {
        let bytes = self.size_bytes();
        if self.ops.len() > MAX_OPS || self.checks.len() > MAX_CHECKS || bytes >= MAX_BYTES {
            return Err(format!(
                "transaction too big for etcd: {} writes (at most {MAX_OPS}), {} checks (at most {MAX_CHECKS}), {bytes} bytes (under {MAX_BYTES})",
                self.ops.len(),
                self.checks.len()
            ));
        }
        Ok(())
    }

    /// Whether `ops` more writes, `checks` more checks and `bytes` more
    /// bytes would still fit.
    pub fn has_room(&self, ops: usize, checks: usize, bytes: usize) -> bool {
        self.ops.len() + ops <= MAX_OPS
            && self.checks.len() + checks <= MAX_CHECKS
            && self.size_bytes() + bytes < MAX_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_writes_checks_and_bytes() {
        let mut t = Txn::default();
        for i in 0..MAX_OPS {
            t.put(&format!("k/{i}"), &1);
        }
        assert!(t.check_limits().is_ok());
        assert!(!t.has_room(1, 0, 0));
        t.delete("k/x");
        assert!(t.check_limits().unwrap_err().contains("101 writes"));
        let mut t = Txn::default();
        t.put("big", &"x".repeat(MAX_BYTES));
        assert!(t.check_limits().unwrap_err().contains("bytes"));
        let mut t = Txn::default();
        for i in 0..=MAX_CHECKS {
            t.expect(&format!("k/{i}"), None);
        }
        assert!(t.check_limits().unwrap_err().contains("101 checks"));
    }
}
