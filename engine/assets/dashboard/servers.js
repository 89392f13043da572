// The servers section of the dashboard, under the schedules: every server of
// the inventory with its address, labels and last run, and a Test button
// that checks the connection (POST /v1/servers/{name}/test: a worker
// connects afresh, checks the host key and the key, runs `uname -a`) and
// shows what it found in the row.
//
// It reads GET /v1/servers every five seconds while the list is in view.
// Rows are changed in place, keyed by name, so a button about to be clicked
// is never replaced; a test's result stays in its row until the next test.
'use strict';

const SRV_REFRESH_MS = 5000;

const srv = {
  servers: [],
  loaded: false,
  listError: null,
  tests: new Map(),
  loading: false,
};

function srvAddress(s) {
  return `${s.user}@${s.address}:${s.port}`;
}

function srvLabels(s) {
  return Object.entries(s.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ');
}

async function refreshServers() {
  if (document.hidden || $('srv-view').hidden || srv.loading) return;
  srv.loading = true;
  try {
    const body = await getJSON('/v1/servers');
    srv.servers = body.servers || [];
    srv.loaded = true;
    srv.listError = null;
  } catch (e) {
    srv.listError = e;
  } finally {
    srv.loading = false;
  }
  drawServers();
}

async function testServer(name) {
  const known = srv.tests.get(name);
  if (known && known.state === 'running') return;
  srv.tests.set(name, { state: 'running' });
  drawServers();
  let result;
  try {
    const answer = await request('POST', `/v1/servers/${enc(name)}/test`, {});
    result = answer.ok
      ? { state: 'ok', text: `ok · ${duration(answer.elapsed_ms)} · connect ${duration(answer.connect_ms)}`, detail: answer.uname || '', title: answer.host_key || '' }
      : { state: 'failed', text: `failed · ${label(answer.error && answer.error.class)}`, detail: (answer.error && answer.error.message) || '' };
  } catch (e) {
    result = { state: 'failed', text: 'failed', detail: e.message };
  }
  srv.tests.set(name, result);
  drawServers();
  refreshServers();
}

function makeServerRow() {
  const tr = el('tr', 'srv-row');
  tr.dataset.testid = 'server-row';
  const who = el('td');
  const [name, description] = stacked(who);
  name.className = 'mono';
  const address = el('td', 'mono srv-address');
  const labels = el('td', 'muted small srv-labels');
  const lastCell = el('td', 'srv-last');
  const lastBadge = el('span', 'badge');
  const lastAt = el('span', 'muted small');
  lastCell.append(lastBadge, lastAt);
  const resultCell = el('td', 'srv-result');
  const [result, detail] = stacked(resultCell);
  const actions = el('td', 'sched-actions');
  const test = el('button', null, 'Test');
  test.type = 'button';
  test.dataset.action = 'test';
  test.addEventListener('click', () => testServer(tr.dataset.id));
  actions.append(test);
  tr.append(who, address, labels, lastCell, resultCell, actions);
  tr.parts = { name, description, address, labels, lastBadge, lastAt, result, detail, test };
  return tr;
}

function drawServerRow(tr, s) {
  const p = tr.parts;
  const last = s.history && s.history.last_run;
  const test = srv.tests.get(s.name);
  tr.dataset.id = s.name;
  tr.dataset.test = test ? test.state : '';
  p.name.textContent = s.name;
  p.description.textContent = s.description || '';
  p.address.textContent = srvAddress(s);
  p.labels.textContent = srvLabels(s);
  p.lastBadge.hidden = !last;
  p.lastBadge.textContent = last ? label(last.status) : '';
  p.lastBadge.dataset.status = last ? last.status : '';
  p.lastAt.textContent = last ? ago(last.submitted_at) : 'never';
  p.result.textContent = test ? (test.state === 'running' ? 'testing…' : test.text) : '';
  p.result.dataset.state = test ? test.state : '';
  p.detail.textContent = test && test.detail ? test.detail : '';
  p.detail.title = test && test.title ? test.title : '';
  p.test.disabled = !!test && test.state === 'running';
}

function drawServers() {
  const table = $('srv-table');
  table.dataset.loaded = String(srv.loaded);
  table.hidden = srv.loaded && !srv.servers.length;
  $('srv-count').textContent = srv.loaded ? String(srv.servers.length) : '';
  $('srv-empty').hidden = !srv.loaded || srv.servers.length > 0;
  showProblem($('srv-error'), srv.listError ? `Cannot load servers: ${srv.listError.message}. Retrying…` : '');
  syncRows($('srv-rows'), srv.servers, (s) => s.name, makeServerRow, drawServerRow);
}

// The section shows with the execution list, whose visibility app.js owns.
function followListForServers() {
  const hidden = $('list-view').hidden;
  const section = $('srv-view');
  const shown = section.hidden && !hidden;
  section.hidden = hidden;
  if (shown) refreshServers();
}

function startServers() {
  new MutationObserver(followListForServers).observe($('list-view'), { attributes: true, attributeFilter: ['hidden'] });
  followListForServers();
  setInterval(refreshServers, SRV_REFRESH_MS);
  document.addEventListener('visibilitychange', refreshServers);
  refreshServers();
}

// After app.js and schedules.js, whose helpers ($, el, request, syncRows, …) this file uses.
document.addEventListener('DOMContentLoaded', startServers);
