//! Compiles the wire contracts with protox (a pure-Rust protobuf compiler), so building needs
//! no system `protoc`:
//!
//! * `proto/ateom.proto`: ateom's contract (substrate's original layout plus ateom's fields),
//!   the crate root;
//! * `proto/substrate/v1/ateom.proto`: substrate's original layout alone (a client only, for
//!   tests that play an unmodified substrate);
//! * `proto/substrate/v2/ateom.proto`: substrate's renumbered layout (client and server).
//!
//! All three are package `ateom`, so each is generated into its own directory.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto"));
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for (file, sub, server) in [
        ("ateom.proto", "", true),
        ("substrate/v1/ateom.proto", "substrate_v1", false),
        ("substrate/v2/ateom.proto", "substrate_v2", true),
    ] {
        let path = proto_dir.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        let include = path.parent().expect("a proto file has a directory");
        let fds = protox::compile([&path], [include])?;
        let out_dir = out.join(sub);
        std::fs::create_dir_all(&out_dir)?;
        tonic_prost_build::configure()
            .build_server(server)
            .build_client(true)
            .out_dir(&out_dir)
            .compile_fds(fds)?;
    }
    Ok(())
}
