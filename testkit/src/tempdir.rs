//! Files and folders in the temporary directory that go away with the test:
//! each is removed when its value is dropped (also when the test panics), so
//! `just test` leaves nothing behind in `$TMPDIR` (or `/tmp`).
//!
//! Both deref to `Path`, so they drop in where a `PathBuf` from
//! `std::env::temp_dir().join(...)` was: `&file`, `file.to_str()`,
//! `dir.join("state.json")`. Keep the value alive as long as anything reads
//! the path (a child process started with `--config FILE` that has not read it
//! yet, say): declared before the `Proc`, it is dropped after it.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh folder `$TMPDIR/<prefix>-<pid>-<n>`, removed with all it holds on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A path `$TMPDIR/<name>` (not created: write it yourself), removed on drop,
/// whether a file or a folder was made there. The name should hold the pid
/// (`format!("gw-term-{}.json", std::process::id())`): test binaries run at once.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    pub fn new(name: impl AsRef<Path>) -> TempFile {
        TempFile {
            path: std::env::temp_dir().join(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.path.is_dir() {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_are_gone_after_drop() {
        let dir = TempDir::new("testkit-tempdir");
        std::fs::write(dir.join("a"), "x").unwrap();
        let kept = dir.to_path_buf();
        let file = TempFile::new(format!("testkit-tempfile-{}.json", std::process::id()));
        std::fs::write(&file, "{}").unwrap();
        assert!(file.to_str().unwrap().ends_with(".json"));
        let file_path = file.to_path_buf();
        drop((dir, file));
        assert!(!kept.exists() && !file_path.exists());
    }
}
