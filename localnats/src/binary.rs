//! Finding the nats-server binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::Error;

/// The nats-server version `./scripts/setup.sh` installs and the tests are written against.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// The environment variable that overrides where nats-server is.
pub const NATS_SERVER_ENV: &str = "RUNLOG_NATS_SERVER";

/// Where nats-server is looked for, in order. Build it with [`BinarySearch::from_env`] for the
/// real places, or by hand to test the outcome without touching the process environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinarySearch {
    /// The value of `RUNLOG_NATS_SERVER`, if set. When set, it must name a file.
    pub env: Option<OsString>,
    /// The binary `./scripts/setup.sh` installs: `<workspace>/.tools/pip/bin/nats-server`.
    pub tools: PathBuf,
    /// The value of `PATH`, searched for `nats-server` last.
    pub path: Option<OsString>,
}

impl BinarySearch {
    /// The places of this process: `$RUNLOG_NATS_SERVER`, the workspace's tool folder, `$PATH`.
    pub fn from_env() -> BinarySearch {
        BinarySearch {
            env: std::env::var_os(NATS_SERVER_ENV).filter(|value| !value.is_empty()),
            tools: Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .join(".tools/pip/bin/nats-server"),
            path: std::env::var_os("PATH"),
        }
    }

    /// The first binary found, or an error that lists the places searched and says how to
    /// install one.
    pub fn find(&self) -> Result<PathBuf, Error> {
        if let Some(env) = &self.env {
            let path = PathBuf::from(env);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(Error::EnvNotFound { path })
            };
        }
        if self.tools.is_file() {
            return Ok(normalize(&self.tools));
        }
        if let Some(found) = self
            .path
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
        {
            return Ok(found);
        }
        Err(Error::NotFound {
            looked_at: vec![
                format!("${NATS_SERVER_ENV}"),
                normalize(&self.tools).display().to_string(),
                "PATH".to_owned(),
            ],
            version: NATS_SERVER_VERSION,
        })
    }
}

/// The nats-server binary to run: `$RUNLOG_NATS_SERVER` (which must exist if set), else
/// `<workspace>/.tools/pip/bin/nats-server` (installed by `./scripts/setup.sh`), else
/// `nats-server` on `PATH`.
///
/// # Errors
///
/// [`Error::NotFound`] when there is none, [`Error::EnvNotFound`] when `RUNLOG_NATS_SERVER`
/// names a missing file.
pub fn nats_server_binary() -> Result<PathBuf, Error> {
    BinarySearch::from_env().find()
}

/// `<workspace>/localnats/../.tools` reads better as `<workspace>/.tools` in messages and logs.
fn normalize(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        let text = path.display().to_string();
        PathBuf::from(text.replace("/localnats/../", "/"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nowhere() -> BinarySearch {
        BinarySearch {
            env: None,
            tools: PathBuf::from("/nonexistent/runlog/localnats/../.tools/pip/bin/nats-server"),
            path: Some(OsString::from("/nonexistent/bin:/nonexistent/usr/bin")),
        }
    }

    #[test]
    fn a_missing_env_binary_is_an_error_not_a_fallback() {
        let search = BinarySearch {
            env: Some(OsString::from("/nonexistent/nats-server")),
            ..nowhere()
        };
        let message = search.find().unwrap_err().to_string();
        assert!(message.starts_with("RUNLOG_NATS_SERVER=/nonexistent/nats-server does not exist"));
        assert!(message.contains("./scripts/setup.sh"));
    }

    #[test]
    fn path_is_searched_last() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("nats-server");
        std::fs::write(&binary, b"").unwrap();
        let search = BinarySearch {
            path: Some(std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap()),
            ..nowhere()
        };
        assert_eq!(search.find().unwrap(), binary);
    }
}
