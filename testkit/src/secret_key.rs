//! A throwaway secret key file, the engine's and the workers'
//! `secret_key_file` in tests: one random 32-byte key in hex, mode 0600,
//! removed on drop.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A key file in a temporary directory of its own.
#[derive(Debug)]
pub struct SecretKey {
    dir: PathBuf,
    path: PathBuf,
}

impl SecretKey {
    /// Writes a new random key.
    pub fn new() -> anyhow::Result<SecretKey> {
        let dir = std::env::temp_dir().join(format!(
            "runlog-key-{}-{}",
            std::process::id(),
            crate::sshd::unique()
        ));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("secret.key");
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        writeln!(options.open(&path)?, "{hex}")?;
        Ok(SecretKey { dir, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file, for a config field.
    pub fn file(&self) -> Option<PathBuf> {
        Some(self.path.clone())
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
