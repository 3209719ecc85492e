//! Generated gRPC types for restock, package `restock.v1`, and their
//! conversions to and from the domain types of `restock-domain`.
//!
//! Every service and client in the workspace uses these; the `.proto` files
//! next to this crate are the contract. Every message also has serde impls
//! in the proto3 JSON mapping (what `grpcurl` prints), for HTTP JSON. [`FILE_DESCRIPTOR_SET`] feeds server
//! reflection so that `grpcurl` needs no `.proto` files; [`convert`] is
//! where protocol messages become domain values (and back), so each
//! service converts at its edge.

/// Package `restock.v1`: the purchase arbiter, the stock watcher and the
/// notifier.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("restock.v1");
    include!(concat!(env!("OUT_DIR"), "/restock.v1.serde.rs"));
}

pub mod convert;

pub use convert::ConvertError;

/// `GetStatusResponse.role` of the one arbiter with its state file.
pub const ROLE_STANDALONE: &str = "standalone";
/// `GetStatusResponse.role` of the replica elected through etcd.
pub const ROLE_LEADER: &str = "leader";
/// `GetStatusResponse.role` of a replica that does not lead.
pub const ROLE_FOLLOWER: &str = "follower";

/// The encoded `FileDescriptorSet` of every restock `.proto` file.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("restock_descriptor");
