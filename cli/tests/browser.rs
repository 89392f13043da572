//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! against a real engine, worker and nats-server.
//!
//! - a shell task's progress bar moves, with the task's own message, until
//!   the row says `succeeded`;
//! - Cancel on an execution page ends a running execution `cancelled`;
//! - a reload while events flow loses none and shows none twice: the list
//!   holds every execution once, in the API's state, and an execution's
//!   timeline every event sequence once, in order;
//! - the schedules section runs a schedule now, pauses and resumes it, and
//!   a click on its row shows its next ticks and its runs;
//! - the servers section tests a server's connection against a real sshd
//!   and shows the host's `uname`, and a refused key as a failure.
//!
//! Needs `chromium` and `chromedriver` (`./scripts/setup.sh` installs them).
//! With `RUNLOG_SCREENSHOTS=1` the tests also save `docs/img/dashboard.png`
//! and `docs/img/execution.png`.

#[path = "browser/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use runlog_engine::{Engine, EngineConfig};
use runlog_testkit::{NatsServer, eventually};
use runlog_worker::runtime::{Worker, WorkerConfig};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use webdriver::Browser;

/// True once the first page is listed and the live feed is open.
const LIST_READY: &str = r#"
    const list = document.getElementById('list');
    const feed = document.getElementById('feed');
    return !!list && list.dataset.loaded === 'true' && feed.dataset.state === 'live';
"#;

/// The row of execution `arguments[0]`, as the page shows it.
const ROW: &str = r#"
    const row = document.querySelector(`#list .row[data-id="${arguments[0]}"]`);
    if (!row) return null;
    const progress = row.querySelector('.progress');
    return {
        status: row.dataset.status,
        percent: progress.dataset.percent,
        message: row.querySelector('.msg').textContent,
    };
"#;

/// Records every change of a row's progress from now on in `window.__progress`.
const RECORD_PROGRESS: &str = r#"
    window.__progress = [];
    new MutationObserver((records) => {
        for (const m of records) {
            const row = m.target.closest('.row[data-id]');
            if (!row) continue;
            window.__progress.push({
                id: row.dataset.id,
                attr: m.attributeName,
                value: m.target.getAttribute(m.attributeName),
            });
        }
    }).observe(document.getElementById('list'), {
        subtree: true, attributes: true, attributeFilter: ['data-percent', 'data-message'],
    });
    return true;
"#;

/// Scrolls the whole (virtualised) list through and reports every row by
/// its index, and any id shown twice at once.
const COLLECT_LIST: &str = r#"
    const done = arguments[arguments.length - 1];
    (async () => {
        const list = document.getElementById('list');
        const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
        const rows = {};
        const twice = [];
        const step = Math.max(40, Math.floor(list.clientHeight / 2));
        for (let y = 0; ; y += step) {
            list.scrollTop = y;
            list.dispatchEvent(new Event('scroll'));
            await frame();
            await frame();
            const shown = new Set();
            for (const row of list.querySelectorAll('.row[data-id]')) {
                if (shown.has(row.dataset.id)) twice.push(row.dataset.id);
                shown.add(row.dataset.id);
                rows[row.dataset.index] = [row.dataset.id, row.dataset.status];
            }
            if (y + list.clientHeight >= list.scrollHeight) break;
        }
        list.scrollTop = 0;
        done({ total: Number(list.dataset.total), rows, twice });
    })();
"#;

/// The timeline of the execution page: each item's sequence and type.
const TIMELINE: &str = r#"
    const view = document.getElementById('exec-view');
    if (view.hidden || view.dataset.id !== arguments[0]) return null;
    return {
        status: document.getElementById('exec-status').dataset.status || '',
        complete: document.getElementById('timeline').dataset.complete === 'true',
        events: [...document.querySelectorAll('#timeline li')].map((li) => [Number(li.dataset.seq), li.dataset.type]),
    };
"#;

/// An engine, a worker and a browser on a fresh nats-server.
struct Stack {
    browser: Browser,
    shutdown: CancellationToken,
    engine: Engine,
    worker: JoinHandle<Result<(), runlog_worker::runtime::WorkerError>>,
    http: reqwest::Client,
    base: String,
    server: NatsServer,
}

impl Stack {
    async fn start(concurrency: usize) -> Result<Stack> {
        Self::start_with_secrets(concurrency, None).await
    }

    /// A stack whose worker resolves secrets from `secrets` when given.
    async fn start_with_secrets(
        concurrency: usize,
        secrets: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<Stack> {
        // First, so that a missing browser fails at once with its remedy.
        let browser = Browser::start().await?;
        let server = NatsServer::start()?;
        let shutdown = CancellationToken::new();
        let engine = Engine::start(EngineConfig::local(&server.url()), shutdown.clone()).await?;
        let client = async_nats::connect(server.url()).await?;
        let worker = Worker::new(
            client,
            WorkerConfig {
                nats_url: server.url(),
                id: "worker-1".into(),
                concurrency: concurrency.try_into()?,
                // The registry (the workers panel) follows load closely.
                heartbeat: Duration::from_secs(1),
                ..WorkerConfig::default()
            },
            runlog_worker::executor::builtin(),
        );
        let worker = match secrets {
            Some(secrets) => worker.with_secrets(secrets),
            None => worker,
        };
        let worker = tokio::spawn(worker.run(shutdown.clone()));
        let base = format!("http://{}", engine.addr());
        Ok(Stack {
            browser,
            shutdown,
            engine,
            worker,
            http: reqwest::Client::new(),
            base,
            server,
        })
    }

    async fn submit(&self, spec: &Value) -> Result<String> {
        let reply: Value = self
            .http
            .post(format!("{}/v1/executions", self.base))
            .json(spec)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(reply["id"].as_str().context("an id")?.to_owned())
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Every execution's state, from the API.
    async fn states(&self) -> Result<Vec<(String, String)>> {
        let list = self.get("/v1/executions?limit=1000").await?;
        Ok(list["executions"]
            .as_array()
            .context("executions")?
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap_or_default().to_owned(),
                    e["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// Opens the dashboard and waits until its list is live.
    async fn open_list(&self) -> Result<()> {
        self.browser.goto(&format!("{}/", self.base)).await?;
        self.browser
            .wait_for(
                "the list loads and the feed is live",
                Duration::from_secs(20),
                LIST_READY,
                json!([]),
            )
            .await?;
        Ok(())
    }

    async fn stop(self) -> Result<()> {
        self.browser.quit().await?;
        self.shutdown.cancel();
        self.worker.await??;
        self.engine.wait().await;
        Ok(())
    }
}

fn screenshots() -> Option<PathBuf> {
    (std::env::var("RUNLOG_SCREENSHOTS").as_deref() == Ok("1"))
        .then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/img"))
}

const TERMINAL: [&str; 5] = [
    "succeeded",
    "cancelled",
    "timed_out",
    "dead_lettered",
    "rejected",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_task_s_progress_bar_moves_to_done() -> Result<()> {
    let stack = Stack::start(2).await?;
    let b = &stack.browser;
    stack.open_list().await?;
    b.run(RECORD_PROGRESS, json!([])).await?;

    let id = stack
        .submit(&json!({
            "kind": "shell",
            "input": {
                "shell": "for i in 1 2 3 4 5 6 7 8 9 10; do \
                          echo \"step $i of 10\"; echo \"progress $((i * 10))% copying part $i\"; \
                          sleep 0.3; done",
                "progress": {"regex": "^progress (?P<percent>[0-9.]+)% (?P<message>.*)$"},
            },
        }))
        .await?;
    let row = b
        .wait_for(
            "the row says succeeded",
            Duration::from_secs(30),
            &format!(
                "const r = (() => {{ {ROW} }})(); return r && r.status === 'succeeded' ? r : null;"
            ),
            json!([id]),
        )
        .await?;
    ensure!(row["percent"] == "100", "a done bar is full: {row}");

    let changes = b
        .run(
            "return window.__progress.filter((p) => p.id === arguments[0]);",
            json!([id]),
        )
        .await?;
    let changes = changes.as_array().context("recorded changes")?;
    let percents: Vec<f64> = changes
        .iter()
        .filter(|c| c["attr"] == "data-percent")
        .filter_map(|c| c["value"].as_str()?.parse().ok())
        .collect();
    ensure!(
        percents.iter().any(|p| *p > 0.0 && *p < 100.0),
        "the bar showed no step between 0 and 100: {percents:?}"
    );
    ensure!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "the bar went backwards: {percents:?}"
    );
    ensure!(
        changes.iter().any(|c| c["attr"] == "data-message"
            && c["value"]
                .as_str()
                .is_some_and(|m| m.starts_with("copying part"))),
        "the task's own message was never shown: {changes:?}"
    );
    let api = stack.get(&format!("/v1/executions/{id}")).await?;
    ensure!(api["status"] == "succeeded", "{api}");

    // Its page shows the output and the logs; a refused action shows the
    // problem's detail.
    b.click(&format!("#list .row[data-id=\"{id}\"] a.id"))
        .await?;
    b.wait_for(
        "the execution page shows the output and every log line",
        Duration::from_secs(10),
        r#"
            const status = document.getElementById('exec-status').dataset.status;
            const result = document.getElementById('exec-result');
            const lines = [...document.querySelectorAll('#logs .log .text')].map((n) => n.textContent);
            return status === 'succeeded' && !result.hidden && result.dataset.kind === 'output'
                && lines.includes('step 1 of 10') && lines.includes('step 10 of 10')
                && lines.length === 20;
        "#,
        json!([]),
    )
    .await?;
    // What the attempt used: among the facts and in its row (docs/costs.md).
    let used = b
        .run(
            r#"
                const facts = Object.fromEntries([...document.querySelectorAll('#exec-facts div')]
                    .map((d) => [d.querySelector('dt').textContent, d.querySelector('dd').textContent]));
                const cells = [...document.querySelectorAll('#attempts tbody tr td')].map((td) => td.textContent);
                return {facts, cells};
            "#,
            json!([]),
        )
        .await?;
    let facts = &used["facts"];
    ensure!(
        ["cpu", "peak memory", "output + logs"]
            .iter()
            .all(|f| facts[f].as_str().is_some_and(|v| !v.is_empty())),
        "the page does not show what the attempt used: {used}"
    );
    ensure!(
        used["cells"][7].as_str().is_some_and(|c| c.ends_with("B")),
        "the attempt's peak RSS cell: {used}"
    );
    let retry_disabled = b
        .run(
            "return document.getElementById('retry').disabled;",
            json!([]),
        )
        .await?;
    ensure!(retry_disabled == true, "Retry is offered for a success");
    b.run(
        "document.getElementById('retry').disabled = false;",
        json!([]),
    )
    .await?;
    b.click("#retry").await?;
    let detail = b
        .wait_for(
            "the refusal's detail is shown",
            Duration::from_secs(10),
            r#"
                const p = document.getElementById('action-error');
                return p.hidden ? null : p.textContent;
            "#,
            json!([]),
        )
        .await?;
    ensure!(
        detail
            .as_str()
            .is_some_and(|d| d.contains("only a dead-lettered, timed-out or cancelled")),
        "not the problem's detail: {detail}"
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflow_page_draws_the_graph_live_and_shows_a_node_s_logs() -> Result<()> {
    let stack = Stack::start(4).await?;
    let b = &stack.browser;
    // `work` holds at a gate the test opens once the page has drawn it
    // running, however long the browser takes to load the page.
    let dir = tempfile::tempdir()?;
    let gate = dir.path().join("gate");
    let defined = stack
        .http
        .post(format!("{}/v1/workflows", stack.base))
        .header("content-type", "application/yaml")
        .body(
            r#"
name: page
version: 1
nodes:
  first: {kind: echo, input: {n: 3}}
  big:
    kind: condition
    depends_on: [first]
    input: "${{ .nodes.first.output.n > 2 }}"
  work:
    kind: shell
    depends_on: [big]
    when: ".nodes.big.output.result"
    input:
      shell: "echo working on ${{ .nodes.first.output.n }}; until [ -e \"$GATE\" ]; do sleep 0.05; done; echo done"
      env: {GATE: "GATE_PATH"}
  other:
    kind: echo
    depends_on: [big]
    when: ".nodes.big.output.result | not"
"#
            .replace("GATE_PATH", &gate.display().to_string()),
        )
        .send()
        .await?;
    ensure!(
        defined.status().as_u16() == 201,
        "{}",
        defined.text().await?
    );
    let started: Value = stack
        .http
        .post(format!("{}/v1/workflows/page/executions", stack.base))
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = started["id"].as_str().context("an id")?.to_owned();
    b.goto(&format!("{}/#/workflows/{id}", stack.base)).await?;
    const NODES: &str = r#"
        const nodes = {};
        for (const g of document.querySelectorAll('#wf-graph .wf-node')) nodes[g.dataset.node] = g.dataset.status;
        return nodes;
    "#;
    b.wait_for(
        "every node drawn, `work` running and `other` skipped",
        Duration::from_secs(20),
        &format!(
            "const n = (() => {{ {NODES} }})();              return n.work === 'running' && n.other === 'skipped' && n.first === 'succeeded'                 && document.querySelectorAll('#wf-graph .wf-edge').length === 3 ? n : null;"
        ),
        json!([]),
    )
    .await?;
    std::fs::write(&gate, b"")?;
    b.click("#wf-graph .wf-node[data-node=\"work\"]").await?;
    let shown = b
        .wait_for(
            "the workflow succeeds live, and the node shows its output and logs",
            Duration::from_secs(20),
            r#"
                const status = document.getElementById('wf-status').dataset.status;
                const panel = document.getElementById('wf-node');
                const logs = [...document.querySelectorAll('#wf-node-logs .log .text')].map((l) => l.textContent);
                const output = document.getElementById('wf-node-output').textContent;
                return status === 'succeeded' && panel.dataset.node === 'work' && !panel.hidden
                    && logs.includes('done') && output.includes('working on 3')
                    ? { logs, runs: document.querySelectorAll('#wf-runs tr').length } : null;
            "#,
            json!([]),
        )
        .await?;
    ensure!(shown["logs"][0] == "working on 3", "{shown}");
    ensure!(shown["runs"] == 1, "{shown}");
    if let Some(dir) = screenshots() {
        b.screenshot(&dir.join("workflow.png")).await?;
    }
    stack.stop().await
}

/// The row of schedule `arguments[0]` in the schedules section, as shown.
const SCHEDULE_ROW: &str = r#"
    const row = document.querySelector(`#sched-rows tr[data-id="${arguments[0]}"]`);
    if (!row || document.getElementById('sched-view').hidden) return null;
    const toggle = row.querySelector('.sched-actions button:not([data-action="run-now"])');
    return {
        status: row.dataset.status,
        runs: row.dataset.runs,
        last: row.dataset.lastStatus,
        when: row.querySelector('.sched-when').textContent,
        toggle: toggle.dataset.action,
        toggleText: toggle.textContent,
        disabled: [...row.querySelectorAll('button')].some((b) => b.disabled),
    };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_section_runs_a_schedule_now_and_pauses_and_resumes_it() -> Result<()> {
    let stack = Stack::start(2).await?;
    let b = &stack.browser;
    // Its only tick is on New Year's Day: every run here is the button's.
    let created = stack
        .http
        .post(format!("{}/v1/schedules", stack.base))
        .json(&json!({
            "id": "new-year",
            "cron": "0 0 1 1 *",
            "time_zone": "Europe/Berlin",
            "task": {"kind": "shell", "input": {"shell": "true"}},
        }))
        .send()
        .await?;
    ensure!(
        created.status().as_u16() == 201,
        "{}",
        created.text().await?
    );
    stack.open_list().await?;
    let row = |what: &'static str, condition: &str| {
        let script = format!(
            "const r = (() => {{ {SCHEDULE_ROW} }})(); return r && !r.disabled && ({condition}) ? r : null;"
        );
        async move {
            b.wait_for(what, Duration::from_secs(10), &script, json!(["new-year"]))
                .await
        }
    };
    let shown = row(
        "the schedule's row, active and never run",
        "r.status === 'active' && r.runs === '0' && r.last === ''",
    )
    .await?;
    ensure!(
        shown["when"] == "0 0 1 1 * · Europe/Berlin" && shown["toggleText"] == "Pause",
        "{shown}"
    );

    b.click(r#"#sched-rows tr[data-id="new-year"] button[data-action="run-now"]"#)
        .await?;
    row(
        "the row shows one run, succeeded",
        "r.runs === '1' && r.last === 'succeeded'",
    )
    .await?;
    let runs = stack.get("/v1/schedules/new-year/runs").await?;
    let runs = runs["runs"].as_array().context("runs")?;
    ensure!(
        runs.len() == 1 && runs[0]["trigger"] == "manual" && runs[0]["status"] == "succeeded",
        "{runs:?}"
    );
    let execution = runs[0]["execution"].as_str().context("an execution")?;

    // The row opens its detail: the next five ticks and the run, linked to
    // its execution's page.
    b.click(r#"#sched-rows tr[data-id="new-year"] td.sched-when"#)
        .await?;
    let detail = b
        .wait_for(
            "the detail shows five ticks and the manual run",
            Duration::from_secs(10),
            r#"
                const panel = document.getElementById('sched-detail');
                const runs = [...document.querySelectorAll('#sched-runs tr')];
                if (panel.hidden || panel.dataset.id !== 'new-year' || runs.length !== 1) return null;
                return {
                    ticks: document.querySelectorAll('#sched-ticks li time').length,
                    trigger: runs[0].dataset.trigger,
                    href: runs[0].querySelector('a').getAttribute('href'),
                };
            "#,
            json!([]),
        )
        .await?;
    ensure!(
        detail["ticks"] == 5
            && detail["trigger"] == "manual"
            && detail["href"] == format!("#/executions/{execution}"),
        "{detail}"
    );

    // A paused schedule has no next tick, in its row or its detail.
    b.click(r#"#sched-rows tr[data-id="new-year"] button[data-action="pause"]"#)
        .await?;
    row(
        "the row shows the schedule paused",
        "r.status === 'paused' && r.toggle === 'resume' && r.toggleText === 'Resume' \
         && !document.querySelector('#sched-ticks li time')",
    )
    .await?;
    let api = stack.get("/v1/schedules/new-year").await?;
    ensure!(
        api["status"] == "paused" && api["paused_reason"] == "paused from the dashboard",
        "{api}"
    );

    b.click(r#"#sched-rows tr[data-id="new-year"] button[data-action="resume"]"#)
        .await?;
    row(
        "the row shows the schedule active again",
        "r.status === 'active' && r.toggle === 'pause' \
         && document.querySelectorAll('#sched-ticks li time').length === 5",
    )
    .await?;
    let api = stack.get("/v1/schedules/new-year").await?;
    ensure!(api["status"] == "active" && api["run_count"] == 1, "{api}");
    stack.stop().await
}

/// The row of server `arguments[0]` in the servers section, as shown.
const SERVER_ROW: &str = r#"
    const row = document.querySelector(`#srv-rows tr[data-id="${arguments[0]}"]`);
    if (!row || document.getElementById('srv-view').hidden) return null;
    return {
        test: row.dataset.test,
        address: row.querySelector('.srv-address').textContent,
        labels: row.querySelector('.srv-labels').textContent,
        result: row.querySelector('.srv-result span').textContent,
        detail: row.querySelector('.srv-result .small').textContent,
        last: row.querySelector('.srv-last .badge').dataset.status,
    };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_section_tests_a_connection_and_shows_the_host() -> Result<()> {
    use runlog_testkit::{KeyType, Sshd};
    let sshd = Sshd::start()?;
    let secrets = [("web-key".to_owned(), sshd.private_key(KeyType::Ed25519))].into();
    let stack = Stack::start_with_secrets(2, Some(secrets)).await?;
    let b = &stack.browser;
    for (name, secret) in [("web-1", "web-key"), ("web-2", "missing-key")] {
        let created = stack
            .http
            .post(format!("{}/v1/servers", stack.base))
            .json(&json!({
                "name": name, "address": "127.0.0.1", "port": sshd.port(),
                "user": sshd.user(), "key_secret": secret,
                "host_key": sshd.host_key(), "labels": {"role": "web"},
            }))
            .send()
            .await?;
        ensure!(
            created.status().as_u16() == 201,
            "{}",
            created.text().await?
        );
    }
    stack.open_list().await?;
    let row = |name: &'static str, what: &'static str, condition: &'static str| {
        let script = format!(
            "const r = (() => {{ {SERVER_ROW} }})(); return r && ({condition}) ? r : null;"
        );
        async move {
            b.wait_for(what, Duration::from_secs(20), &script, json!([name]))
                .await
        }
    };
    let shown = row("web-1", "the server's row, never tested", "r.test === ''").await?;
    ensure!(
        shown["address"] == format!("{}@127.0.0.1:{}", sshd.user(), sshd.port())
            && shown["labels"] == "role=web",
        "{shown}"
    );

    b.click(r#"#srv-rows tr[data-id="web-1"] button[data-action="test"]"#)
        .await?;
    let tested = row("web-1", "the row shows the test passed", "r.test === 'ok'").await?;
    ensure!(
        tested["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("ok · "))
            && tested["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("Linux")),
        "{tested}"
    );
    // The probe is the server's newest run.
    row(
        "web-1",
        "the row shows the probe as its last run",
        "r.last === 'succeeded'",
    )
    .await?;

    b.click(r#"#srv-rows tr[data-id="web-2"] button[data-action="test"]"#)
        .await?;
    let failed = row(
        "web-2",
        "the row shows the test failed",
        "r.test === 'failed'",
    )
    .await?;
    ensure!(failed["result"] == "failed · permission", "{failed}");
    if let Some(dir) = screenshots() {
        b.screenshot(&dir.join("servers.png")).await?;
    }
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_the_execution_page_ends_the_execution_cancelled() -> Result<()> {
    let stack = Stack::start(2).await?;
    let b = &stack.browser;
    let id = stack
        .submit(&json!({
            "kind": "shell",
            "queue": "backups",
            "labels": {"team": "infra"},
            "input": {
                "shell": "echo \"restic backup /srv/data --json\"; \
                          echo \"repository 5f3c2a opened (version 2, compression level auto)\"; \
                          for i in $(seq 1 12); do \
                            echo \"[$((i * 3))%] uploaded chunk $i/40 ($((i * 64)) MiB)\"; sleep 0.02; \
                          done; \
                          echo \"slow upstream: waiting for the remote to settle\" >&2; \
                          exec sleep 600",
                "progress": {"regex": "^\\[(?P<percent>[0-9.]+)%\\] (?P<message>.*)$"},
                "kill_grace_ms": 1000,
            },
        }))
        .await?;
    // A worker on the queue `backups`.
    let client = async_nats::connect(stack.server.url()).await?;
    let backups = Worker::new(
        client,
        WorkerConfig {
            nats_url: stack.server.url(),
            id: "backup-worker".into(),
            queues: vec![runlog_events::QueueName::new("backups")?],
            heartbeat: Duration::from_secs(1),
            ..WorkerConfig::default()
        },
        runlog_worker::executor::builtin(),
    );
    let backups = tokio::spawn(backups.run(stack.shutdown.clone()));

    b.goto(&format!("{}/#/executions/{id}", stack.base)).await?;
    b.wait_for(
        "the page shows it running, its progress and its logs",
        Duration::from_secs(20),
        r#"
            const status = document.getElementById('exec-status').dataset.status;
            const percent = document.getElementById('exec-progress').dataset.percent;
            const lines = document.querySelectorAll('#logs .log').length;
            return status === 'running' && percent === '36' && lines === 15;
        "#,
        json!([]),
    )
    .await?;
    if let Some(dir) = screenshots() {
        // Let the side panels' next refresh show the worker busy.
        b.wait_for(
            "the worker panel shows the running attempt",
            Duration::from_secs(10),
            "return document.querySelector('#workers .worker[data-running=\"1\"]') !== null;",
            json!([]),
        )
        .await?;
        b.screenshot(&dir.join("execution.png")).await?;
    }

    b.click("#cancel").await?;
    b.wait_for(
        "the page shows it cancelled",
        Duration::from_secs(20),
        "return document.getElementById('exec-status').dataset.status === 'cancelled';",
        json!([]),
    )
    .await?;
    let api = stack.get(&format!("/v1/executions/{id}")).await?;
    ensure!(
        api["status"] == "cancelled",
        "the API says {}",
        api["status"]
    );
    ensure!(
        api["reason"] == "cancelled from the dashboard",
        "{}",
        api["reason"]
    );
    let timeline = b
        .wait_for(
            "the timeline ends with the cancel",
            Duration::from_secs(10),
            &format!(
                "const t = (() => {{ {TIMELINE} }})(); \
                 return t && t.events.some((e) => e[1] === 'cancelled') ? t : null;"
            ),
            json!([id]),
        )
        .await?;
    let types: Vec<&str> = timeline["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e[1].as_str())
        .collect();
    ensure!(
        types.contains(&"cancel_requested") && types.last() == Some(&"cancelled"),
        "{types:?}"
    );
    let buttons = b
        .run(
            "return [document.getElementById('cancel').disabled, document.getElementById('retry').disabled];",
            json!([]),
        )
        .await?;
    ensure!(
        buttons == json!([true, false]),
        "a cancelled execution can be retried, not cancelled: {buttons}"
    );
    stack.shutdown.cancel();
    backups.await??;
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_mid_stream_shows_every_execution_and_event_exactly_once() -> Result<()> {
    const TASKS: usize = 30;
    let stack = Stack::start(6).await?;
    let b = &stack.browser;
    let dir = tempfile::tempdir()?;

    // One execution's page, reloaded between its attempts: the first fails
    // at once, the second waits at a gate that opens with the reload, and
    // fails; the third succeeds.
    let tries = dir.path().join("tries");
    let go = dir.path().join("go");
    let flaky = stack
        .submit(&json!({
            "kind": "shell",
            "input": {
                "shell": "n=$(( $(cat \"$TRIES\" 2>/dev/null || echo 0) + 1 )); echo $n > \"$TRIES\"; \
                          echo \"attempt $n\"; \
                          if [ $n -gt 1 ]; then until [ -e \"$GO\" ]; do sleep 0.05; done; fi; \
                          sleep 0.2; \
                          if [ $n -lt 3 ]; then echo 'upstream said 503' >&2; exit 1; fi",
                "env": {"TRIES": tries, "GO": go},
            },
            "retry": {"max_attempts": 3, "backoff_base_ms": 300, "backoff_max_ms": 300},
        }))
        .await?;
    b.goto(&format!("{}/#/executions/{flaky}", stack.base))
        .await?;
    b.wait_for(
        "the first attempt fails and the second starts",
        Duration::from_secs(20),
        &format!(
            "const t = (() => {{ {TIMELINE} }})(); \
             return t && t.events.filter((e) => e[1] === 'started').length === 2;"
        ),
        json!([flaky]),
    )
    .await?;
    std::fs::write(&go, b"")?;
    b.refresh().await?;
    let timeline = b
        .wait_for(
            "the reloaded page follows it to the end",
            Duration::from_secs(20),
            &format!(
                "const t = (() => {{ {TIMELINE} }})(); \
                 return t && t.complete && t.status === 'succeeded' \
                    && t.events.some((e) => e[1] === 'succeeded') ? t : null;"
            ),
            json!([flaky]),
        )
        .await?;
    let shown: Vec<u64> = timeline["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e[0].as_u64())
        .collect();
    let history = stack.get(&format!("/v1/executions/{flaky}/events")).await?;
    let logged: Vec<u64> = history["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(
        shown == logged,
        "the timeline shows {shown:?}, the log holds {logged:?}"
    );
    // queued (with the spec), then started, failed, retry_scheduled and
    // queued for each attempt but the last, which starts and ends.
    ensure!(
        logged.len() >= 11,
        "three attempts make at least 11 events: {logged:?}"
    );

    // The list, reloaded while thirty executions move.
    b.goto(&format!("{}/#/", stack.base)).await?;
    b.wait_for(
        "the list is live",
        Duration::from_secs(10),
        LIST_READY,
        json!([]),
    )
    .await?;
    let gate = dir.path().join("gate");
    let specs: Vec<Value> = (0..TASKS)
        .map(|i| {
            let wait = "until [ -e \"$GATE\" ]; do sleep 0.05; done";
            match i % 10 {
                3 => json!({
                    "kind": "shell",
                    "queue": "default",
                    "input": {
                        "shell": format!("{wait}; echo 'cannot reach backup host' >&2; exit 2"),
                        "env": {"GATE": gate},
                    },
                    "retry": {"max_attempts": 2, "backoff_base_ms": 300, "backoff_max_ms": 300},
                }),
                _ => json!({
                    "kind": "shell",
                    "input": {
                        "shell": format!(
                            "{wait}; for i in $(seq 1 {steps}); do \
                             echo \"$((i * 100 / {steps}))% table $i of {steps}\"; sleep 0.25; done",
                            steps = 3 + i % 4
                        ),
                        "env": {"GATE": gate},
                        "progress": {"regex": "^(?P<percent>[0-9]+)% (?P<message>.*)$"},
                    },
                }),
            }
        })
        .collect();
    let ids: Vec<String> = futures::stream::iter(&specs)
        .map(|spec| stack.submit(spec))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    for id in ids.iter().skip(7).step_by(10) {
        let reply = stack
            .http
            .post(format!("{}/v1/executions/{id}/cancel", stack.base))
            .json(&json!({"reason": "not needed tonight"}))
            .send()
            .await?;
        ensure!(
            reply.status().is_success(),
            "cancel {id}: {}",
            reply.status()
        );
    }
    eventually(
        Duration::from_secs(20),
        "six tasks wait at the gate",
        || async {
            let running = stack.get("/v1/executions?status=running").await?;
            Ok((running["executions"].as_array().map_or(0, Vec::len) >= 6).then_some(()))
        },
    )
    .await?;

    std::fs::write(&gate, b"")?;
    b.refresh().await?;
    b.wait_for(
        "the list is live again",
        Duration::from_secs(20),
        LIST_READY,
        json!([]),
    )
    .await?;
    if let Some(dir) = screenshots() {
        b.wait_for(
            "the list shows a mix of states",
            Duration::from_secs(15),
            r#"
                const list = document.getElementById('list').getBoundingClientRect();
                const rows = [...document.querySelectorAll('#list .row[data-id]')].filter((r) => {
                    const box = r.getBoundingClientRect();
                    return box.top >= list.top && box.bottom <= list.bottom;
                });
                const n = (s) => rows.filter((r) => r.dataset.status === s).length;
                const moving = rows.filter((r) => r.dataset.status === 'running'
                    && Number(r.querySelector('.progress').dataset.percent) > 0).length;
                return moving >= 2 && n('succeeded') >= 1 && n('cancelled') >= 1
                    && (n('retry_scheduled') + n('dead_lettered') + n('failed')) >= 1;
            "#,
            json!([]),
        )
        .await?;
        b.screenshot(&dir.join("dashboard.png")).await?;
    }

    let expected = eventually(Duration::from_secs(30), "every execution ends", || async {
        let states = stack.states().await?;
        Ok(states
            .iter()
            .all(|(_, s)| TERMINAL.contains(&s.as_str()))
            .then_some(states))
    })
    .await?;
    ensure!(expected.len() == TASKS + 1, "{} executions", expected.len());
    // The page may trail the API by a frame or a feed message: compare
    // until both agree or the deadline passes; a row shown twice fails at once.
    let what = "the page to list what the API lists";
    eventually(Duration::from_secs(15), what, || async {
        let seen = b.run_async(COLLECT_LIST, json!([])).await?;
        // A row shown twice fails at once, not at the deadline.
        assert!(
            seen["twice"].as_array().is_some_and(Vec::is_empty),
            "rows shown twice: {}",
            seen["twice"]
        );
        let rows = seen["rows"].as_object().context("rows")?;
        let listed: Vec<(String, String)> = (0..rows.len())
            .filter_map(|i| rows.get(&i.to_string()))
            .map(|row| {
                (
                    row[0].as_str().unwrap_or_default().to_owned(),
                    row[1].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        ensure!(
            seen["total"] == json!(expected.len()) && listed == expected,
            "the API lists {expected:?}; the page {seen}"
        );
        Ok(Some(()))
    })
    .await?;
    stack.stop().await
}

/// Records the gaps between animation frames and the long tasks from now on.
const WATCH_FRAMES: &str = r#"
    window.__frames = [];
    window.__long = [];
    let last = performance.now();
    const tick = (t) => {
        window.__frames.push(t - last);
        last = t;
        requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.__long.push(e.duration);
    }).observe({ type: 'longtask' });
    return true;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load check of about two minutes: cargo test -p runlog --test browser -- --ignored"]
async fn ten_thousand_executions_keep_the_list_responsive() -> Result<()> {
    const TASKS: usize = 10_000;
    let stack = Stack::start(32).await?;
    let b = &stack.browser;
    let spec = json!({"kind": "shell", "input": {"argv": ["true"]}});
    let submit_many = |n: usize| {
        futures::stream::iter(0..n)
            .map(|_| stack.submit(&spec))
            .buffer_unordered(64)
            .collect::<Vec<_>>()
    };
    // Half of them listed by the first load, half arriving through the feed.
    let first: Result<Vec<_>> = submit_many(TASKS / 2).await.into_iter().collect();
    first?;
    let opened = Instant::now();
    stack.open_list().await?;
    let loaded = b
        .wait_for(
            "the first half is listed",
            Duration::from_secs(60),
            &format!(
                "return Number(document.getElementById('list').dataset.total) >= {} || null;",
                TASKS / 2
            ),
            json!([]),
        )
        .await;
    loaded?;
    let load_time = opened.elapsed();
    b.run(WATCH_FRAMES, json!([])).await?;
    let started = Instant::now();
    let second: Result<Vec<_>> = submit_many(TASKS / 2).await.into_iter().collect();
    second?;
    eventually(Duration::from_secs(120), "every execution ends", || async {
        let stats = stack.get("/v1/stats").await?;
        Ok((stats["by_status"]["succeeded"] == json!(TASKS)).then_some(()))
    })
    .await?;
    let busy = started.elapsed();
    // Every one of them, succeeded, as the page sees it.
    b.click("#filters [data-filter=\"succeeded\"]").await?;
    b.wait_for(
        "the page lists all of them succeeded",
        Duration::from_secs(20),
        &format!("return document.getElementById('list').dataset.total === '{TASKS}';"),
        json!([]),
    )
    .await?;
    let frames = b
        .run(
            "return { frames: window.__frames, long: window.__long };",
            json!([]),
        )
        .await?;
    let mut gaps: Vec<f64> = frames["frames"]
        .as_array()
        .context("frames")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    gaps.sort_by(f64::total_cmp);
    let long: f64 = frames["long"]
        .as_array()
        .context("long tasks")?
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    let pct = |p: f64| gaps[((gaps.len() - 1) as f64 * p) as usize];
    // Scrolling to the middle draws the rows there at the next frame.
    let middle = b
        .run_async(
            r#"
                const done = arguments[arguments.length - 1];
                const list = document.getElementById('list');
                const t0 = performance.now();
                list.scrollTop = list.scrollHeight / 2;
                list.dispatchEvent(new Event('scroll'));
                requestAnimationFrame(() => requestAnimationFrame(() => {
                    const rows = [...list.querySelectorAll('.row[data-id]')];
                    done({ ms: performance.now() - t0, rows: rows.length,
                           first: Math.min(...rows.map((r) => Number(r.dataset.index))) });
                }));
            "#,
            json!([]),
        )
        .await?;
    println!(
        "{TASKS} executions: first half listed {load_time:.2?} after opening; second half \
         submitted and all ended in {busy:.2?}; {} frames meanwhile, gap p50 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms; long tasks {long:.0} ms in all; scroll to the middle \
         drawn in {:.0} ms ({} rows in the DOM, from index {})",
        gaps.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        middle["ms"].as_f64().unwrap_or_default(),
        middle["rows"],
        middle["first"],
    );
    ensure!(
        middle["rows"].as_u64().is_some_and(|n| n < 100),
        "only the rows in view are drawn: {middle}"
    );
    ensure!(
        pct(0.99) < 250.0,
        "frames stalled: p99 gap {:.0} ms",
        pct(0.99)
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_search_box_finds_a_line_and_links_to_its_execution() -> Result<()> {
    let stack = Stack::start(2).await?;
    let b = &stack.browser;
    let mut ids = Vec::new();
    for i in 0..3 {
        let planted = if i == 1 {
            "echo 'quota exceeded on bucket photos'; "
        } else {
            ""
        };
        let shell = format!("echo start {i}; {planted}echo done {i}");
        ids.push(
            stack
                .submit(&json!({"kind": "shell", "input": {"shell": shell}}))
                .await?,
        );
    }
    runlog_testkit::eventually(
        Duration::from_secs(30),
        "the three tasks succeed",
        || async {
            let states = stack.states().await?;
            Ok((states.iter().filter(|(_, s)| s == "succeeded").count() == 3).then_some(()))
        },
    )
    .await?;
    stack.open_list().await?;
    b.run(
        "document.getElementById('ls-query').value = 'quota exceeded'; return true;",
        json!([]),
    )
    .await?;
    b.click("[data-testid=log-search-go]").await?;
    let found = b
        .wait_for(
            "the matching line is listed",
            Duration::from_secs(20),
            "const rows = [...document.querySelectorAll('[data-testid=log-match]')]; \
             if (rows.length === 0) return null; \
             return { rows: rows.length, \
                      line: rows[0].querySelector('.ls-line').textContent, \
                      href: rows[0].querySelector('a').getAttribute('href'), \
                      state: document.getElementById('ls-state').textContent };",
            json!([]),
        )
        .await?;
    ensure!(
        found["rows"] == 1
            && found["line"] == "quota exceeded on bucket photos"
            && found["href"] == format!("#/executions/{}", ids[1])
            && found["state"]
                .as_str()
                .is_some_and(|s| s.starts_with("1 match · scanned ") && s.contains("(every line)")),
        "{found}"
    );
    // The match links to its execution.
    b.click("#ls-rows a").await?;
    b.wait_for(
        "the execution page opens",
        Duration::from_secs(20),
        "const id = document.getElementById('exec-id'); \
         return !document.getElementById('exec-view').hidden ? id.textContent : null;",
        json!([]),
    )
    .await?;
    b.run("location.hash = '#/'; return true;", json!([]))
        .await?;
    // A regular expression that does not compile is refused in words.
    b.run(
        "document.getElementById('ls-query').value = '(unclosed'; \
         document.getElementById('ls-regex').checked = true; return true;",
        json!([]),
    )
    .await?;
    b.click("[data-testid=log-search-go]").await?;
    b.wait_for(
        "the refusal is shown",
        Duration::from_secs(20),
        "const p = document.getElementById('ls-error'); \
         return !p.hidden && p.textContent.startsWith('Search refused') ? p.textContent : null;",
        json!([]),
    )
    .await?;
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_dashboard_asks_for_a_token_and_logs_in_with_it() -> Result<()> {
    let browser = Browser::start().await?;
    let server = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("admin-token");
    let mut config = EngineConfig::local(&server.url());
    config.auth = true;
    config.bootstrap_token_file = Some(file.clone());
    let shutdown = CancellationToken::new();
    let engine = Engine::start(config, shutdown.clone()).await?;
    let base = format!("http://{}", engine.addr());
    let admin = std::fs::read_to_string(&file)?.trim().to_owned();
    let http = reqwest::Client::new();
    let made: Value = http
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"name": "viewer", "scopes": ["read"]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = made["token"].as_str().context("a token")?.to_owned();
    let exec: Value = http
        .post(format!("{base}/v1/executions"))
        .bearer_auth(&admin)
        .json(&json!({"kind": "shell", "input": {"shell": "true"}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let exec = exec["id"].as_str().context("an id")?.to_owned();

    const LOGIN_SHOWN: &str = "const f = document.getElementById('login'); \
        return f && f.style.display !== 'none' ? true : null;";
    browser.goto(&format!("{base}/")).await?;
    browser
        .wait_for(
            "the login form",
            Duration::from_secs(20),
            LOGIN_SHOWN,
            json!([]),
        )
        .await?;
    // A wrong token is refused in words.
    browser
        .run(
            "document.getElementById('login-token').value = '0a0b0c0d.wrong'; return true;",
            json!([]),
        )
        .await?;
    browser.click("[data-testid=login-submit]").await?;
    let refused = browser
        .wait_for(
            "the refusal",
            Duration::from_secs(20),
            "const e = document.getElementById('login-error'); return e.hidden ? null : e.textContent;",
            json!([]),
        )
        .await?;
    ensure!(
        refused.as_str().is_some_and(|t| t.contains("not valid")),
        "{refused}"
    );
    browser
        .run(
            "document.getElementById('login-token').value = arguments[0]; return true;",
            json!([token]),
        )
        .await?;
    browser.click("[data-testid=login-submit]").await?;
    browser
        .wait_for(
            "the list loads and the feed is live once logged in",
            Duration::from_secs(20),
            LIST_READY,
            json!([]),
        )
        .await?;
    let seen = browser
        .wait_for(
            "the execution's row and the viewer's name",
            Duration::from_secs(20),
            "const row = document.querySelector(`#list .row[data-id=\"${arguments[0]}\"]`); \
             const who = document.getElementById('who'); \
             return row && !who.hidden ? document.getElementById('who-name').textContent : null;",
            json!([exec]),
        )
        .await?;
    ensure!(seen == "viewer", "{seen}");
    // The token is in an HttpOnly cookie: no script on the page reads it.
    let cookies = browser.run("return document.cookie;", json!([])).await?;
    ensure!(
        !cookies.as_str().unwrap_or_default().contains(&token),
        "{cookies}"
    );
    browser.click("[data-testid=logout]").await?;
    browser
        .wait_for(
            "the login form after logging out",
            Duration::from_secs(20),
            LOGIN_SHOWN,
            json!([]),
        )
        .await?;
    browser.quit().await?;
    shutdown.cancel();
    engine.wait().await;
    Ok(())
}
