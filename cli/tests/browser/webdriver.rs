//! A small W3C WebDriver client: headless Chromium driven by `chromedriver`
//! over its REST API with plain JSON, enough for the dashboard's tests.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A program found on `PATH` (or named by `var`), or a failure that says
/// how to install it.
fn program(var: &str, names: &[&str]) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{var}={} does not exist: point it at an installed binary, or unset it and \
             run ./scripts/setup.sh",
            path.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "{} not found on PATH: the browser tests need Chromium and chromedriver; \
         run ./scripts/setup.sh (it installs Debian's chromium and chromium-driver), \
         or set {var}",
        names[0]
    )
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A headless Chromium session, and the chromedriver that runs it; both
/// are killed on drop, with the browser's profile.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session.
    pub async fn start() -> Result<Browser> {
        let driver_bin = program("RUNLOG_CHROMEDRIVER", &["chromedriver"])?;
        let chromium = program(
            "RUNLOG_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        )?;
        let port = free_port()?;
        let profile = tempfile::tempdir()?;
        // Its own process group, so the browser it starts dies with it.
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", driver_bin.display()))?;
        let mut browser = Browser {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            session: format!("http://127.0.0.1:{port}"),
            driver,
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = match browser
                .http
                .get(format!("{}/status", browser.session))
                .send()
                .await
            {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if ready.is_some_and(|s| s["value"]["ready"] == true) {
                break;
            }
            if let Some(status) = browser.driver.try_wait()? {
                bail!("chromedriver exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("chromedriver on port {port} not ready within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--window-size=1400,900", "--disable-dev-shm-usage",
                        "--no-first-run", "--no-default-browser-check",
                        format!("--user-data-dir={}", browser.profile.path().display()),
                    ],
                },
            }},
        });
        let answer = browser.call("POST", "/session", capabilities).await?;
        let id = answer["sessionId"]
            .as_str()
            .context("no sessionId in the new session")?;
        browser.session = format!("{}/session/{id}", browser.session);
        Ok(browser)
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("WebDriver {method} {path}"))?;
        let status = response.status();
        let answer: Value = response.json().await.context("a WebDriver answer")?;
        if !status.is_success() {
            bail!(
                "WebDriver {method} {path}: {status}: {} {}",
                answer["value"]["error"],
                answer["value"]["message"]
            );
        }
        Ok(answer["value"].clone())
    }

    /// Loads `url` and waits for the document.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", json!({ "url": url })).await?;
        Ok(())
    }

    /// Reloads the page.
    pub async fn refresh(&self) -> Result<()> {
        self.call("POST", "/refresh", json!({})).await?;
        Ok(())
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns
    /// what it returns.
    pub async fn run(&self, script: &str, args: Value) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Runs `script`, which calls `arguments[arguments.length - 1]` with
    /// its result when done.
    pub async fn run_async(&self, script: &str, args: Value) -> Result<Value> {
        self.call(
            "POST",
            "/execute/async",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Polls `script` until it returns something other than `null` or
    /// `false`, or fails once `limit` passes.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        script: &str,
        args: Value,
    ) -> Result<Value> {
        runlog_testkit::eventually(limit, what, || async {
            let value = self.run(script, args.clone()).await?;
            ensure!(
                !value.is_null() && value != false,
                "the last answer is {value}"
            );
            Ok(Some(value))
        })
        .await
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) -> Result<()> {
        let found = self
            .call(
                "POST",
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await
            .with_context(|| format!("find {css}"))?;
        let element = found[ELEMENT]
            .as_str()
            .with_context(|| format!("no element reference for {css}: {found}"))?;
        self.call("POST", &format!("/element/{element}/click"), json!({}))
            .await?;
        Ok(())
    }

    /// Saves the viewport as a PNG.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let encoded = self.call("GET", "/screenshot", Value::Null).await?;
        let png = base64_decode(encoded.as_str().context("a base64 screenshot")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// Ends the session (the browser exits); drop kills what remains.
    pub async fn quit(self) -> Result<()> {
        self.call("DELETE", "", Value::Null).await?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (WebDriver screenshots), padding optional.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            other => bail!("invalid base64 byte {other:#x}"),
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[test]
fn base64_decodes_what_it_should() -> Result<()> {
    assert_eq!(base64_decode("aGVsbG8=")?, b"hello");
    assert_eq!(base64_decode("aGVsbG8gd29ybGQ")?, b"hello world");
    assert_eq!(base64_decode("")?, b"");
    assert!(base64_decode("a*b").is_err());
    Ok(())
}
