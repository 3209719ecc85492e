//! Generates the restock.v1 types, client and server, plus an encoded file
//! descriptor set that the services hand to tonic-reflection, and serde
//! impls in the proto3 JSON mapping (pbjson-build).
//!
//! protoc comes from `protoc-bin-vendored`, so a machine with only the Rust
//! toolchain builds; a `PROTOC` set in the environment still wins.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    // Handed to prost directly: no process-wide environment change needed.
    config.protoc_executable(protoc);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "restock/v1/arbiter.proto",
        "restock/v1/watcher.proto",
        "restock/v1/notifier.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let descriptor_path = out_dir.join("restock_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_with_config(config, &protos, &["."])?;
    // serde impls in the proto3 JSON mapping (camelCase names, 64-bit
    // integers as strings, enums by name): what grpcurl prints, so the
    // arbiter's HTTP JSON and a grpcurl call read the same.
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".restock.v1"])?;
    Ok(())
}
