// The workflow page of the dashboard: one workflow execution drawn as its
// graph of nodes, live.
//
// It reads GET /v1/workflow-executions/{id} once and then follows
// /v1/workflow-executions/{id}/stream, whose every `workflow` event is the
// whole execution as GET shows it: the page draws what it is told and
// folds nothing itself. Nodes are placed in columns by their depth (the
// longest chain of dependencies before them); a click on a node shows its
// state, timings, output and runs, and the log lines of its latest run.
'use strict';

const WF_COL = 190;
const WF_ROW = 64;
const WF_W = 150;
const WF_H = 40;
const SVG_NS = 'http://www.w3.org/2000/svg';

const wf = { id: null, source: null, view: null, selected: null, logsFor: null, drawn: null };

function wfEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Column of each node: 0 for roots, else one more than its deepest dependency.
function wfLayout(nodes) {
  const depth = {};
  const visit = (name, seen) => {
    if (depth[name] !== undefined) return depth[name];
    if (seen.has(name)) return 0;
    seen.add(name);
    const deps = (nodes[name].depends_on || []).filter((d) => nodes[d]);
    depth[name] = deps.length ? 1 + Math.max(...deps.map((d) => visit(d, seen))) : 0;
    return depth[name];
  };
  Object.keys(nodes).forEach((name) => visit(name, new Set()));
  const columns = [];
  Object.keys(nodes).sort().forEach((name) => {
    (columns[depth[name]] = columns[depth[name]] || []).push(name);
  });
  const place = {};
  columns.forEach((names, c) => names.forEach((name, r) => {
    place[name] = { x: 10 + c * WF_COL, y: 10 + r * WF_ROW };
  }));
  const rows = Math.max(1, ...columns.map((c) => c.length));
  return { place, width: 20 + columns.length * WF_COL, height: 20 + rows * WF_ROW };
}

function wfTook(item) {
  if (!item || !item.started_at) return '';
  const end = item.finished_at ? Date.parse(item.finished_at) : Date.now();
  return duration(end - Date.parse(item.started_at));
}

function wfNodeText(node) {
  const total = node.items ? node.items.length : null;
  if (total !== null) {
    const done = (node.runs || []).filter((r) => r.status === 'succeeded').length;
    return `${label(node.status)} ${done}/${total}`;
  }
  const took = wfTook(node);
  return took ? `${label(node.status)} · ${took}` : label(node.status);
}

function drawWorkflow() {
  const view = wf.view;
  if (!view) return;
  $('wf-id').textContent = view.id;
  $('wf-name').textContent = `${view.workflow} v${view.version}`;
  const status = $('wf-status');
  status.textContent = label(view.status) + (view.cancel_requested && view.status === 'running' ? ' (cancelling)' : '');
  status.dataset.status = view.status;
  status.className = `badge s-${view.status}`;
  const reason = $('wf-reason');
  reason.hidden = !view.reason;
  reason.textContent = view.reason || '';
  $('wf-cancel').disabled = view.status !== 'running' || view.cancel_requested;
  $('wf-retry').disabled = !['failed', 'cancelled', 'timed_out'].includes(view.status);

  const svg = $('wf-graph');
  const nodes = view.nodes || {};
  // The graph is built once per execution and then changed in place: an
  // element a user (or a test) is about to click is never replaced.
  if (wf.drawn !== view.id) {
    buildGraph(svg, nodes);
    wf.drawn = view.id;
  }
  for (const [name, node] of Object.entries(nodes)) {
    const g = svg.querySelector(`.wf-node[data-node="${CSS.escape(name)}"]`);
    if (!g) continue;
    g.setAttribute('class', `wf-node s-${node.status}${wf.selected === name ? ' selected' : ''}`);
    g.dataset.status = node.status;
    g.querySelector('.wf-state').textContent = wfNodeText(node);
  }
  for (const edge of svg.querySelectorAll('.wf-edge')) {
    const from = nodes[edge.dataset.from];
    if (from) edge.setAttribute('class', `wf-edge s-${from.status}`);
  }
  drawNodeDetail();
  const out = $('wf-output');
  out.hidden = view.output === null || view.output === undefined;
  $('wf-output-body').textContent = out.hidden ? '' : JSON.stringify(view.output, null, 2);
}

function buildGraph(svg, nodes) {
  const { place, width, height } = wfLayout(nodes);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.replaceChildren();
  for (const [name, node] of Object.entries(nodes)) {
    for (const dep of node.depends_on || []) {
      if (!place[dep]) continue;
      const a = place[dep];
      const b = place[name];
      const x1 = a.x + WF_W;
      const y1 = a.y + WF_H / 2;
      const x2 = b.x;
      const y2 = b.y + WF_H / 2;
      const mid = (x1 + x2) / 2;
      svg.append(wfEl('path', {
        class: 'wf-edge',
        d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
        'data-from': dep,
        'data-to': name,
      }));
    }
  }
  for (const [name, node] of Object.entries(nodes)) {
    const p = place[name];
    const g = wfEl('g', {
      class: 'wf-node',
      transform: `translate(${p.x},${p.y})`,
      'data-node': name,
      tabindex: '0',
      role: 'button',
    });
    g.append(wfEl('rect', { width: WF_W, height: WF_H, rx: 6 }));
    g.append(wfEl('text', { x: 8, y: 16, class: 'wf-name' }, `${name} · ${node.kind}`));
    g.append(wfEl('text', { x: 8, y: 32, class: 'wf-state' }, ''));
    g.addEventListener('click', () => selectNode(name));
    g.addEventListener('keydown', (e) => { if (e.key === 'Enter') selectNode(name); });
    svg.append(g);
  }
}

function drawNodeDetail() {
  const panel = $('wf-node');
  const node = wf.view && wf.selected ? wf.view.nodes[wf.selected] : null;
  panel.hidden = !node;
  if (!node) return;
  panel.dataset.node = wf.selected;
  $('wf-node-title').textContent = `${wf.selected} (${node.kind})`;
  const facts = $('wf-node-facts');
  facts.replaceChildren();
  const fact = (k, v) => {
    if (v === undefined || v === null || v === '') return;
    const box = el('div');
    box.append(el('dt', null, k), el('dd', null, String(v)));
    facts.append(box);
  };
  fact('state', label(node.status));
  fact('took', wfTook(node));
  fact('started', node.started_at ? new Date(node.started_at).toLocaleTimeString() : '');
  fact('why', node.reason);
  fact('after', (node.depends_on || []).join(', '));
  const runs = $('wf-runs');
  runs.replaceChildren();
  (node.runs || []).forEach((run, i) => {
    const tr = el('tr');
    const link = el('a', 'mono', run.execution);
    link.href = `#/executions/${encodeURIComponent(run.execution)}`;
    const id = el('td');
    id.append(link);
    tr.append(el('td', 'num', String(i)), id, el('td', null, label(run.status)), el('td', 'num', wfTook(run)), el('td', null, run.error || ''));
    runs.append(tr);
  });
  const output = node.output === undefined || node.output === null ? '' : JSON.stringify(node.output, null, 2);
  $('wf-node-output').textContent = output;
  const last = (node.runs || [])[node.runs ? node.runs.length - 1 : 0];
  const logs = $('wf-node-logs');
  if (!last) {
    logs.replaceChildren();
    logs.dataset.execution = '';
    return;
  }
  // Read the run's lines again for another run or another state of it, and
  // every second while it runs.
  const key = `${last.execution}:${last.status}`;
  if (wf.logsFor !== key || last.status === 'running') loadNodeLogs(last.execution, key);
}

async function loadNodeLogs(execution, key) {
  wf.logsFor = key;
  try {
    const r = await fetch(`/v1/executions/${encodeURIComponent(execution)}/logs?limit=200`);
    if (!r.ok || wf.logsFor !== key) return;
    const body = await r.json();
    const logs = $('wf-node-logs');
    logs.replaceChildren(...(body.lines || []).map((l, i) => {
      const row = el('div', `log ${l.stream === 'stderr' ? 'stderr' : ''}`);
      row.append(el('span', 'n', String((l.n === undefined ? i : l.n) + 1)), el('span', 'text', l.line));
      return row;
    }));
    logs.dataset.execution = execution;
  } catch (_) { /* the next change reads them again */ }
}

function selectNode(name) {
  wf.selected = name;
  wf.logsFor = null;
  drawWorkflow();
}

async function showWorkflow(id) {
  $('list-view').hidden = true;
  $('exec-view').hidden = true;
  $('wf-view').hidden = false;
  if (wf.id === id && wf.source) return;
  closeWorkflow();
  wf.id = id;
  $('wf-error').hidden = true;
  try {
    const r = await fetch(`/v1/workflow-executions/${encodeURIComponent(id)}`);
    const body = await r.json();
    if (!r.ok) throw new Error(body.detail || r.statusText);
    wf.view = body;
    drawWorkflow();
  } catch (e) {
    $('wf-error').hidden = false;
    $('wf-error').textContent = String(e.message || e);
    return;
  }
  const source = new EventSource(`/v1/workflow-executions/${encodeURIComponent(id)}/stream`);
  source.addEventListener('workflow', (e) => {
    if (wf.id !== id) return;
    wf.view = JSON.parse(e.data);
    drawWorkflow();
  });
  wf.source = source;
}

function closeWorkflow() {
  if (wf.source) wf.source.close();
  Object.assign(wf, { id: null, source: null, view: null, selected: null, logsFor: null, drawn: null });
}

async function actWorkflow(action) {
  if (!wf.id) return;
  const r = await fetch(`/v1/workflow-executions/${encodeURIComponent(wf.id)}/${action}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: action === 'cancel' ? JSON.stringify({ reason: 'cancelled from the dashboard' }) : '{}',
  });
  const body = await r.json();
  if (r.ok) {
    wf.view = body;
    drawWorkflow();
    // A retry or cancel changes what the feed will send: follow it again.
    const id = wf.id;
    closeWorkflow();
    showWorkflow(id);
  } else {
    $('wf-error').hidden = false;
    $('wf-error').textContent = body.detail || r.statusText;
  }
}

function startWorkflows() {
  $('wf-cancel').addEventListener('click', () => actWorkflow('cancel'));
  $('wf-retry').addEventListener('click', () => actWorkflow('retry'));
  setInterval(() => {
    // Times of running nodes move with the clock.
    if (wf.view && wf.view.status === 'running') drawWorkflow();
  }, 1000);
}
