//! The synchronisation primitives of shutdown coordination, taken from `loom` under `cfg(loom)` so the
//! model checker can explore every interleaving, and from `std` otherwise. Coordination code imports
//! them only from here.

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;

#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
