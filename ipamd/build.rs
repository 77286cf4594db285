// etcd-client's build script runs protoc, which our machines do not have:
// .cargo/config.toml points PROTOC at .cargo/protoc, which runs the protoc
// shipped in the protoc-bin-vendored crates. This build-dependency is what
// makes cargo download and unpack those crates before any build script runs.
fn main() {
    let _ = protoc_bin_vendored::protoc_bin_path();
    println!("cargo:rerun-if-changed=build.rs");
}
