//! A throwaway PostgreSQL server for tests: `initdb` in a temporary
//! directory, `postgres` on a random loopback port, killed and removed on
//! drop. Debian's `postgresql` package provides the binaries
//! (`scripts/setup.sh` installs it); PostgreSQL refuses to run as root, so
//! as root both run as the package's `postgres` user through `setpriv`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long the server may take to accept connections.
const READY: Duration = Duration::from_secs(30);

/// A running PostgreSQL server with trust authentication for `postgres`.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    /// Initialises a cluster in a new temporary directory and starts it.
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = binaries()?;
        let dir =
            std::env::temp_dir().join(format!("runlog-pg-{}-{}", std::process::id(), unique()));
        let (data, sockets) = (dir.join("data"), dir.join("sockets"));
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&sockets)?;
        let user = run_as()?;
        if let Some((uid, gid)) = user {
            for path in [&dir, &data, &sockets] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| {
                    format!("cannot hand {} to the postgres user", path.display())
                })?;
            }
        }
        let mut postgres = Postgres {
            child: None,
            dir,
            port: 0,
        };
        let initdb = as_user(user, &bin.join("initdb"))
            .args(["-D", &data.display().to_string()])
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("cannot run initdb")?;
        if !initdb.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr).trim()
            );
        }
        let log = std::fs::File::create(postgres.dir.join("postgres.log"))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(postgres.dir.join("postgres.log"), Some(uid), Some(gid))?;
        }
        postgres.port = free_port()?;
        let child = as_user(user, &bin.join("postgres"))
            .args(["-D", &data.display().to_string()])
            .args(["-p", &postgres.port.to_string()])
            .args(["-k", &sockets.display().to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "log_statement=all"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start postgres")?;
        postgres.child = Some(child);
        postgres.wait_ready(&bin)?;
        Ok(postgres)
    }

    /// The connection string (`postgres://postgres@127.0.0.1:PORT/postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log (every statement, `log_statement=all`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, bin: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY;
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("postgres exited with {status}: {}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections within {READY:?}: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn binaries() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context(
            "PostgreSQL is not installed (/usr/lib/postgresql is missing): run scripts/setup.sh",
        )?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/<version>/bin/postgres: run scripts/setup.sh")
}

/// The uid and gid to run as: the `postgres` user when this process is
/// root, else `None` (this user).
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("no postgres user: is Debian's postgresql package installed?")?;
    let fields: Vec<&str> = line.split(':').collect();
    let id = |i: usize| -> anyhow::Result<u32> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("an unreadable /etc/passwd line for postgres")
    };
    Ok(Some((id(2)?, id(3)?)))
}

fn as_user(user: Option<(u32, u32)>, program: &Path) -> Command {
    match user {
        None => Command::new(program),
        Some((uid, gid)) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            command
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
