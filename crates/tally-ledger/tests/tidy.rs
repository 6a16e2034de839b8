//! Determinism rules of the ledger crate, enforced on its source: no hash-ordered collections
//! (except inside `keyed.rs`, whose wrappers iterate only in key order), no clock, no
//! randomness, no floats, no I/O, no async. Comments are skipped, so the rules can be explained
//! in prose.

use std::fs;
use std::path::{Path, PathBuf};

const FORBIDDEN: [(&str, &str); 12] = [
    ("HashMap", "iteration order differs between replicas; use BTreeMap or keyed::KeyedMap"),
    ("HashSet", "iteration order differs between replicas; use BTreeSet or keyed::KeyedSet"),
    ("SystemTime", "time comes from the log entry"),
    ("Instant", "time comes from the log entry"),
    ("thread_rng", "apply must be deterministic"),
    ("rand::", "apply must be deterministic"),
    ("f32", "no floats in money paths"),
    ("f64", "no floats in money paths"),
    ("std::fs", "the domain crate does no I/O"),
    ("std::net", "the domain crate does no I/O"),
    ("async ", "the domain crate is synchronous"),
    ("unsafe ", "the domain crate has no unsafe code"),
];

/// The one file that may use hash collections: its wrappers iterate only in key order.
const HASH_COLLECTIONS_FILE: &str = "keyed.rs";

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn the_ledger_source_has_no_nondeterminism() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 5, "found the sources");
    let mut problems = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let hashing_allowed = file.file_name().is_some_and(|name| name == HASH_COLLECTIONS_FILE);
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (word, reason) in FORBIDDEN {
                if hashing_allowed && word.starts_with("Hash") {
                    continue;
                }
                if code.contains(word) {
                    problems.push(format!("{}:{}: `{word}`: {reason}", file.display(), number + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
