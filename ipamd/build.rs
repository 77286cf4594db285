// etcd-client's build script runs protoc, which our machines do not have:
// .cargo/config.toml points PROTOC at .cargo/protoc, which runs the protoc
// shipped in the protoc-bin-vendored crates. This build-dependency is what
// makes cargo download and unpack those crates before any build script runs.
//
// It also records the commit ipamd is built from (`moor_build_info`).
fn main() {
    let _ = protoc_bin_vendored::protoc_bin_path();
    println!("cargo:rerun-if-changed=build.rs");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=MOOR_BUILD_COMMIT={commit}");
    }
    // A new commit (HEAD moves, or the branch it names does) rebuilds it;
    // only files that exist are watched (cargo reruns a script whose watched
    // file is missing every time).
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &head]));
        watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
