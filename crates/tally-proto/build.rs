//! Compiles proto/ with protox (pure Rust, no protoc on the machine) and generates tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    println!("cargo:rerun-if-changed={proto_root}");
    let files = [
        "tally/v1/ledger.proto",
        "tally/v1/admin.proto",
        "tally/internal/raft.proto",
        "tally/internal/node.proto",
    ];
    let file_descriptors = protox::compile(files, [proto_root])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Server reflection needs the encoded descriptor set.
    std::fs::write(out_dir.join("tally_descriptor.bin"), prost::Message::encode_to_vec(&file_descriptors))?;
    tonic_prost_build::configure().compile_fds(file_descriptors)?;
    Ok(())
}
