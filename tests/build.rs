// The CRI client of the containerd suite: protoc is not installed on our
// machines, so protox compiles the proto in pure Rust (as proto/build.rs does).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cri-runtime-v1-subset.proto";
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={proto}");
    Ok(())
}
