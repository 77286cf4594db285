//! How the `moor` executable is linked. A runtime starts it for every pod
//! event, so what the dynamic loader does before `main` is paid on every
//! ADD and DEL (docs/benchmarks.md, "Process start"):
//!
//! - Not position-independent (`-no-pie`), as the reference plugins (Go:
//!   static, non-PIE) are: a PIE of this size makes the loader apply ~12,000
//!   relocations and copy-on-write some 60 pages at every start (148 page
//!   faults per VERSION against 88). libc keeps its address randomisation.
//! - The unwinder linked in from libgcc_eh.a (what Rust's own static builds
//!   use) instead of loading libgcc_s.so: one library less to map and
//!   relocate, and libgcc_s's constructor runs CPUID several times, each a
//!   trap to the hypervisor in a VM. rustc asks for `-lgcc_s`; a
//!   `libgcc_s.a` here, searched first, is a linker script that names
//!   gcc_eh instead (GNU ld reads a file that is not an archive as a script).
//!
//! Together with the C `main` (src/main.rs), `moor` VERSION went from
//! +0.45 ms to about +0.1 ms of CPU over `/bin/true`.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("libgcc_s.a"), "INPUT(-lgcc_eh)\n").expect("write into OUT_DIR");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-arg-bin=moor=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
