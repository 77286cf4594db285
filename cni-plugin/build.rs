//! How the `moor` executable is linked. A runtime starts it for every pod
//! event, so what the dynamic loader does before `main` is paid on every
//! ADD and DEL (docs/benchmarks.md, "Process start"):
//!
//! - Static, as the reference plugins (Go: static, non-PIE) are: no dynamic
//!   loader, no libc.so and libm.so to map, relocate and resolve ~200
//!   symbols against at every start (`-z now`), and fewer mappings to tear
//!   down at exit. `moor` VERSION: 0.58 → 0.36 ms of CPU, 85 → 56 page
//!   faults (`perf stat -r 400`), below a dynamic `/bin/true` (0.38 ms).
//!   glibc's static-linking caveats are about NSS (user and host name
//!   lookups) and iconv, neither of which the plugin uses: it talks to ipamd
//!   over a unix socket.
//! - Not position-independent (`-no-pie`): a PIE of this size makes the
//!   loader apply ~12,000 relocations and copy-on-write some 60 pages at
//!   every start.
//! - The unwinder linked in from libgcc_eh.a (what Rust's own static builds
//!   use) instead of loading libgcc_s.so.
//!
//! rustc links glibc targets dynamically unless `-C target-feature=+crt-static`
//! is given, and Cargo has no stable way to give it to one binary (in
//! `.cargo/config.toml` it reaches every crate, and proc-macros cannot be
//! built with it). So every plain `cargo build` links `moor` statically this
//! way: rustc asks for `-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc`; for
//! each of them a `lib*.a` here, searched before the system's directories,
//! is a linker script naming the static archive (GNU ld and lld read a file
//! that is not an archive as a script), and `-static` makes the driver use
//! the static start files and no program interpreter. The archives are
//! found with `cc -print-file-name`; without them (no libc6-dev's libc.a)
//! the plugin is linked dynamically, as before, with a warning.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The libraries rustc names for a dynamically linked glibc target, and the
/// static archives each stands for. libc comes with libgcc (compiler
/// helpers) and libgcc_eh (the unwinder), which static glibc itself needs.
const STATIC_LIBS: &[(&str, &[&str])] = &[
    ("c", &["libc.a", "libgcc.a", "libgcc_eh.a"]),
    ("m", &["libm.a"]),
    ("rt", &["librt.a"]),
    ("pthread", &["libpthread.a"]),
    ("dl", &["libdl.a"]),
    ("util", &["libutil.a"]),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // musl targets link statically on their own.
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // For every binary and test of the crate: libgcc_s is the static unwinder.
    std::fs::write(out.join("libgcc_s.a"), "INPUT(-lgcc_eh)\n").expect("write into OUT_DIR");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-arg-bin=moor=-no-pie");
    // Only for the `moor` binary: its own search directory, so that the
    // crate's test binaries stay dynamic.
    let dir = out.join("static");
    match write_static_scripts(&dir) {
        Ok(()) => {
            println!("cargo:rustc-link-arg-bin=moor=-L{}", dir.display());
            println!("cargo:rustc-link-arg-bin=moor=-static");
        }
        Err(why) => println!(
            "cargo:warning=moor is linked dynamically ({why}); install libc6-dev for a static \
             plugin that starts faster"
        ),
    }
}

fn write_static_scripts(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for (lib, archives) in STATIC_LIBS {
        let paths = archives
            .iter()
            .map(|a| archive_path(a))
            .collect::<Result<Vec<_>, _>>()?;
        let script = format!("GROUP({})\n", paths.join(" "));
        let file = dir.join(format!("lib{lib}.a"));
        std::fs::write(&file, script).map_err(|e| format!("write {}: {e}", file.display()))?;
    }
    Ok(())
}

/// Where the C compiler finds `archive`: it prints the bare name when it
/// finds nothing.
fn archive_path(archive: &str) -> Result<String, String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let output = Command::new(&cc)
        .arg(format!("-print-file-name={archive}"))
        .output()
        .map_err(|e| format!("run {cc}: {e}"))?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || !Path::new(&path).is_absolute() || !Path::new(&path).is_file() {
        return Err(format!("{cc} does not find {archive}"));
    }
    if path.contains(|c: char| c.is_whitespace() || c == ')' || c == '(') {
        return Err(format!(
            "{archive} is at {path}, a path a linker script cannot name"
        ));
    }
    Ok(path)
}
