//! End-to-end tests of the `restockctl` binary: against the scripted
//! arbiter serving histories the real one refuses to produce (each problem
//! the monitor claims to catch must be caught, with a non-zero exit), and
//! against the real arbiter (in this process, or the binary where a test
//! restarts it).
//!
//! The binaries are looked up in `target/<profile>/`: run
//! `cargo build --workspace --bins` first.

mod helpers;
mod real_arbiter;
mod scripted;
