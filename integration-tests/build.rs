//! Compiles the minimal, wire-compatible Cerbos protos in `peers/cerbos/proto`
//! (client only) for the side-by-side PDP benchmark. Pure Rust (`protox`),
//! no system `protoc`.

use std::path::{Path, PathBuf};

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/cerbos/proto");
    let root = root
        .canonicalize()
        .with_context(|| format!("locating the Cerbos proto root `{}`", root.display()))?;
    println!("cargo:rerun-if-changed={}", root.display());

    let mut files = Vec::new();
    collect_protos(&root, &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    // Only the entry point: it imports the per-package files.
    let fds = protox::compile([root.join("cerbos_min.proto")], [&root])
        .context("compiling the Cerbos protos")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)
        .context("generating the Cerbos client")?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading `{}`", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
