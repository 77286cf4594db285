//! The binaries under test, found in the target directory of the running test
//! or bench executable (`target/<profile>/deps/NAME-HASH` -> `target/<profile>/`),
//! so a test run always drives the binaries of the same profile. The
//! upgrade test also runs the previous release's, which
//! `scripts/build-upgrade-from` puts in `target/upgrade-from/bin/`
//! ([`previous_release`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(Debug)]
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
        bins_in(
            dir,
            "build the binaries first: cargo build --workspace --bins",
        )
    })
}

/// The binaries in `dir`; panics naming `fix` when one is missing.
fn bins_in(dir: &Path, fix: &str) -> Bins {
    let find = |name: &str| {
        let p = dir.join(name);
        assert!(p.is_file(), "{} is missing: {fix}", p.display());
        p
    };
    Bins {
        moor: find("moor"),
        ipamd: find("ipamd"),
        ipamctl: find("ipamctl"),
    }
}

/// The commit of the previous release, from `tests/upgrade-from` (its one
/// line that is not a comment).
pub fn previous_release_commit() -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("upgrade-from");
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let rev: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        rev.len() == 1 && rev[0].len() == 40,
        "{} must hold one full commit hash, found {rev:?}",
        file.display()
    );
    rev[0].to_string()
}

/// The previous release's `moor`, `ipamd` and `ipamctl`, built by
/// `scripts/build-upgrade-from` into `<target>/upgrade-from/bin/`; panics
/// (never skips) when they are missing or of another commit than
/// `tests/upgrade-from` names.
pub fn previous_release() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let target = bins().dir().parent().expect("a profile dir has a parent");
        let dir = target.join("upgrade-from").join("bin");
        let rev = previous_release_commit();
        let fix = format!(
            "the upgrade test needs the previous release ({rev}, tests/upgrade-from) built: \
             run scripts/build-upgrade-from"
        );
        let stamp = std::fs::read_to_string(dir.join("STAMP")).unwrap_or_default();
        assert_eq!(
            stamp.trim(),
            rev,
            "{} holds no build of {rev}: {fix}",
            dir.display()
        );
        bins_in(&dir, &fix)
    })
}
