//! Every RPC's errors go through the one mapping
//! (`tether_runtime::into_status`), which gives each status a
//! `google.rpc.ErrorInfo`: a handler that builds a `Status` by hand would
//! send an error a program cannot branch on. This reads the services'
//! source, so a new hand-built status fails here with its file and line.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::path::{Path, PathBuf};

/// `tonic::Status` constructors a handler could call directly.
const CONSTRUCTORS: &[&str] = &[
    "Status::new(",
    "Status::with_details(",
    "Status::with_error_details(",
    "Status::invalid_argument(",
    "Status::unauthenticated(",
    "Status::permission_denied(",
    "Status::failed_precondition(",
    "Status::not_found(",
    "Status::already_exists(",
    "Status::resource_exhausted(",
    "Status::unavailable(",
    "Status::deadline_exceeded(",
    "Status::cancelled(",
    "Status::aborted(",
    "Status::internal(",
    "Status::unknown(",
    "Status::unimplemented(",
    "Status::out_of_range(",
    "Status::data_loss(",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `source` outside `#[cfg(test)]` modules and comments.
fn production_lines(source: &str) -> impl Iterator<Item = (usize, &str)> {
    let end = source.find("#[cfg(test)]").unwrap_or(source.len());
    source[..end]
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(i, line)| (i + 1, line))
}

#[test]
fn no_service_builds_a_grpc_status_by_hand() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&root.join("services"), &mut files);
    assert!(files.len() > 20, "the services' sources were found");
    let mut found = Vec::new();
    for file in files.iter().filter(|f| {
        let name = f.file_name().unwrap().to_string_lossy();
        !name.ends_with("_tests.rs")
    }) {
        let source = std::fs::read_to_string(file).unwrap();
        for (number, line) in production_lines(&source) {
            if CONSTRUCTORS.iter().any(|c| line.contains(c)) {
                found.push(format!("{}:{number}: {}", file.display(), line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "map the error through the service's error enum and `into_status` instead:\n{}",
        found.join("\n")
    );
}
