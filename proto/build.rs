// protoc is not installed on our machines: protox compiles the .proto files in
// pure Rust and hands tonic the file descriptors.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["moor/v1/moor.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=moor/v1/moor.proto");
    Ok(())
}
