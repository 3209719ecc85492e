//! Generates the restock.v1 types, client and server, plus an encoded file
//! descriptor set that the services hand to tonic-reflection.
//!
//! protoc comes from `protoc-bin-vendored`, so a machine with only the Rust
//! toolchain builds; a `PROTOC` set in the environment still wins.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY-free: build scripts are single-threaded at this point.
        // `set_var` is unsafe in edition 2024 only because of threads.
        #[allow(unsafe_code)]
        unsafe {
            env::set_var("PROTOC", protoc);
        }
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos = ["restock/v1/arbiter.proto", "restock/v1/watcher.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("restock_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
