//! Compiles proto/ with protox (pure Rust, no protoc on the machine) and generates tonic code
//! that uses this crate's codec (`src/codec.rs`), plus the table the codec needs: for every
//! message a method takes or returns, its full name and whether it is a request or a reply.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prost::Message as _;

/// Rust module (in src/lib.rs) of each proto package.
const PACKAGE_MODULES: [(&str, &str); 2] = [("tally.v1", "v1"), ("tally.internal", "internal")];

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
    std::fs::write(out_dir.join("tally_descriptor.bin"), file_descriptors.encode_to_vec())?;
    // Every method's input and output type (".tally.v1.EarnRequest"), to rpc_message_impls.
    let method_types: Vec<(String, String)> = file_descriptors
        .file
        .iter()
        .flat_map(|file| &file.service)
        .flat_map(|service| &service.method)
        .map(|method| (method.input_type().to_string(), method.output_type().to_string()))
        .collect();
    std::fs::write(out_dir.join("rpc_messages.rs"), rpc_message_impls(&method_types)?)?;
    tonic_prost_build::configure().codec_path("crate::codec::ProtoCodec").compile_fds(file_descriptors)?;
    Ok(())
}

/// `impl RpcMessage` for every method input (Request) and output (Reply). A type used both
/// ways is refused: the codec could not tell which end's failure a decode error is.
fn rpc_message_impls(method_types: &[(String, String)]) -> Result<String, String> {
    let mut roles: BTreeMap<String, &str> = BTreeMap::new();
    for (input_type, output_type) in method_types {
        for (type_name, role) in [(input_type, "Request"), (output_type, "Reply")] {
            let full_name = type_name.trim_start_matches('.').to_string();
            if let Some(other) = roles.insert(full_name.clone(), role) {
                if other != role {
                    return Err(format!(
                        "{full_name} is both a request and a reply; give each direction its own message"
                    ));
                }
            }
        }
    }
    let mut code = String::new();
    for (full_name, role) in roles {
        let (package, name) = full_name.rsplit_once('.').ok_or(format!("{full_name} has no package"))?;
        let module = PACKAGE_MODULES
            .iter()
            .find(|(known, _)| *known == package)
            .map(|(_, module)| module)
            .ok_or(format!("package {package} has no module in PACKAGE_MODULES"))?;
        writeln!(
            code,
            "impl RpcMessage for crate::{module}::{name} {{\n    const FULL_NAME: &'static str = \
             \"{full_name}\";\n    const ROLE: MessageRole = MessageRole::{role};\n}}"
        )
        .expect("writing to a String cannot fail");
    }
    Ok(code)
}
