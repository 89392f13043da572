// The schedules section of the dashboard, under the execution list: every
// schedule with its timing, next tick, runs and last outcome, and buttons
// to run it now, pause or resume it; a click on a row shows its next five
// ticks and its newest runs.
//
// It reads GET /v1/schedules every two seconds while the list is in view
// (and when the tab comes back), with GET /v1/schedules/{id}/runs for the
// open schedule. Rows are changed in place, keyed by id, so a button a user
// (or a test) is about to click is never replaced. A view carries its
// schedule's log position (`revision`): an answer read before a pause
// landed does not draw the schedule active again.
'use strict';

const SCHED_REFRESH_MS = 2000;
const SCHED_RUNS = 20;
const SCHED_ACTIONS = { 'run-now': 'Run now', pause: 'Pause', resume: 'Resume' };

const sched = {
  views: new Map(),
  order: [],
  loaded: false,
  listError: null,
  actionError: null,
  selected: null,
  runs: null,
  runsError: null,
  busy: new Set(),
  loading: null,
  again: false,
};

// ---------------------------------------------------------------- formatting

function schedWhen(spec) {
  if (spec.cron) return `${spec.cron} · ${spec.time_zone || 'UTC'}`;
  if (spec.every) return `every ${spec.every}`;
  return '';
}

function schedWhat(spec) {
  if (spec.workflow) return `workflow ${spec.workflow.name || ''}`;
  const task = spec.task || {};
  return [task.kind, task.queue].filter(Boolean).join(' · ');
}

// A local date and time to the second; the title holds the exact instant.
function schedTime(time) {
  const d = time ? new Date(time) : null;
  return d && !Number.isNaN(d.getTime()) ? `${d.toLocaleDateString()} ${clock(time).slice(0, 8)}` : '';
}

function until(time) {
  const ms = Date.parse(time) - Date.now();
  if (!Number.isFinite(ms)) return '';
  return ms <= 0 ? 'due now' : `in ${duration(ms)}`;
}

function successRate(rate) {
  return rate === null || rate === undefined ? '–' : `${Math.round(rate * 100)}%`;
}

function runTook(run) {
  if (run.duration_ms !== null && run.duration_ms !== undefined) return duration(run.duration_ms);
  return run.started_at ? duration(between(run.started_at, null)) : '';
}

function runHref(spec, execution) {
  const view = spec && spec.workflow ? 'workflows' : 'executions';
  return `#/${view}/${enc(execution)}`;
}

// ---------------------------------------------------------------- reading

// Keeps the newer of two views of one schedule; equal revisions take the
// later read, whose runs' states may have moved.
function keepNewer(view) {
  const known = sched.views.get(view.id);
  if (!known || (view.revision ?? 0) >= (known.revision ?? 0)) sched.views.set(view.id, view);
}

function mergeSchedules(list) {
  const listed = new Set(list.map((v) => v.id));
  for (const view of list) keepNewer(view);
  for (const id of [...sched.views.keys()]) {
    if (!listed.has(id)) sched.views.delete(id);
  }
  sched.order = list.map((v) => v.id);
  if (sched.selected && !listed.has(sched.selected)) closeSchedule();
}

// One read at a time; a refresh asked for meanwhile runs once it ends.
function refreshSchedules() {
  if (document.hidden || $('sched-view').hidden) return;
  if (sched.loading) {
    sched.again = true;
    return;
  }
  sched.loading = (async () => {
    do {
      sched.again = false;
      try {
        const body = await getJSON('/v1/schedules');
        mergeSchedules(body.schedules || []);
        sched.loaded = true;
        sched.listError = null;
      } catch (e) {
        sched.listError = e;
      }
      if (sched.selected) await loadRuns(sched.selected);
      drawSchedules();
    } while (sched.again);
  })().finally(() => {
    sched.loading = null;
  });
}

async function loadRuns(id) {
  try {
    const body = await getJSON(`/v1/schedules/${enc(id)}/runs?limit=${SCHED_RUNS}`);
    if (sched.selected !== id) return;
    sched.runs = { id, runs: body.runs || [], count: body.run_count ?? 0 };
    sched.runsError = null;
  } catch (e) {
    if (sched.selected === id) sched.runsError = e;
  }
}

// ---------------------------------------------------------------- actions

async function actSchedule(id, action) {
  if (sched.busy.has(id)) return;
  sched.busy.add(id);
  sched.actionError = null;
  drawSchedules();
  try {
    const body = action === 'pause' ? { reason: 'paused from the dashboard' } : undefined;
    const result = await request('POST', `/v1/schedules/${enc(id)}/${action}`, body);
    // Pause and resume answer with the schedule; run-now with its run.
    if (result && result.id === id && result.status) keepNewer(result);
  } catch (e) {
    sched.actionError = `${SCHED_ACTIONS[action]} ${id}: ${e.message}`;
  } finally {
    sched.busy.delete(id);
  }
  drawSchedules();
  refreshSchedules();
}

function selectSchedule(id) {
  if (sched.selected === id) {
    closeSchedule();
  } else {
    sched.selected = id;
    sched.runs = null;
    sched.runsError = null;
    refreshSchedules();
  }
  drawSchedules();
}

function closeSchedule() {
  sched.selected = null;
  sched.runs = null;
  sched.runsError = null;
}

// ---------------------------------------------------------------- drawing

// Puts one row per item in `body`, in order: a known key keeps its row
// (drawn again), a new one gets a row from `make`, the rest are removed.
function syncRows(body, items, key, make, draw) {
  const have = new Map([...body.children].map((tr) => [tr.key, tr]));
  items.forEach((item, i) => {
    const k = key(item);
    let tr = have.get(k);
    if (tr) {
      have.delete(k);
    } else {
      tr = make();
      tr.key = k;
    }
    draw(tr, item);
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  have.forEach((tr) => tr.remove());
}

function showProblem(node, text) {
  node.hidden = !text;
  node.textContent = text || '';
}

function stacked(td) {
  const top = el('span');
  const below = el('span', 'muted small');
  td.append(top, below);
  td.classList.add('stacked');
  return [top, below];
}

function makeScheduleRow() {
  const tr = el('tr', 'sched-row');
  tr.tabIndex = 0;
  tr.dataset.testid = 'schedule-row';
  const who = el('td', 'sched-who');
  const [id, what] = stacked(who);
  id.className = 'mono';
  const state = el('td');
  const badge = el('span', 'badge sched-status');
  state.append(badge);
  const when = el('td', 'mono sched-when');
  const nextCell = el('td', 'sched-next');
  const [next, nextAt] = stacked(nextCell);
  const runs = el('td', 'num sched-runs');
  const lastCell = el('td', 'sched-last');
  const lastBadge = el('span', 'badge');
  const lastAt = el('span', 'muted small');
  lastCell.append(lastBadge, lastAt);
  const rate = el('td', 'num sched-rate');
  const actions = el('td', 'sched-actions');
  const runNow = el('button', null, SCHED_ACTIONS['run-now']);
  runNow.type = 'button';
  runNow.dataset.action = 'run-now';
  const toggle = el('button');
  toggle.type = 'button';
  actions.append(runNow, toggle);
  for (const button of [runNow, toggle]) {
    button.addEventListener('click', () => actSchedule(tr.dataset.id, button.dataset.action));
  }
  tr.append(who, state, when, nextCell, runs, lastCell, rate, actions);
  tr.parts = { id, what, badge, when, next, nextAt, runs, lastBadge, lastAt, rate, runNow, toggle };
  return tr;
}

function drawScheduleRow(tr, v) {
  const p = tr.parts;
  const spec = v.spec || {};
  const busy = sched.busy.has(v.id);
  const last = v.last_run;
  tr.dataset.id = v.id;
  tr.dataset.status = v.status;
  tr.dataset.runs = String(v.run_count ?? 0);
  tr.dataset.lastStatus = last ? last.status : '';
  tr.classList.toggle('selected', sched.selected === v.id);
  tr.setAttribute('aria-expanded', String(sched.selected === v.id));
  p.id.textContent = v.id;
  p.what.textContent = schedWhat(spec);
  p.badge.textContent = label(v.status);
  p.badge.dataset.status = v.status;
  p.badge.title = v.paused_reason || '';
  p.when.textContent = schedWhen(spec);
  const next = (v.next_ticks || [])[0];
  p.next.textContent = next ? until(next) : (v.status === 'paused' ? 'none while paused' : '–');
  p.nextAt.textContent = next ? schedTime(next) : '';
  p.nextAt.title = next || '';
  p.runs.textContent = String(v.run_count ?? 0);
  p.runs.title = `${v.succeeded ?? 0} succeeded, ${v.failed ?? 0} failed, ${v.skipped_count ?? 0} ticks skipped`;
  p.lastBadge.hidden = !last;
  p.lastBadge.textContent = last ? label(last.status) : '';
  p.lastBadge.dataset.status = last ? last.status : '';
  p.lastAt.textContent = last ? ago(last.started_at || last.scheduled_for) : 'never';
  p.rate.textContent = successRate(v.success_rate);
  const paused = v.status === 'paused';
  p.toggle.dataset.action = paused ? 'resume' : 'pause';
  p.toggle.textContent = SCHED_ACTIONS[p.toggle.dataset.action];
  p.runNow.disabled = busy;
  p.toggle.disabled = busy;
}

function makeRunRow() {
  const tr = el('tr');
  const scheduled = el('td', 'mono');
  const trigger = el('td');
  const state = el('td');
  const badge = el('span', 'badge');
  state.append(badge);
  const took = el('td', 'num');
  const execution = el('td');
  const link = el('a', 'mono');
  execution.append(link);
  tr.append(scheduled, trigger, state, took, execution);
  tr.parts = { scheduled, trigger, badge, took, link };
  return tr;
}

function drawRunRow(tr, run) {
  const p = tr.parts;
  const view = sched.views.get(sched.selected);
  tr.dataset.execution = run.execution;
  tr.dataset.trigger = run.trigger;
  tr.dataset.status = run.status;
  p.scheduled.textContent = schedTime(run.scheduled_for);
  p.scheduled.title = run.scheduled_for || '';
  p.trigger.textContent = label(run.trigger);
  p.badge.textContent = label(run.status);
  p.badge.dataset.status = run.status;
  p.took.textContent = runTook(run);
  p.link.textContent = run.execution;
  p.link.href = runHref(view && view.spec, run.execution);
}

function drawScheduleDetail() {
  const panel = $('sched-detail');
  const v = sched.selected ? sched.views.get(sched.selected) : null;
  panel.hidden = !v;
  if (!v) {
    panel.dataset.id = '';
    return;
  }
  const spec = v.spec || {};
  panel.dataset.id = v.id;
  $('sched-detail-id').textContent = v.id;
  const facts = $('sched-facts');
  facts.textContent = '';
  fact(facts, 'runs', schedWhat(spec), true);
  fact(facts, 'when', schedWhen(spec), true);
  fact(facts, 'overlap', label(spec.overlap));
  fact(facts, 'catch up', label(spec.catch_up));
  fact(facts, 'outcomes', `${v.succeeded ?? 0} succeeded, ${v.failed ?? 0} failed`);
  fact(facts, 'ticks skipped', v.skipped_count ? String(v.skipped_count) : null);
  fact(facts, 'created', stamp(v.created_at));
  fact(facts, 'paused because', v.status === 'paused' ? v.paused_reason : null);

  const ticks = $('sched-ticks');
  ticks.textContent = '';
  for (const tick of v.next_ticks || []) {
    const item = el('li');
    const at = el('time', 'mono', schedTime(tick));
    at.dateTime = tick;
    at.title = tick;
    item.append(at, el('span', 'muted', until(tick)));
    ticks.append(item);
  }
  if (!ticks.childElementCount) {
    ticks.append(el('li', 'muted', v.status === 'paused' ? 'none while paused' : 'none'));
  }

  const shown = sched.runs && sched.runs.id === v.id ? sched.runs : null;
  const runs = shown ? shown.runs : [];
  syncRows($('sched-runs'), runs, (r) => r.execution, makeRunRow, drawRunRow);
  $('sched-runs-count').textContent = !shown ? 'loading…'
    : (shown.count > runs.length ? `newest ${runs.length} of ${shown.count}` : `${shown.count}`);
  $('sched-runs').dataset.loaded = String(!!shown);
  $('sched-runs-empty').hidden = !shown || runs.length > 0;
  showProblem($('sched-runs-error'), sched.runsError ? `Cannot read its runs: ${sched.runsError.message}` : '');
}

function drawSchedules() {
  const views = sched.order.map((id) => sched.views.get(id)).filter(Boolean);
  const table = $('sched-table');
  table.dataset.loaded = String(sched.loaded);
  table.hidden = sched.loaded && !views.length;
  $('sched-count').textContent = sched.loaded ? String(views.length) : '';
  $('sched-empty').hidden = !sched.loaded || views.length > 0;
  showProblem($('sched-error'), sched.listError ? `Cannot load schedules: ${sched.listError.message}. Retrying…` : '');
  showProblem($('sched-action-error'), sched.actionError);
  syncRows($('sched-rows'), views, (v) => v.id, makeScheduleRow, drawScheduleRow);
  drawScheduleDetail();
}

// ---------------------------------------------------------------- start

// The section shows with the execution list, whose visibility app.js owns.
function followList() {
  const hidden = $('list-view').hidden;
  const section = $('sched-view');
  const shown = section.hidden && !hidden;
  section.hidden = hidden;
  section.closest('.layout').classList.toggle('with-schedules', !hidden);
  if (shown) refreshSchedules();
}

function startSchedules() {
  $('sched-rows').addEventListener('click', (e) => {
    const tr = e.target.closest('tr[data-id]');
    if (tr && !e.target.closest('button, a')) selectSchedule(tr.dataset.id);
  });
  $('sched-rows').addEventListener('keydown', (e) => {
    const tr = e.target.closest('tr[data-id]');
    if (tr && e.target === tr && e.key === 'Enter') selectSchedule(tr.dataset.id);
  });
  $('sched-close').addEventListener('click', () => {
    closeSchedule();
    drawSchedules();
  });
  new MutationObserver(followList).observe($('list-view'), { attributes: true, attributeFilter: ['hidden'] });
  followList();
  setInterval(refreshSchedules, SCHED_REFRESH_MS);
  document.addEventListener('visibilitychange', refreshSchedules);
  refreshSchedules();
}

// After app.js, whose helpers ($, el, request, …) this file uses.
document.addEventListener('DOMContentLoaded', startSchedules);
