//! Generates the sluice.v1 messages and tonic services. protoc comes from
//! the protoc-bin-vendored crate, so a fresh machine needs nothing installed
//! for this crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &[
                "proto/sluice/v1/sluice.proto",
                "proto/sluice/v1/audit.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
