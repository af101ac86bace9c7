//! One source of truth: `proto/vidx/v1/*.proto` at the repository root.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a build script compiled in
    // one clone is reused by another at a different path when they share a target dir (the
    // CUDA check's, outside the clone).
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("vidx/v1/vidx.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect` helpers: callers build their own channel (TLS, auth, limits), and this
        // crate stays free of the transport feature.
        .build_transport(false)
        // For server reflection: clients such as grpcurl work without the .proto files.
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("vidx_descriptor.bin"),
        )
        .compile_protos(&[file], &[root])?;
    Ok(())
}
