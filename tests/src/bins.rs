//! The binaries under test, found in the target directory of the running test
//! or bench executable (`target/<profile>/deps/NAME-HASH` -> `target/<profile>/`),
//! so a test run always drives the binaries of the same profile.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub struct Bins {
    pub moor: PathBuf,
    pub ipamd: PathBuf,
    pub ipamctl: PathBuf,
}

impl Bins {
    /// The directory holding the binaries (CNI_PATH for `moor`).
    pub fn dir(&self) -> &Path {
        self.moor.parent().expect("binary has a directory")
    }
}

/// The binaries; panics with what to run when one is missing.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let exe = std::env::current_exe().expect("path of the test executable");
        let deps = exe.parent().expect("test executable has a directory");
        // Tests run from target/<profile>/deps, examples from
        // target/<profile>/examples; be lenient if run from the profile
        // directory itself.
        let dir = if deps
            .file_name()
            .is_some_and(|n| n == "deps" || n == "examples")
        {
            deps.parent().expect("deps has a parent")
        } else {
            deps
        };
        let find = |name: &str| {
            let p = dir.join(name);
            assert!(
                p.is_file(),
                "{} is missing: build the binaries first: cargo build --workspace --bins",
                p.display()
            );
            p
        };
        Bins {
            moor: find("moor"),
            ipamd: find("ipamd"),
            ipamctl: find("ipamctl"),
        }
    })
}
