//! Compiles `proto/roomcast/v1/*.proto` with protox, so building needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script binary may be reused for another
    // checkout of the same package sharing the target directory.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(["roomcast/v1/roomcast.proto"], [&root])?;
    let mut cfg = prost_build::Config::new();
    cfg.bytes(["."]);
    cfg.compile_fds(fds)?;
    Ok(())
}
