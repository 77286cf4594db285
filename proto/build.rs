// protoc is not installed on our machines: protox compiles the .proto files in
// pure Rust and hands tonic the file descriptors.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["moor/v1/moor.proto", "moor/v1/controller.proto"];
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
