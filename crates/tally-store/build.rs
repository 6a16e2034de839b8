//! Generates the rust-protobuf 2 message raft-engine stores (`proto/log_entry.proto`) with the
//! pure-Rust code generator, so no `protoc` is needed.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=proto/log_entry.proto");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    protobuf_codegen_pure::Codegen::new()
        .out_dir(&out_dir)
        .include("proto")
        .input("proto/log_entry.proto")
        .run()
        .expect("generating the log entry message from proto/log_entry.proto");
    // The generated file starts with inner attributes (`#![allow(...)]`), which `include!`
    // cannot take; the including module carries the allowances instead.
    let generated = Path::new(&out_dir).join("log_entry.rs");
    let text = std::fs::read_to_string(&generated).expect("reading the generated log_entry.rs");
    let kept: String = text
        .lines()
        .filter(|line| !line.starts_with("#![") && !line.starts_with("//!"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&generated, kept).expect("writing the generated log_entry.rs");
}
