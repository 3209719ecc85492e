//! End-to-end tests of the `restockctl` binary: against a stand-in arbiter
//! that serves scripted histories the real one refuses to produce (each
//! problem the monitor claims to catch must be caught, with a non-zero exit),
//! and against the real `purchase-arbiter` binary.
//!
//! The real arbiter is looked up in `target/<profile>/`: run
//! `cargo build --workspace --bins` first.

mod helpers;
mod real_arbiter;
mod standin;
