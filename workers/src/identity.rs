//! The user a worker's child processes run as (`runlog worker --run-as`).
//!
//! A worker started as root with `--run-as backup` starts every `shell`
//! and `script` program as `backup`: its uid and its primary group (no
//! supplementary groups), with `HOME`, `USER` and `LOGNAME` set to its
//! own. The worker itself stays root (it must, to change identity for each
//! child); what the tasks run cannot.

use nix::unistd::{Uid, User};

/// A user to run child processes as, looked up once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory.
    pub home: String,
}

/// Why `--run-as` cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunAsError {
    /// No such user on this host.
    #[error("--run-as {0:?}: there is no such user on this host")]
    Unknown(String),
    /// The user database could not be read.
    #[error("--run-as {name:?}: cannot read the user database ({reason})")]
    Lookup {
        /// The user asked for.
        name: String,
        /// What failed.
        reason: String,
    },
    /// Only root may start processes as another user.
    #[error(
        "--run-as {0:?} needs a worker started as root (it changes identity for each child \
         process); this one runs as uid {1}"
    )]
    NotRoot(String, u32),
}

impl RunAs {
    /// Looks `name` (a user name or a numeric uid) up in the user
    /// database.
    pub fn lookup(name: &str) -> Result<RunAs, RunAsError> {
        let found = match name.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(name),
        }
        .map_err(|e| RunAsError::Lookup {
            name: name.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| RunAsError::Unknown(name.to_owned()))?;
        let euid = nix::unistd::geteuid();
        if !euid.is_root() && found.uid != euid {
            return Err(RunAsError::NotRoot(name.to_owned(), euid.as_raw()));
        }
        Ok(RunAs {
            name: found.name,
            uid: found.uid.as_raw(),
            gid: found.gid.as_raw(),
            home: found.dir.display().to_string(),
        })
    }

    /// Whether processes started as this user are root's.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Makes `command` start as this user: its uid and primary group.
    /// Supplementary groups are dropped (the standard library clears them
    /// when root starts a process under another uid, and this workspace
    /// forbids the `unsafe` a `pre_exec` hook to set them would need).
    pub(crate) fn apply(&self, command: &mut tokio::process::Command) {
        command
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .uid(self.uid)
            .gid(self.gid);
    }
}

/// Whether child processes started with `run_as` would be root's.
pub fn children_run_as_root(run_as: Option<&RunAs>) -> bool {
    match run_as {
        Some(user) => user.is_root(),
        None => nix::unistd::geteuid().is_root(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_by_name_and_uid() {
        let me = nix::unistd::geteuid();
        let by_uid = RunAs::lookup(&me.as_raw().to_string()).unwrap();
        assert_eq!(by_uid.uid, me.as_raw());
        let by_name = RunAs::lookup(&by_uid.name).unwrap();
        assert_eq!(by_name, by_uid);
        assert_eq!(
            RunAs::lookup("no-such-user-here"),
            Err(RunAsError::Unknown("no-such-user-here".into()))
        );
    }
}
