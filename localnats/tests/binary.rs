//! Finding nats-server, and what the user is told when it is missing.

use std::ffi::OsString;
use std::path::PathBuf;

use runlog_localnats::BinarySearch;

#[test]
fn missing_binary_error_names_the_setup_command() {
    let search = BinarySearch {
        env: None,
        tools: PathBuf::from("/nonexistent/runlog/.tools/pip/bin/nats-server"),
        path: Some(OsString::from("/nonexistent/bin:/nonexistent/usr/bin")),
    };
    let error = search.find().expect_err("nothing to find");
    assert!(matches!(error, runlog_localnats::Error::NotFound { .. }));
    assert_eq!(
        error.to_string(),
        "nats-server not found (looked at $RUNLOG_NATS_SERVER, \
         /nonexistent/runlog/.tools/pip/bin/nats-server, PATH): \
         run `./scripts/setup.sh` to install the pinned nats-server 2.15.1"
    );
}

#[test]
fn the_pinned_binary_is_found() {
    let binary = runlog_localnats::nats_server_binary().expect("./scripts/setup.sh was run");
    let version = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("nats-server: v{}", runlog_localnats::NATS_SERVER_VERSION)
    );
}
