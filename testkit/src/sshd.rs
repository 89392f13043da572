//! A throwaway OpenSSH server for tests: Debian's `sshd` on a random
//! loopback port, with its own host key, configuration and log in a
//! temporary directory, and client keys of every type the `ssh` executor
//! reads. Killed and removed on drop. `scripts/setup.sh` installs the
//! `openssh-server` package; the system's own sshd configuration is never
//! read (`-f /dev/null`).
//!
//! It lets the user this process runs as log in with any of its keys
//! (`PermitRootLogin=prohibit-password` when that is root), logs every
//! accepted connection (`LogLevel=VERBOSE`, counted by
//! [`Sshd::accepted_connections`]), and can be stopped and started again
//! on the same port, with the same or a new host key.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long sshd may take to answer on its port.
const READY: Duration = Duration::from_secs(15);

/// The passphrase of [`KeyType::EncryptedEd25519`].
pub const PASSPHRASE: &str = "correct horse battery staple";

/// The client keys an [`Sshd`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `ssh-ed25519`.
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    Ecdsa,
    /// `ssh-rsa` (3072 bits), signed with SHA-2.
    Rsa,
    /// `ssh-ed25519`, its private key encrypted with [`PASSPHRASE`].
    EncryptedEd25519,
}

impl KeyType {
    /// Every type.
    pub const ALL: [KeyType; 4] = [
        KeyType::Ed25519,
        KeyType::Ecdsa,
        KeyType::Rsa,
        KeyType::EncryptedEd25519,
    ];

    fn file(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "id_ed25519",
            KeyType::Ecdsa => "id_ecdsa",
            KeyType::Rsa => "id_rsa",
            KeyType::EncryptedEd25519 => "id_ed25519_encrypted",
        }
    }

    fn keygen_args(self) -> [&'static str; 2] {
        match self {
            KeyType::Ed25519 | KeyType::EncryptedEd25519 => ["-t", "ed25519"],
            KeyType::Ecdsa => ["-t", "ecdsa"],
            KeyType::Rsa => ["-t", "rsa"],
        }
    }
}

/// A running sshd.
#[derive(Debug)]
pub struct Sshd {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    user: String,
}

impl Sshd {
    /// Generates a host key and the client keys in a new temporary
    /// directory and starts sshd.
    pub fn start() -> anyhow::Result<Sshd> {
        let binary = Path::new("/usr/sbin/sshd");
        if !binary.exists() {
            bail!("sshd is not installed (no /usr/sbin/sshd): run scripts/setup.sh");
        }
        let dir =
            std::env::temp_dir().join(format!("runlog-sshd-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)?;
        let mut sshd = Sshd {
            child: None,
            dir,
            port: free_port()?,
            user: whoami()?,
        };
        sshd.new_host_key()?;
        let mut authorized = String::new();
        for key in KeyType::ALL {
            let passphrase = if key == KeyType::EncryptedEd25519 {
                PASSPHRASE
            } else {
                ""
            };
            keygen(&sshd.dir.join(key.file()), &key.keygen_args(), passphrase)?;
            authorized.push_str(&std::fs::read_to_string(
                sshd.dir.join(format!("{}.pub", key.file())),
            )?);
        }
        std::fs::write(sshd.dir.join("authorized_keys"), authorized)?;
        sshd.start_again()?;
        Ok(sshd)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user that may log in: the one this process runs as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The private key of `key`, in OpenSSH's format.
    pub fn private_key(&self, key: KeyType) -> String {
        std::fs::read_to_string(self.dir.join(key.file())).unwrap_or_default()
    }

    /// The server's host key as a public key line (`ssh-ed25519 AAAA…`).
    pub fn host_key(&self) -> String {
        let line = std::fs::read_to_string(self.dir.join("host_ed25519.pub")).unwrap_or_default();
        // Drop the comment: `type base64 comment`.
        line.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A `known_hosts` line for this server.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}\n", self.port, self.host_key())
    }

    /// Connections accepted so far (an `Accepted publickey` line each).
    pub fn accepted_connections(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }

    /// sshd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Stops sshd (and so every connection it holds), keeping its port
    /// and keys for [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Each connection runs in processes of its own under the
            // listener: end them first, so connections drop as they would
            // when the host goes away.
            for pid in descendants(child.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replaces the host key; takes effect at the next start.
    pub fn new_host_key(&mut self) -> anyhow::Result<()> {
        let key = self.dir.join("host_ed25519");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        keygen(&key, &["-t", "ed25519"], "")
    }

    /// Starts sshd (again) on its port, and waits until it answers.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop();
        std::fs::create_dir_all("/run/sshd").ok();
        let dir = self.dir.display().to_string();
        let root_login = if self.user == "root" {
            "prohibit-password"
        } else {
            "no"
        };
        let options = [
            "ListenAddress=127.0.0.1".to_owned(),
            format!("HostKey={dir}/host_ed25519"),
            format!("AuthorizedKeysFile={dir}/authorized_keys"),
            format!("PidFile={dir}/sshd.pid"),
            format!("PermitRootLogin={root_login}"),
            "StrictModes=no".to_owned(),
            "PasswordAuthentication=no".to_owned(),
            "KbdInteractiveAuthentication=no".to_owned(),
            "UsePAM=no".to_owned(),
            "UseDNS=no".to_owned(),
            "LogLevel=VERBOSE".to_owned(),
            "MaxStartups=200".to_owned(),
            "MaxSessions=50".to_owned(),
        ];
        let mut command = Command::new("/usr/sbin/sshd");
        command
            .args(["-D", "-f", "/dev/null", "-p", &self.port.to_string()])
            .args(["-E", &format!("{dir}/sshd.log")]);
        for option in &options {
            command.args(["-o", option]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start sshd")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        use std::io::Read;
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut banner = [0; 8];
                if stream.read_exact(&mut banner).is_ok() && banner.starts_with(b"SSH-2.0") {
                    return Ok(());
                }
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("sshd exited with {status}: {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("sshd did not answer within {READY:?}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn keygen(path: &Path, args: &[&str], passphrase: &str) -> anyhow::Result<()> {
    let output = Command::new("ssh-keygen")
        .arg("-q")
        .args(args)
        .args(["-N", passphrase, "-C", "runlog-test", "-f"])
        .arg(path)
        .output()
        .context("cannot run ssh-keygen (openssh-client): run scripts/setup.sh")?;
    if !output.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Every process below `root`, from `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn whoami() -> anyhow::Result<String> {
    let output = Command::new("id").arg("-un").output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
