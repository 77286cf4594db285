//! The allocation core: ToRs, pools, bindings and attachments as plain data and
//! functions. No I/O, no clock, no async: callers pass in what was read from the
//! store (and the time, where it matters) and get back a decision to commit.
//! Everything here is tested without a store or a kernel.

pub mod allocate;
pub mod carve;
pub mod explain;
pub mod family;
pub mod model;
pub mod pod;
pub mod pool_change;
pub mod schedule;
pub mod spread;
mod tor;
pub mod validate;
mod validate_tor;
pub mod workload;

pub use model::*;
pub use pod::{OwnerKind, OwnerRef, PodFacts, POOL_ANNOTATION};
pub use pool_change::*;
