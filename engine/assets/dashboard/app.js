// The runlog dashboard. It reads the engine's /v1 API like any client:
//
// - the list is one page-by-page load of GET /v1/executions, then the
//   GET /v1/stream feed resumed from the projection's sequence read before
//   the first page, so no event falls between the two; an event at or below
//   a row's last_seq is already in it and is skipped, so none counts twice;
// - an execution page reads its history and logs, then follows their feeds
//   from the last sequence it holds;
// - workers, queues and stats are polled every few seconds.
//
// Rows live in a Map by id; only the rows in view exist in the DOM, and
// every change is drawn at the next animation frame.
'use strict';

const ROW_HEIGHT = 44;
const OVERSCAN = 8;
const PAGE = 1000;
const MAX_LOADED = 100000;
const REFRESH_MS = 3000;
const MAX_LOG_LINES = 10000;
const MAX_STASHED = 50000;
const DETAIL_FETCHES = 4;

const EVENT_TYPES = [
  'submitted', 'queued', 'started', 'progress', 'log', 'heartbeat', 'succeeded', 'failed',
  'retry_scheduled', 'cancel_requested', 'cancelled', 'timed_out', 'attempt_lost',
  'dead_lettered', 'rejected',
];
const STATES = [
  'pending', 'queued', 'running', 'retry_scheduled', 'failed', 'succeeded', 'cancelled',
  'timed_out', 'dead_lettered', 'rejected',
];
const TERMINAL = new Set(['succeeded', 'cancelled', 'timed_out', 'dead_lettered', 'rejected']);
const RETRYABLE = new Set(['failed', 'dead_lettered', 'timed_out', 'cancelled']);
const FILTERS = [
  ['all', 'all', null],
  ['active', 'active', new Set(['pending', 'queued', 'running', 'retry_scheduled', 'failed'])],
  ['running', 'running', new Set(['running'])],
  ['succeeded', 'succeeded', new Set(['succeeded'])],
  ['problems', 'failed', new Set(['failed', 'dead_lettered', 'timed_out', 'rejected'])],
  ['cancelled', 'cancelled', new Set(['cancelled'])],
];

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------- formatting

function label(state) {
  return String(state || '').replace(/_/g, ' ');
}

function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '';
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

// Bytes in powers of 1000, as the price table's GB: `512 B`, `3.4 KB`, `210 MB`.
function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let unit = 0;
  while (n >= 1000 && unit < units.length - 1) { n /= 1000; unit += 1; }
  return unit === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[unit]}`;
}

// CPU time (user and system) of resources, in ms; null when not measured.
function cpuMs(r) {
  if (!r || (r.cpu_user_ms == null && r.cpu_system_ms == null)) return null;
  return (r.cpu_user_ms || 0) + (r.cpu_system_ms || 0);
}

function between(from, to) {
  if (!from) return null;
  const start = Date.parse(from);
  const end = to ? Date.parse(to) : Date.now();
  return Number.isFinite(start) && Number.isFinite(end) ? end - start : null;
}

function ago(time) {
  const ms = between(time, null);
  return ms === null ? '' : `${duration(ms)} ago`;
}

function clock(time) {
  if (!time) return '';
  const d = new Date(time);
  if (Number.isNaN(d.getTime())) return '';
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function stamp(time) {
  if (!time) return '';
  const d = new Date(time);
  return Number.isNaN(d.getTime()) ? '' : `${d.toLocaleDateString()} ${clock(time)}`;
}

function percentOf(value) {
  const n = Number(value);
  return value === null || value === undefined || !Number.isFinite(n) ? null : Math.min(100, Math.max(0, n));
}

// ---------------------------------------------------------------- HTTP

class ProblemError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function request(method, path, body) {
  const init = { method, headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = { detail: text.slice(0, 300) };
  }
  if (!response.ok) throw new ProblemError(response.status, json);
  return json;
}

const getJSON = (path) => request('GET', path);
const enc = encodeURIComponent;

// ---------------------------------------------------------------- login

// With auth on, every route needs a token. The dashboard asks for one and
// hands it to POST /v1/session, which keeps it in an HttpOnly session
// cookie: no script reads it, and it is gone when the browser closes.
async function gate() {
  let session = null;
  try {
    session = await getJSON('/v1/session');
  } catch (_) {
    return; // an older engine, or none: the page shows its own errors
  }
  if (!session || !session.auth) return;
  if (session.name) {
    $('who-name').textContent = session.name;
    $('who').hidden = false;
    $('logout').addEventListener('click', async () => {
      await request('DELETE', '/v1/session').catch(() => {});
      location.reload();
    });
    return;
  }
  document.querySelector('main').style.display = 'none';
  const form = $('login');
  form.style.display = '';
  $('login-token').focus();
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await request('POST', '/v1/session', { token: $('login-token').value.trim() });
      location.reload();
    } catch (err) {
      $('login-error').textContent = err.message;
      $('login-error').hidden = false;
    }
  });
  // The page reloads once logged in; until then nothing else starts.
  await new Promise(() => {});
}

// ---------------------------------------------------------------- the store

// Every known execution, by id; `newer` holds ids created by the feed
// (oldest first), `older` the loaded pages (newest first), so the list in
// display order is newer reversed, then older.
const store = {
  byId: new Map(),
  newer: [],
  older: [],
  loaded: false,
  stash: new Map(),
  stashed: 0,
};

function newRow(id) {
  return {
    id, status: 'pending', attempt: 0, queue: '', kind: '', priority: '', worker: null,
    submitted_at: null, started_at: null, finished_at: null, reason: null, last_seq: 0,
    cancel_requested: false, percent: null, message: null, progressKnown: false, ver: 0,
  };
}

function rowFromSummary(s) {
  const row = newRow(s.id);
  Object.assign(row, {
    status: s.status, attempt: s.attempt || 0, queue: s.queue || '', kind: s.kind || '',
    priority: s.priority || '', worker: s.worker || null, submitted_at: s.submitted_at,
    started_at: s.started_at, finished_at: s.finished_at, reason: s.reason,
    cancel_requested: !!s.cancel_requested, last_seq: s.last_seq || 0,
  });
  row.progressKnown = row.status !== 'running';
  return row;
}

// A lifecycle event carries its execution's summary after it (`state`),
// folded by the engine: the row becomes that summary. Progress is the
// dashboard's own: kept while the same attempt runs.
function applyEvent(e) {
  if (!e.state) return; // replayed, older than its execution's newest event
  let row = store.byId.get(e.execution);
  if (!row) {
    // A row appears with an execution's first event, or, before the first
    // page arrived, waits for it.
    const first = e.type === 'submitted' || (e.type === 'queued' && e.data && e.data.spec);
    if (!first) {
      stash(e);
      return;
    }
    row = newRow(e.execution);
    store.byId.set(row.id, row);
    store.newer.push(row.id);
    view.dirty = true;
  }
  if (e.seq <= row.last_seq) return;
  const before = row.status;
  const sameAttempt = before === 'running' && row.attempt === (e.state.attempt || 0);
  const kept = { percent: row.percent, message: row.message, progressKnown: row.progressKnown, ver: row.ver };
  Object.assign(row, rowFromSummary(e.state), { last_seq: e.seq, ver: kept.ver });
  if (row.status === 'running') {
    if (sameAttempt) Object.assign(row, { percent: kept.percent, message: kept.message, progressKnown: kept.progressKnown });
    else row.progressKnown = false; // reports are not replayed
    if (e.type === 'progress') {
      const d = e.data || {};
      row.percent = percentOf(d.percent);
      row.message = d.message || null;
    }
  }
  touch(row, before !== row.status);
}

// An event of an execution whose page is not loaded yet: kept until the
// page arrives, then applied if the page's row is older than it.
function stash(e) {
  if (store.loaded || store.stashed >= MAX_STASHED) return;
  const list = store.stash.get(e.execution);
  if (list) list.push(e);
  else store.stash.set(e.execution, [e]);
  store.stashed += 1;
}

function addPage(summaries) {
  for (const s of summaries) {
    const existing = store.byId.get(s.id);
    if (existing) {
      if (s.last_seq > existing.last_seq) {
        Object.assign(existing, rowFromSummary(s), { ver: existing.ver });
        touch(existing, true);
      }
    } else {
      store.byId.set(s.id, rowFromSummary(s));
      store.older.push(s.id);
    }
    const stashed = store.stash.get(s.id);
    if (stashed) {
      store.stash.delete(s.id);
      store.stashed -= stashed.length;
      for (const e of stashed) applyEvent(e);
    }
  }
  view.dirty = true;
  schedule();
}

function applyProgress(p) {
  const row = store.byId.get(p.execution);
  if (!row || row.status !== 'running' || (p.attempt && p.attempt < row.attempt)) return;
  row.percent = percentOf(p.percent);
  row.message = p.message || null;
  row.progressKnown = true;
  touch(row, false);
  if (page.exec && page.exec.id === row.id) page.exec.progressDirty = true;
}

function touch(row, statusChanged) {
  row.ver += 1;
  if (statusChanged && view.filter) view.dirty = true;
  if (page.exec && page.exec.id === row.id) {
    page.exec.progressDirty = true;
  }
  schedule();
}

// ---------------------------------------------------------------- the feed

const feed = { source: null, retry: null };

function setFeedState(state, text) {
  const node = $('feed');
  node.dataset.state = state;
  node.textContent = text;
}

function openFeed(from) {
  closeFeed();
  const source = new EventSource(`/v1/stream?last_event_id=${from}`);
  feed.source = source;
  let last = from;
  const onEvent = (message) => {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    if (message.type === 'progress' && !data.type) {
      applyProgress(data);
      return;
    }
    const seq = Number(message.lastEventId) || data.seq;
    if (!data.execution || !seq) return;
    data.seq = seq;
    last = Math.max(last, seq);
    applyEvent(data);
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
  source.addEventListener('overflow', () => {
    // Too far behind to catch up: start over from a fresh list.
    setFeedState('error', 'reloading');
    closeFeed();
    resetStore();
    loadList();
  });
  source.addEventListener('open', () => {
    setFeedState('live', 'live');
    // Progress reports are not replayed: what was read before the feed
    // opened may have moved since. Read it again for what is in view.
    details.asked.clear();
    store.byId.forEach((row) => {
      if (row.status === 'running') row.progressKnown = false;
    });
    if (page.exec) refreshSoon(page.exec);
    schedule();
  });
  source.addEventListener('error', (event) => {
    if (event.data) {
      // The engine reported a failure and closes the feed; EventSource
      // reconnects with Last-Event-ID.
      setFeedState('error', 'reconnecting');
      return;
    }
    if (source.readyState === EventSource.CLOSED) {
      // Refused outright (the engine restarting): try again from where we are.
      setFeedState('error', 'offline');
      feed.retry = setTimeout(() => openFeed(last), 2000);
    } else {
      setFeedState('error', 'reconnecting');
    }
  });
}

function closeFeed() {
  if (feed.source) feed.source.close();
  feed.source = null;
  clearTimeout(feed.retry);
}

function resetStore() {
  listLoad.generation += 1;
  listLoad.loading = null;
  $('list').dataset.loaded = 'false';
  store.byId.clear();
  store.newer = [];
  store.older = [];
  store.loaded = false;
  store.stash.clear();
  store.stashed = 0;
  view.dirty = true;
  view.rendered.forEach((node) => node.remove());
  view.rendered.clear();
  schedule();
}

// The current load; a reset starts a new generation and the older load
// stops at its next step.
const listLoad = { generation: 0, loading: null };

function loadList() {
  if (listLoad.loading) return listLoad.loading;
  const generation = listLoad.generation;
  const stale = () => generation !== listLoad.generation;
  listLoad.loading = (async () => {
    try {
      // The projection's position before the first page: the feed resumes
      // there, so every event after it reaches a row exactly once.
      const stats = await getJSON('/v1/stats');
      if (stale()) return;
      const from = stats.applied_seq || 0;
      let cursor = null;
      let first = true;
      do {
        const query = cursor === null ? '' : `&cursor=${cursor}`;
        const result = await getJSON(`/v1/executions?limit=${PAGE}${query}`);
        if (stale()) return;
        addPage(result.executions || []);
        if (first) {
          openFeed(from);
          first = false;
        }
        cursor = result.next_cursor ?? null;
      } while (cursor !== null && store.byId.size < MAX_LOADED);
      store.loaded = true;
      store.stash.clear();
      store.stashed = 0;
      $('list').dataset.loaded = 'true';
      schedule();
    } catch (e) {
      if (stale()) return;
      setFeedState('error', 'offline');
      closeFeed();
      showListError(e);
      setTimeout(() => {
        if (stale()) return;
        resetStore();
        loadList();
      }, 3000);
      return;
    }
    listLoad.loading = null;
  })();
  return listLoad.loading;
}

function showListError(e) {
  const node = $('list-empty');
  node.hidden = false;
  node.textContent = `Cannot load executions: ${e.message}. Retrying…`;
}

// Progress of running rows listed before the feed said anything about them.
const details = { queue: [], busy: 0, asked: new Set() };

function wantProgress(row) {
  if (row.progressKnown || details.asked.has(row.id)) return;
  details.asked.add(row.id);
  details.queue.push(row.id);
  pumpDetails();
}

function pumpDetails() {
  while (details.busy < DETAIL_FETCHES && details.queue.length) {
    const id = details.queue.shift();
    const known = store.byId.get(id);
    if (!known || known.progressKnown || known.status !== 'running') continue;
    details.busy += 1;
    getJSON(`/v1/executions/${enc(id)}`)
      .then((d) => {
        const row = store.byId.get(id);
        if (row && !row.progressKnown && d.progress && d.status === 'running') {
          row.percent = percentOf(d.progress.percent);
          row.message = d.progress.message || null;
          row.progressKnown = true;
          touch(row, false);
        }
      })
      .catch(() => {})
      .finally(() => {
        details.busy -= 1;
        pumpDetails();
      });
  }
}

// ---------------------------------------------------------------- drawing

let frame = 0;

function schedule() {
  if (!frame) frame = requestAnimationFrame(draw);
}

function draw() {
  frame = 0;
  if (page.exec) drawExecution();
  else drawList();
}

// The list view: the filtered order (or none when unfiltered) and the rows
// in the DOM by id.
const view = {
  filter: null,
  filterName: 'all',
  search: '',
  ids: null,
  dirty: true,
  rendered: new Map(),
  tick: 0,
};

function idAt(i) {
  if (view.ids) return view.ids[i];
  const n = store.newer.length;
  return i < n ? store.newer[n - 1 - i] : store.older[i - n];
}

function listLength() {
  return view.ids ? view.ids.length : store.newer.length + store.older.length;
}

function matches(row) {
  if (view.filter && !view.filter.has(row.status)) return false;
  if (!view.search) return true;
  const q = view.search;
  return row.id.toLowerCase().includes(q) || row.kind.toLowerCase().includes(q) ||
    String(row.queue).toLowerCase().includes(q);
}

function refilter() {
  view.dirty = false;
  if (!view.filter && !view.search) {
    view.ids = null;
    return;
  }
  const ids = [];
  const total = store.newer.length + store.older.length;
  for (let i = 0; i < total; i += 1) {
    const n = store.newer.length;
    const id = i < n ? store.newer[n - 1 - i] : store.older[i - n];
    if (matches(store.byId.get(id))) ids.push(id);
  }
  view.ids = ids;
}

function makeRow() {
  const node = el('div', 'row');
  node.setAttribute('role', 'listitem');
  node.dataset.testid = 'execution-row';
  const who = el('div', 'who');
  const id = el('a', 'id mono');
  const what = el('span', 'what');
  who.append(id, what);
  const badge = el('span', 'badge');
  const progress = el('div', 'progress');
  progress.dataset.testid = 'progress';
  const bar = el('div', 'bar');
  bar.append(el('div', 'fill'));
  progress.append(bar, el('span', 'pct'), el('span', 'msg'));
  const [attempt, wait, run, age] = ['attempt', 'wait', 'run', 'age'].map((c) => el('span', `num ${c}`));
  node.append(who, badge, progress, attempt, wait, run, age);
  node.cells = { id, what, badge, progress, attempt, wait, run, age };
  return node;
}

function setProgress(node, row) {
  const running = row.status === 'running';
  const done = row.status === 'succeeded';
  let percent = null;
  if (done) percent = 100;
  else if (running || row.status === 'failed' || row.status === 'cancelled') percent = row.percent;
  const fill = node.querySelector('.fill');
  node.dataset.percent = percent === null ? '' : String(Math.round(percent * 10) / 10);
  node.dataset.state = row.status;
  node.classList.toggle('indeterminate', running && percent === null);
  fill.style.width = `${percent === null ? 0 : percent}%`;
  node.querySelector('.pct').textContent = percent === null ? '' : `${Math.floor(percent)}%`;
  const msg = running || row.status === 'failed' ? (row.message || '') : '';
  node.querySelector('.msg').textContent = msg;
  node.querySelector('.msg').title = msg;
  node.dataset.message = row.message || '';
}

function drawRow(node, row, index) {
  if (node.index !== index) {
    node.index = index;
    node.dataset.index = String(index);
    node.style.transform = `translateY(${index * ROW_HEIGHT}px)`;
  }
  const live = !TERMINAL.has(row.status);
  const c = node.cells;
  if (node.tick !== view.tick) c.age.textContent = ago(row.submitted_at);
  if (node.ver === row.ver && !(live && node.tick !== view.tick)) {
    node.tick = view.tick;
    return;
  }
  node.ver = row.ver;
  node.tick = view.tick;
  node.dataset.id = row.id;
  node.dataset.status = row.status;
  c.id.textContent = row.id;
  c.id.href = `#/executions/${enc(row.id)}`;
  c.badge.textContent = label(row.status) + (row.cancel_requested && live ? ' …' : '');
  c.badge.dataset.status = row.status;
  c.badge.title = row.reason || label(row.status);
  setProgress(c.progress, row);
  const priority = row.priority && row.priority !== 'normal' ? ` · ${row.priority}` : '';
  c.what.textContent = `${row.kind} · ${row.queue}${priority}`;
  c.attempt.textContent = row.attempt || '';
  c.wait.textContent = row.started_at ? duration(between(row.submitted_at, row.started_at))
    : (live ? duration(between(row.submitted_at, null)) : '');
  // The running attempt's time, or the whole run once ended.
  const timed = row.started_at && (row.status === 'running' || TERMINAL.has(row.status));
  c.run.textContent = timed ? duration(between(row.started_at, row.finished_at)) : '';
  c.age.textContent = ago(row.submitted_at);
  // Running for a while with no report seen: ask for the latest one.
  if (row.status === 'running' && !row.progressKnown && between(row.started_at, null) > 1000) {
    wantProgress(row);
  }
}

function drawList() {
  if (view.dirty) refilter();
  const list = $('list');
  const total = listLength();
  $('list-spacer').style.height = `${total * ROW_HEIGHT}px`;
  list.dataset.total = String(total);
  const all = store.newer.length + store.older.length;
  $('list-count').textContent = view.ids ? `${total} of ${all}` : `${all}`;
  const empty = $('list-empty');
  if (all === 0 && !listLoad.loading) {
    empty.hidden = false;
    empty.textContent = '';
    empty.append('No executions yet. Submit one with ', el('code', null, 'runlog submit'),
      ' or ', el('code', null, 'POST /v1/executions'), '.');
  } else if (all > 0) {
    empty.hidden = true;
  }
  const top = list.scrollTop;
  const height = list.clientHeight || 600;
  const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
  const last = Math.min(total, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
  const keep = new Map();
  for (let i = first; i < last; i += 1) {
    const id = idAt(i);
    const row = store.byId.get(id);
    if (!row || keep.has(id)) continue;
    let node = view.rendered.get(id);
    if (!node) {
      node = makeRow();
      list.append(node);
    }
    keep.set(id, node);
    drawRow(node, row, i);
  }
  view.rendered.forEach((node, id) => {
    if (!keep.has(id)) node.remove();
  });
  view.rendered = keep;
}

function drawFilters() {
  const box = $('filters');
  box.textContent = '';
  for (const [name, text, set] of FILTERS) {
    const b = el('button', 'chip', text);
    b.type = 'button';
    b.dataset.filter = name;
    b.setAttribute('aria-pressed', String(view.filterName === name));
    b.addEventListener('click', () => {
      view.filterName = name;
      view.filter = set;
      view.dirty = true;
      $('list').scrollTop = 0;
      drawFilters();
      schedule();
    });
    box.append(b);
  }
}

// ---------------------------------------------------------------- side panels

async function refreshSide() {
  if (document.hidden) return;
  const [stats, queues, workers] = await Promise.allSettled([
    getJSON('/v1/stats'), getJSON('/v1/queues'), getJSON('/v1/workers'),
  ]);
  if (stats.status === 'fulfilled') drawStats(stats.value);
  if (queues.status === 'fulfilled') drawQueues(queues.value.queues || []);
  if (workers.status === 'fulfilled') drawWorkers(workers.value.workers || []);
}

function stat(name, value, status) {
  const box = el('span', 'stat');
  if (status) box.dataset.status = status;
  box.dataset.stat = name;
  box.append(el('b', null, value), el('span', null, name));
  return box;
}

function drawStats(s) {
  const box = $('stats');
  box.textContent = '';
  box.append(stat('executions', String(s.executions ?? 0)));
  const by = s.by_status || {};
  for (const state of STATES) {
    if (by[state]) box.append(stat(label(state), String(by[state]), state));
  }
  const r = s.rates || {};
  box.append(stat('done / min', String(r.completed_last_minute ?? 0)));
  const lat = ['p50', 'p95', 'p99'].map((p) => {
    const v = r[`latency_ms_${p}`];
    return v === null || v === undefined ? '–' : duration(v);
  });
  const latency = stat('latency p50 · p95 · p99', lat.join(' · '));
  latency.classList.add('wide');
  box.append(latency);
}

function drawQueues(queues) {
  const body = $('queues').tBodies[0];
  body.textContent = '';
  if (!queues.length) {
    const tr = el('tr');
    const td = el('td', 'muted', 'no queue has work yet');
    td.colSpan = 6;
    tr.append(td);
    body.append(tr);
  }
  for (const q of queues) {
    const tr = el('tr');
    tr.dataset.queue = q.queue;
    tr.dataset.depth = String(q.depth ?? 0);
    const queued = q.queued || {};
    const name = el('td', 'mono', q.queue);
    if (q.warning) {
      tr.dataset.warning = q.warning;
      name.append(el('span', 'warn small', ' ⚠'));
      name.title = q.warning;
    }
    tr.append(name);
    for (const p of ['high', 'normal', 'low']) tr.append(el('td', 'num', String(queued[p] ?? 0)));
    tr.append(el('td', 'num', String(q.running ?? 0)), el('td', 'num', String(q.retry_scheduled ?? 0)));
    body.append(tr);
  }
}

// Workers without a pool first, then each agent pool under its heading
// (`pool tf · 2 agents · 3 / 8 running`); an agent's card shows its load by
// capacity class (`plan 2/3 · apply 0/1`).
function drawWorkers(workers) {
  const box = $('workers');
  box.textContent = '';
  if (!workers.length) {
    box.append(el('p', 'muted', 'no live worker'));
    return;
  }
  workers.sort((a, b) => String(a.pool || '').localeCompare(String(b.pool || '')) || String(a.id).localeCompare(String(b.id)));
  let pool = null;
  for (const w of workers) {
    if ((w.pool || null) !== pool) {
      pool = w.pool || null;
      const members = workers.filter((o) => o.pool === pool);
      const busy = members.reduce((n, o) => n + (o.running || []).length, 0);
      const slots = members.reduce((n, o) => n + (o.concurrency || 0), 0);
      const head = el('div', 'pool-head small');
      head.dataset.pool = pool;
      head.append(el('span', 'mono', `pool ${pool}`), el('span', 'muted', ` · ${members.length} agent${members.length === 1 ? '' : 's'} · ${busy} / ${slots} running`));
      box.append(head);
    }
    box.append(workerCard(w));
  }
}

function workerCard(w) {
  const running = (w.running || []).length;
  const slots = w.concurrency || 0;
  const card = el('div', 'worker');
  card.dataset.worker = w.id;
  card.dataset.pool = w.pool || '';
  card.dataset.running = String(running);
  card.dataset.concurrency = String(slots);
  const head = el('div', 'worker-head');
  head.append(el('span', 'mono', w.id), el('span', 'muted', `${running} / ${slots}`));
  const bar = el('div', 'bar load');
  const fill = el('div', 'fill');
  fill.style.width = `${slots ? Math.min(100, (100 * running) / slots) : 0}%`;
  bar.append(fill);
  const meta = el('div', 'muted small');
  const parts = [w.host, `queues ${(w.queues || []).join(', ') || '–'}`];
  const load = (w.load || []).map((c) => `${c.class} ${c.running}/${c.limit}${c.exclusive ? ' excl.' : ''}`);
  const rules = (w.capacity || []).map((c) => `${c.kind}≤${c.limit}${c.exclusive ? ' excl.' : ''}`);
  if (load.length) parts.push(load.join(' · '));
  else if (rules.length) parts.push(rules.join(' '));
  meta.textContent = parts.filter(Boolean).join(' · ');
  meta.className = 'muted small worker-meta';
  card.append(head, bar, meta);
  if (w.paused_for_resources) card.append(el('div', 'warn small', 'paused: host overloaded'));
  return card;
}

// ---------------------------------------------------------------- execution page

const page = { exec: null };

function showExecution(id) {
  closeExecution();
  $('list-view').hidden = true;
  $('exec-view').hidden = false;
  const exec = {
    id,
    seqs: new Set(),
    lastSeq: 0,
    detail: null,
    ended: false,
    events: null,
    logs: null,
    logsAfter: 0,
    logCount: 0,
    lastAttempt: null,
    refresh: null,
    progressDirty: true,
    closed: false,
    acting: false,
  };
  page.exec = exec;
  $('exec-id').textContent = id;
  $('exec-view').dataset.id = id;
  $('exec-status').textContent = '';
  $('exec-status').dataset.status = '';
  $('exec-facts').textContent = '';
  $('attempts').tBodies[0].textContent = '';
  $('timeline').textContent = '';
  $('timeline').dataset.complete = 'false';
  $('logs').textContent = '';
  $('logs-state').textContent = '';
  $('exec-result').hidden = true;
  $('action-error').hidden = true;
  $('exec-error').hidden = true;
  $('cancel').disabled = true;
  $('retry').disabled = true;
  loadExecution(exec);
}

function closeExecution() {
  const exec = page.exec;
  if (!exec) return;
  exec.closed = true;
  if (exec.events) exec.events.close();
  if (exec.logs) exec.logs.close();
  clearTimeout(exec.refresh);
  page.exec = null;
}

async function loadExecution(exec) {
  try {
    await refreshDetail(exec);
    const history = await getJSON(`/v1/executions/${enc(exec.id)}/events`);
    if (exec.closed) return;
    for (const e of history.events || []) addTimeline(exec, e);
    $('timeline').dataset.complete = 'true';
    // Events recorded between the two reads: the detail is older than them.
    if (exec.lastSeq > (exec.detail.last_seq || 0)) refreshSoon(exec);
    if (!exec.ended) followEvents(exec);
  } catch (e) {
    if (exec.closed) return;
    const node = $('exec-error');
    node.hidden = false;
    node.textContent = e.status === 404 ? `No execution ${exec.id}.` : `Cannot load: ${e.message}`;
    return;
  }
  loadLogs(exec);
}

function followEvents(exec) {
  const source = new EventSource(`/v1/executions/${enc(exec.id)}/stream?last_event_id=${exec.lastSeq}`);
  exec.events = source;
  const onEvent = (message) => {
    try {
      const e = JSON.parse(message.data);
      e.seq = Number(message.lastEventId) || e.seq;
      addTimeline(exec, e);
      refreshSoon(exec);
    } catch (_) { /* not an event */ }
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
  source.addEventListener('end', () => {
    // The execution ended: the feed is complete.
    source.close();
    exec.ended = true;
    refreshSoon(exec);
  });
}

async function loadLogs(exec) {
  try {
    for (;;) {
      const result = await getJSON(`/v1/executions/${enc(exec.id)}/logs?after=${exec.logsAfter}&limit=1000`);
      if (exec.closed) return;
      addLogLines(exec, result.lines || []);
      const next = result.next_after || exec.logsAfter;
      if (next <= exec.logsAfter) break;
      exec.logsAfter = next;
    }
  } catch (e) {
    if (!exec.closed) $('logs-state').textContent = `cannot read logs: ${e.message}`;
    return;
  }
  const source = new EventSource(`/v1/executions/${enc(exec.id)}/logs/stream?last_event_id=${exec.logsAfter}`);
  exec.logs = source;
  $('logs-state').textContent = 'live';
  source.addEventListener('log', (message) => {
    try {
      const batch = JSON.parse(message.data);
      const seq = Number(message.lastEventId);
      if (seq && seq <= exec.logsAfter) return;
      addLogLines(exec, batch.lines || []);
      if (seq) exec.logsAfter = seq;
    } catch (_) { /* not a batch */ }
  });
  source.addEventListener('end', () => {
    source.close();
    $('logs-state').textContent = exec.logCount ? `${exec.logCount} lines` : 'no output';
  });
}

function addLogLines(exec, lines) {
  if (!lines.length) return;
  const box = $('logs');
  const follow = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const fragment = document.createDocumentFragment();
  for (const line of lines) {
    if (line.attempt !== exec.lastAttempt) {
      exec.lastAttempt = line.attempt;
      fragment.append(el('div', 'log-attempt', `attempt ${line.attempt}`));
    }
    const row = el('div', `log ${line.stream === 'stderr' ? 'stderr' : ''}`);
    row.dataset.n = String(line.n);
    row.append(el('span', 'n', String(line.n + 1)), el('span', 'text', line.line));
    fragment.append(row);
    exec.logCount += 1;
  }
  box.append(fragment);
  while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
  if (follow) box.scrollTop = box.scrollHeight;
  if ($('logs-state').textContent === '') $('logs-state').textContent = 'live';
}

function eventSummary(e) {
  const d = e.data || {};
  switch (e.type) {
    case 'submitted':
      return `${(d.spec && d.spec.kind) || ''} on ${(d.spec && d.spec.queue) || ''}`;
    case 'queued':
      return `${d.queue} · ${d.priority}`;
    case 'started':
      return `on ${d.worker}`;
    case 'progress':
      return [d.percent !== undefined ? `${d.percent}%` : '', d.message || ''].filter(Boolean).join(' ');
    case 'succeeded':
      return d.output === undefined || d.output === null ? '' : JSON.stringify(d.output).slice(0, 160);
    case 'failed':
      return d.error ? `${label(d.error.class)}: ${d.error.message}` : '';
    case 'retry_scheduled':
      return `next attempt ${clock(d.at)} (${label(d.class)})`;
    case 'cancel_requested':
    case 'cancelled':
      return d.reason || '';
    case 'timed_out':
      return `${d.scope} deadline`;
    case 'attempt_lost':
      return `${d.worker} went away`;
    case 'dead_lettered':
      return label(d.reason);
    case 'rejected':
      return d.field ? `${d.field}: ${d.reason}` : d.reason;
    case 'heartbeat':
      return d.worker || '';
    default:
      return '';
  }
}

function addTimeline(exec, e) {
  const seq = Number(e.seq);
  if (!seq || exec.seqs.has(seq) || exec.closed) return;
  exec.seqs.add(seq);
  const item = el('li', 'event');
  item.dataset.seq = String(seq);
  item.dataset.type = e.type;
  const time = el('time', 'mono muted', clock(e.time));
  time.dateTime = e.time;
  time.title = stamp(e.time);
  const type = el('span', 'badge', label(e.type));
  type.dataset.status = e.type;
  const attempt = el('span', 'muted', e.attempt ? `#${e.attempt}` : '');
  item.append(time, type, attempt, el('span', 'detail', eventSummary(e)));
  item.title = `seq ${seq}`;
  const list = $('timeline');
  if (seq > exec.lastSeq) {
    list.append(item);
    exec.lastSeq = seq;
  } else {
    // Out of order (never expected from the feeds): keep the list sorted.
    const after = [...list.children].find((n) => Number(n.dataset.seq) > seq);
    list.insertBefore(item, after || null);
  }
  $('timeline-count').textContent = `${exec.seqs.size} events`;
  if (TERMINAL.has(e.type) || (e.type === 'timed_out' && e.data && e.data.scope === 'execution')) {
    exec.ended = true;
  }
}

function refreshSoon(exec) {
  if (exec.refresh) return;
  exec.refresh = setTimeout(() => {
    exec.refresh = null;
    refreshDetail(exec).catch(() => {});
  }, 150);
}

async function refreshDetail(exec) {
  const detail = await getJSON(`/v1/executions/${enc(exec.id)}`);
  if (exec.closed) return;
  exec.detail = detail;
  if (TERMINAL.has(detail.status)) exec.ended = true;
  drawDetail(exec);
}

function fact(list, name, value, mono) {
  if (value === null || value === undefined || value === '') return;
  const box = el('div');
  box.append(el('dt', null, name), el('dd', mono ? 'mono' : null, String(value)));
  list.append(box);
}

function drawDetail(exec) {
  const d = exec.detail;
  const status = $('exec-status');
  status.textContent = label(d.status) + (d.cancel_requested && !TERMINAL.has(d.status) ? ' (cancel requested)' : '');
  status.dataset.status = d.status;
  $('exec-view').dataset.status = d.status;
  $('cancel').disabled = exec.acting || TERMINAL.has(d.status) || d.cancel_requested;
  $('retry').disabled = exec.acting || !RETRYABLE.has(d.status);

  // Why no live worker would take it, while it waits for one.
  const warning = $('exec-warning');
  warning.textContent = d.warning || '';
  warning.hidden = !d.warning;

  const spec = d.spec || {};
  const facts = $('exec-facts');
  facts.textContent = '';
  fact(facts, 'kind', spec.kind, true);
  fact(facts, 'queue', spec.queue, true);
  fact(facts, 'priority', spec.priority);
  fact(facts, 'attempt', d.attempt ? `${d.attempt} of ${(spec.retry && spec.retry.max_attempts) || 1}` : null);
  fact(facts, 'worker', d.worker, true);
  fact(facts, 'submitted', stamp(d.submitted_at));
  fact(facts, 'started', stamp(d.started_at));
  fact(facts, 'finished', stamp(d.finished_at));
  fact(facts, 'waited', d.started_at ? duration(between(d.submitted_at, d.started_at)) : null);
  fact(facts, 'ran', d.started_at ? duration(between(d.started_at, d.finished_at)) : null);
  fact(facts, 'retry at', stamp(d.retry_at));
  fact(facts, 'reason', d.reason);
  const linked = (term, text, href) => {
    const box = el('div');
    const link = el('a', 'mono', text);
    link.href = href;
    const dd = el('dd');
    dd.append(link);
    box.append(el('dt', null, term), dd);
    facts.append(box);
  };
  if (spec.retry_of) linked('retry of', spec.retry_of, `#/executions/${enc(spec.retry_of)}`);
  if (spec.workflow_execution) {
    linked(`node ${spec.node || ''} of`, spec.workflow_execution, `#/workflows/${enc(spec.workflow_execution)}`);
  }
  const labels = Object.entries(spec.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ');
  fact(facts, 'labels', labels, true);
  // What its measured attempts used, and what that cost (docs/costs.md).
  const used = d.resources;
  if (used) {
    fact(facts, 'cpu', cpuMs(used) === null ? null : duration(cpuMs(used)));
    fact(facts, 'peak memory', used.peak_rss_bytes == null ? null : bytes(used.peak_rss_bytes));
    fact(facts, 'output + logs', bytes((used.output_bytes || 0) + (used.log_bytes || 0)));
    if (used.network_sent_bytes != null) {
      fact(facts, 'network', `${bytes(used.network_sent_bytes)} sent, ${bytes(used.network_received_bytes || 0)} received`);
    }
  }
  fact(facts, 'cost', d.cost ? d.cost.total.toFixed(6) : null);

  const body = $('attempts').tBodies[0];
  body.textContent = '';
  for (const a of d.attempts || []) {
    const tr = el('tr');
    tr.dataset.attempt = String(a.attempt);
    tr.dataset.outcome = a.outcome || '';
    const outcome = el('td');
    const badge = el('span', 'badge', a.outcome ? label(a.outcome) : (a.started_at ? 'running' : 'queued'));
    badge.dataset.status = a.outcome || (a.started_at ? 'running' : 'queued');
    outcome.append(badge);
    tr.append(
      el('td', 'num', String(a.attempt)),
      el('td', 'mono', a.worker || ''),
      el('td', 'mono', clock(a.queued_at)),
      el('td', 'mono', clock(a.started_at)),
      el('td', 'mono', clock(a.ended_at)),
      el('td', 'num', a.started_at ? duration(between(a.started_at, a.ended_at)) : ''),
      el('td', 'num', cpuMs(a.resources) === null ? '' : duration(cpuMs(a.resources))),
      el('td', 'num', a.resources && a.resources.peak_rss_bytes != null ? bytes(a.resources.peak_rss_bytes) : ''),
      outcome,
      el('td', 'error-text', a.error ? `${label(a.error.class)}: ${a.error.message}` : ''),
    );
    body.append(tr);
  }

  const result = $('exec-result');
  const title = $('exec-result-title');
  const pre = $('exec-result-body');
  if (d.status === 'succeeded') {
    result.hidden = false;
    result.dataset.kind = 'output';
    title.textContent = 'Output';
    pre.textContent = JSON.stringify(d.output, null, 2);
  } else if (d.error) {
    result.hidden = false;
    result.dataset.kind = 'error';
    title.textContent = 'Error';
    pre.textContent = JSON.stringify(d.error, null, 2);
  } else {
    result.hidden = true;
  }
  exec.progressDirty = true;
  drawExecution();
}

function drawExecution() {
  const exec = page.exec;
  if (!exec || !exec.progressDirty || !exec.detail) return;
  exec.progressDirty = false;
  const d = exec.detail;
  // The list's row follows the live progress feed; the detail holds the
  // latest report at the time it was read.
  const row = store.byId.get(exec.id);
  const status = row && row.last_seq >= (d.last_seq || 0) ? row.status : d.status;
  const live = row && row.progressKnown ? row : {
    status,
    percent: d.progress ? percentOf(d.progress.percent) : null,
    message: d.progress ? d.progress.message : null,
  };
  setProgress($('exec-progress'), { ...live, status });
}

// ---------------------------------------------------------------- actions

async function act(action) {
  const exec = page.exec;
  if (!exec) return;
  const problem = $('action-error');
  problem.hidden = true;
  const button = $(action);
  button.disabled = true;
  exec.acting = true;
  try {
    const body = action === 'cancel' ? { reason: 'cancelled from the dashboard' } : undefined;
    const result = await request('POST', `/v1/executions/${enc(exec.id)}/${action}`, body);
    if (action === 'retry' && result && result.id) {
      location.hash = `#/executions/${enc(result.id)}`;
      return;
    }
    exec.acting = false;
    await refreshDetail(exec);
  } catch (e) {
    exec.acting = false;
    problem.hidden = false;
    problem.textContent = e.problem && e.problem.detail ? e.problem.detail : e.message;
    if (exec.detail) drawDetail(exec);
    else button.disabled = false;
  }
}

// ---------------------------------------------------------------- routing

function route() {
  const match = location.hash.match(/^#\/executions\/([^/?#]+)/);
  const workflow = location.hash.match(/^#\/workflows\/([^/?#]+)/);
  if (!workflow) {
    closeWorkflow();
    $('wf-view').hidden = true;
  }
  if (workflow) {
    closeExecution();
    showWorkflow(decodeURIComponent(workflow[1]));
  } else if (match) {
    showExecution(decodeURIComponent(match[1]));
  } else {
    closeExecution();
    $('exec-view').hidden = true;
    $('list-view').hidden = false;
    view.rendered.forEach((node) => { node.ver = -1; });
    schedule();
  }
}

function start() {
  drawFilters();
  $('search').addEventListener('input', (e) => {
    view.search = e.target.value.trim().toLowerCase();
    view.dirty = true;
    schedule();
  });
  $('list').addEventListener('scroll', schedule, { passive: true });
  window.addEventListener('resize', schedule);
  $('list').addEventListener('click', (e) => {
    const row = e.target.closest('.row[data-id]');
    if (row && !e.target.closest('a')) location.hash = `#/executions/${enc(row.dataset.id)}`;
  });
  $('cancel').addEventListener('click', () => act('cancel'));
  $('retry').addEventListener('click', () => act('retry'));
  window.addEventListener('hashchange', route);
  startWorkflows();
  setInterval(() => {
    // Durations of live rows move with the clock.
    view.tick += 1;
    if (page.exec && page.exec.detail && !TERMINAL.has(page.exec.detail.status)) drawDetail(page.exec);
    schedule();
  }, 1000);
  setInterval(refreshSide, REFRESH_MS);
  document.addEventListener('visibilitychange', refreshSide);
  refreshSide();
  loadList();
  route();
}

gate().then(start);
