//! Compiles `proto/roomcast/v1/*.proto` with protox, so building needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(["roomcast/v1/roomcast.proto"], [&root])?;
    let mut cfg = prost_build::Config::new();
    cfg.bytes(["."]);
    cfg.compile_fds(fds)?;
    Ok(())
}
