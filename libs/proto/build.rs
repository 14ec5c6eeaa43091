//! Compiles every `.proto` under the workspace `proto/` directory with `protox`
//! (pure Rust, no system `protoc`) and writes the descriptor set for reflection.

use std::path::{Path, PathBuf};

use anyhow::Context;
use prost::Message;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let root = root
        .canonicalize()
        .with_context(|| format!("locating proto root `{}`", root.display()))?;
    println!("cargo:rerun-if-changed={}", root.display());

    let mut files = Vec::new();
    collect_protos(&root, &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [&root]).context("compiling protobuf contracts")?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR not set")?);
    std::fs::write(out_dir.join("tether_descriptor.bin"), fds.encode_to_vec())
        .context("writing descriptor set")?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .context("generating Rust code")?;
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
