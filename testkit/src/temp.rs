use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A directory, removed with all it holds on drop. Derefs to its path.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory `LABEL-PID-N` under the system temp dir.
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(crate::unique(label));
        TempDir::create(path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates `path` afresh (a leftover of an earlier run is removed first).
    pub fn create(path: PathBuf) -> Result<TempDir, String> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
