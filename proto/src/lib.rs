//! Generated gRPC types for restock, package `restock.v1`.
//!
//! Every service and client in the workspace uses these; the `.proto` files
//! next to this crate are the contract. [`FILE_DESCRIPTOR_SET`] feeds server
//! reflection so that `grpcurl` needs no `.proto` files.

#![allow(missing_debug_implementations, clippy::all)]

/// Package `restock.v1`: the purchase arbiter and the stock watcher.
pub mod v1 {
    tonic::include_proto!("restock.v1");
}

/// The encoded `FileDescriptorSet` of every restock `.proto` file.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("restock_descriptor");
