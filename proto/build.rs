//! Compiles the `.proto` files with protox, so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/hop3/backup/v1/common.proto",
        "proto/hop3/backup/v1/backup_api.proto",
        "proto/hop3/backup/v1/agent_upcall.proto",
        "proto/hop3/backup/v1/agent_api.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // For gRPC server reflection (grpcurl, grpcui, any language's client).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("hop3_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
