//! Sealing values at rest: secrets and task environments, encrypted with
//! AES-256-GCM under a key ring before they reach a key-value bucket.
//!
//! - **The key ring** is a file of 32-byte keys, one per line in hex (64
//!   digits; `#` starts a comment). The first key seals; every key opens.
//!   Rotating is: put a new key on the first line, keep the old ones below,
//!   run `runlog secret rotate` (everything is sealed again under the new
//!   key), then delete the old lines.
//! - **A sealed value** is `RLS1`, the sealing key's id (the first 8 bytes
//!   of its SHA-256), a random 12-byte nonce, then the ciphertext and its
//!   16-byte tag. The id names the key without revealing it, so a value
//!   sealed under a key no longer in the ring says which one it needs.
//! - **The context** (`secret:<name>`, `env:<execution>`) is authenticated
//!   with the value: a sealed value copied under another name or execution
//!   does not open.
//!
//! # Examples
//! ```
//! use runlog_events::sealing::Keyring;
//!
//! let ring = Keyring::parse(&Keyring::generate_line()).unwrap();
//! let sealed = ring.seal("secret:db-password", b"hunter22");
//! assert!(!sealed.windows(8).any(|w| w == b"hunter22"));
//! assert_eq!(&*ring.open("secret:db-password", &sealed).unwrap(), b"hunter22");
//! assert!(ring.open("secret:other", &sealed).is_err());
//! ```

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::envelope::hex;

/// What every sealed value starts with (format version 1).
pub const MAGIC: &[u8; 4] = b"RLS1";
const ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = MAGIC.len() + ID_LEN + NONCE_LEN;

/// Why a key ring cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The file cannot be read.
    #[error("cannot read the secret key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A line is not a key.
    #[error(
        "line {line} of the secret key file is not a key: write 64 hex digits (a 32-byte key; `runlog secret keygen` makes one)"
    )]
    BadKey {
        /// 1-based line number.
        line: usize,
    },
    /// The file holds no key.
    #[error("the secret key file holds no key: `runlog secret keygen` makes one")]
    Empty,
    /// Other users may read the file.
    #[error("the secret key file {path} may be read by other users (mode {mode:o}): chmod 600 it")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Why a sealed value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The bytes are not a sealed value (plain bytes written before values
    /// were sealed, or something else).
    #[error("the value is not sealed")]
    NotSealed,
    /// It was sealed under a key the ring does not hold.
    #[error("the value was sealed under key {0}, which the secret key file does not hold")]
    UnknownKey(String),
    /// It does not authenticate: altered, truncated, or sealed for another
    /// name or execution.
    #[error("the sealed value does not authenticate (altered, or sealed for another name)")]
    Corrupt,
}

struct RingKey {
    id: [u8; ID_LEN],
    cipher: Aes256Gcm,
}

/// The keys that seal and open values; the first one seals.
pub struct Keyring {
    keys: Vec<RingKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.ids())
            .finish()
    }
}

impl Keyring {
    /// A key ring from the text of a key file.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bytes = Zeroizing::new(unhex(line).ok_or(KeyringError::BadKey { line: n + 1 })?);
            let mut key = Key::<Aes256Gcm>::try_from(bytes.as_slice())
                .map_err(|_| KeyringError::BadKey { line: n + 1 })?;
            keys.push(RingKey::new(&key));
            key.as_mut_slice().zeroize();
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Keyring { keys })
    }

    /// The key ring in the file at `path`, which only its owner may read.
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let read = |source| KeyringError::Read {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(KeyringError::Exposed {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read)?);
        Keyring::parse(&text)
    }

    /// A new random key, as a line of a key file.
    pub fn generate_line() -> String {
        let mut key = Key::<Aes256Gcm>::generate();
        let line = hex(key.as_slice());
        key.as_mut_slice().zeroize();
        line
    }

    /// Writes a key file holding one new key at `path` (mode 0600); an
    /// existing file is left as it is. Returns whether it wrote one.
    pub fn create_file(path: &Path) -> std::io::Result<bool> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                let line = Zeroizing::new(Keyring::generate_line());
                writeln!(
                    file,
                    "# runlog secret key ring: the first key seals, every key opens.\n{}",
                    line.as_str()
                )?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The ids of its keys, the sealing one first (16 hex digits each).
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| hex(&k.id)).collect()
    }

    /// `plaintext` sealed for `context` under the first key.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let nonce = Nonce::generate();
        let aad = aad(&key.id, context);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM seals any value under 64 GiB");
        let mut sealed = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        sealed.extend_from_slice(MAGIC);
        sealed.extend_from_slice(&key.id);
        sealed.extend_from_slice(nonce.as_slice());
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// The plaintext of `sealed`, which was sealed for `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let (id, nonce, ciphertext) = split(sealed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| OpenError::UnknownKey(hex(&id)))?;
        let nonce = Nonce::try_from(nonce).map_err(|_| OpenError::Corrupt)?;
        key.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad(&id, context),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Corrupt)
    }

    /// Whether `sealed` is sealed under the current (first) key.
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        split(sealed).is_ok_and(|(id, _, _)| id == self.keys[0].id)
    }
}

impl RingKey {
    fn new(key: &Key<Aes256Gcm>) -> RingKey {
        let digest = Sha256::digest(key.as_slice());
        let mut id = [0; ID_LEN];
        id.copy_from_slice(&digest[..ID_LEN]);
        RingKey {
            id,
            cipher: Aes256Gcm::new(key),
        }
    }
}

/// Whether `bytes` look like a sealed value (they start with [`MAGIC`]).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

type Parts<'a> = ([u8; ID_LEN], &'a [u8], &'a [u8]);

fn split(sealed: &[u8]) -> Result<Parts<'_>, OpenError> {
    if !is_sealed(sealed) {
        return Err(OpenError::NotSealed);
    }
    if sealed.len() < HEADER_LEN + 16 {
        return Err(OpenError::Corrupt);
    }
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&sealed[MAGIC.len()..MAGIC.len() + ID_LEN]);
    let nonce = &sealed[MAGIC.len() + ID_LEN..HEADER_LEN];
    Ok((id, nonce, &sealed[HEADER_LEN..]))
}

fn aad(id: &[u8; ID_LEN], context: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(MAGIC.len() + ID_LEN + context.len());
    aad.extend_from_slice(MAGIC);
    aad.extend_from_slice(id);
    aad.extend_from_slice(context.as_bytes());
    aad
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(lines: &[&str]) -> Keyring {
        Keyring::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn a_value_opens_only_for_its_context_and_unaltered() {
        let ring = ring(&[&Keyring::generate_line()]);
        let sealed = ring.seal("env:e1", br#"{"A":"1"}"#);
        assert_eq!(&*ring.open("env:e1", &sealed).unwrap(), br#"{"A":"1"}"#);
        assert_eq!(ring.open("env:e2", &sealed), Err(OpenError::Corrupt));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(ring.open("env:e1", &altered), Err(OpenError::Corrupt));
        assert_eq!(
            ring.open("env:e1", &sealed[..HEADER_LEN + 3]),
            Err(OpenError::Corrupt)
        );
        assert_eq!(
            ring.open("env:e1", br#"{"A":"1"}"#),
            Err(OpenError::NotSealed)
        );
        // A fresh nonce each time: sealing twice gives different bytes.
        assert_ne!(ring.seal("env:e1", b"x"), ring.seal("env:e1", b"x"));
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let (old, new) = (Keyring::generate_line(), Keyring::generate_line());
        let before = ring(&[&old]);
        let sealed_old = before.seal("secret:a", b"one");
        let after = ring(&[&format!("{new}  # current"), "# retired:", &old]);
        assert_eq!(&*after.open("secret:a", &sealed_old).unwrap(), b"one");
        assert!(!after.is_current(&sealed_old));
        let sealed_new = after.seal("secret:a", b"two");
        assert!(after.is_current(&sealed_new));
        let unknown = before.open("secret:a", &sealed_new).unwrap_err();
        assert_eq!(unknown, OpenError::UnknownKey(after.ids()[0].clone()));
        assert!(unknown.to_string().contains(&after.ids()[0]));
    }

    #[test]
    fn bad_key_files_are_refused_by_line_and_never_echoed() {
        let err = Keyring::parse("# ring\n\nnot-a-key-but-a-secret\n").unwrap_err();
        assert!(matches!(err, KeyringError::BadKey { line: 3 }));
        assert!(!err.to_string().contains("not-a-key"));
        assert!(matches!(
            Keyring::parse(&"ab".repeat(16)),
            Err(KeyringError::BadKey { line: 1 })
        ));
        assert!(matches!(
            Keyring::parse("# nothing\n"),
            Err(KeyringError::Empty)
        ));
        let line = Keyring::generate_line();
        let debug = format!("{:?}", ring(&[&line]));
        assert!(!debug.contains(&line), "{debug}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_is_made_private_and_refused_when_others_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        assert!(Keyring::create_file(&path).unwrap());
        assert!(!Keyring::create_file(&path).unwrap(), "kept as it was");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.ids().len(), 1);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Keyring::load(&path),
            Err(KeyringError::Exposed { mode: 0o644, .. })
        ));
    }
}
