//! What is said to the remote shell: the command line (quoted for `sh`,
//! with the line that reports the process group first), the `kill` that
//! stops it, and reading that line back out of stderr.

use super::input::{SshInput, invalid};
use runlog_events::TaskError;

/// The start of the line the command writes to stderr before anything
/// else: `RUNLOG_SSH_PGID=<pid of its shell>`.
const MARKER: &[u8] = b"RUNLOG_SSH_PGID=";
/// Stderr bytes held back while looking for the marker line; past this the
/// line is passed on as output.
const MAX_PENDING: usize = 16 * 1024;

/// The command's name for messages, and the command line sent to sshd.
///
/// The line is `exec sh -c '<script>'`, so the user's login shell (bash,
/// zsh, fish…) only replaces itself with `sh`, which keeps its pid and so
/// its place as leader of the session sshd made. The script reports that
/// pid, changes directory, exports the environment, and `exec`s the
/// command.
pub(super) fn command(input: &SshInput) -> Result<(String, String), TaskError> {
    let mut script = String::from("echo \"RUNLOG_SSH_PGID=$$\" >&2; ");
    if let Some(cwd) = &input.cwd {
        script.push_str(&format!("cd {} || exit 126; ", quote(cwd)));
    }
    for (name, value) in &input.env {
        let valid = name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid || name.is_empty() {
            return Err(invalid(format!(
                "`env.{name}`: a name is letters, digits and `_`, not starting with a digit"
            )));
        }
        script.push_str(&format!("export {name}={}; ", quote(value)));
    }
    let name = match (&input.argv, &input.shell) {
        (Some(argv), None) => {
            let program = argv
                .first()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| invalid("`argv` must start with a program name"))?;
            let words: Vec<String> = argv.iter().map(|a| quote(a)).collect();
            script.push_str("exec ");
            script.push_str(&words.join(" "));
            format!("`{program}`")
        }
        (None, Some(shell)) => {
            script.push_str("exec sh -c ");
            script.push_str(&quote(shell));
            "the shell script".to_owned()
        }
        _ => {
            return Err(invalid(
                "give exactly one of `argv` (runs a program) and `shell` (runs `sh -c`)",
            ));
        }
    };
    Ok((name, format!("exec sh -c {}", quote(&script))))
}

/// The command that sends `signal` (`TERM`, `KILL`) to process group
/// `pgid`, falling back to its leader where `kill` takes no group.
pub(super) fn kill(pgid: u32, signal: &str) -> String {
    format!("kill -{signal} -- -{pgid} 2>/dev/null || kill -{signal} {pgid}")
}

/// `text` as one word for `sh`: in single quotes, each `'` written `'\''`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Finds the marker line at the start of stderr; what came before it (a
/// login script's output) and everything after passes through.
#[derive(Debug, Default)]
pub(super) struct PidLine {
    pending: Vec<u8>,
    found: bool,
}

impl PidLine {
    /// Takes stderr bytes, handing on what is output; the pid once the
    /// marker line is complete.
    pub(super) fn push(&mut self, mut bytes: &[u8], mut pass: impl FnMut(&[u8])) -> Option<u32> {
        let mut pgid = None;
        while !self.found && !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.pending.extend_from_slice(&bytes[..=end]);
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.pending);
                    match parse(&line) {
                        Some(pid) => {
                            self.found = true;
                            pgid = Some(pid);
                        }
                        None => pass(&line),
                    }
                }
                None => {
                    self.pending.extend_from_slice(bytes);
                    bytes = &[];
                    if self.pending.len() > MAX_PENDING {
                        pass(&std::mem::take(&mut self.pending));
                    }
                }
            }
        }
        if !bytes.is_empty() {
            pass(bytes);
        }
        pgid
    }

    /// Hands on what was held back when the stream ended.
    pub(super) fn finish(&mut self, mut pass: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            pass(&std::mem::take(&mut self.pending));
        }
    }
}

fn parse(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(MARKER)?;
    std::str::from_utf8(rest).ok()?.trim_end().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> SshInput {
        let mut base = serde_json::json!({"host": "h", "user": "u", "key": "K"});
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn argv_words_are_quoted_and_the_script_is_quoted_again() {
        let (name, line) = command(&input(serde_json::json!({
            "argv": ["printf", "%s\\n", "it's $HOME"],
            "env": {"MODE": "a b"},
            "cwd": "/srv/app",
        })))
        .unwrap();
        assert_eq!(name, "`printf`");
        // What the inner `sh -c` sees once the outer quotes are taken off.
        let script = "echo \"RUNLOG_SSH_PGID=$$\" >&2; cd '/srv/app' || exit 126; \
                      export MODE='a b'; exec 'printf' '%s\\n' 'it'\\''s $HOME'";
        assert_eq!(line, format!("exec sh -c {}", quote(script)));
        let bad = command(&input(
            serde_json::json!({"argv": ["true"], "env": {"A-B": "x"}}),
        ));
        assert!(bad.is_err());
        assert!(
            command(&input(
                serde_json::json!({"argv": ["true"], "shell": "true"})
            ))
            .is_err()
        );
    }

    #[test]
    fn the_pid_line_is_taken_out_wherever_the_packets_split_it() {
        let stream = b"motd line\nRUNLOG_SSH_PGID=4242\nreal error\n";
        for split in 0..stream.len() {
            let mut pid_line = PidLine::default();
            let mut passed = Vec::new();
            let mut found = None;
            for chunk in [&stream[..split], &stream[split..]] {
                if let Some(pid) = pid_line.push(chunk, |b| passed.extend_from_slice(b)) {
                    found = Some(pid);
                }
            }
            pid_line.finish(|b| passed.extend_from_slice(b));
            assert_eq!(found, Some(4242), "split at {split}");
            assert_eq!(passed, b"motd line\nreal error\n", "split at {split}");
        }
    }
}
