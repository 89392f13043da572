// The log search section of the dashboard, under the servers: a search box
// over every execution's log lines (GET /v1/logs/search), by substring or,
// with "regex" ticked, by regular expression, optionally in one queue.
// Matches come newest first, each linking to its execution; the line under
// the box says how many lines the engine scanned, how long it took, and
// whether the scan covered every line or stopped at its limit.
'use strict';

const ls = { busy: false, seq: 0 };

async function runLogSearch(event) {
  event.preventDefault();
  const text = $('ls-query').value;
  if (!text) return;
  const params = new URLSearchParams();
  params.set($('ls-regex').checked ? 'regex' : 'q', text);
  const queue = $('ls-queue').value.trim();
  if (queue) params.set('queue', queue);
  params.set('limit', '200');
  const mine = ++ls.seq;
  ls.busy = true;
  $('ls-state').textContent = 'searching…';
  showProblem($('ls-error'), '');
  try {
    const answer = await getJSON(`/v1/logs/search?${params}`);
    if (mine !== ls.seq) return;
    drawLogMatches(answer);
  } catch (e) {
    if (mine !== ls.seq) return;
    $('ls-state').textContent = '';
    showProblem($('ls-error'), `Search refused: ${e.message}`);
  } finally {
    ls.busy = false;
  }
}

function drawLogMatches(answer) {
  const rows = $('ls-rows');
  rows.replaceChildren();
  for (const m of answer.matches || []) {
    const tr = el('tr');
    tr.dataset.testid = 'log-match';
    const when = el('td', 'muted small mono', clock(m.time));
    when.title = m.time || '';
    const where = el('td');
    const link = el('a', 'mono', m.execution);
    link.href = `#/executions/${enc(m.execution)}`;
    where.append(link, el('span', 'muted small', ` ${m.kind || ''} · ${m.queue || ''} · line ${m.n}`));
    const line = el('td', `mono ls-line ${m.stream === 'stderr' ? 'stderr' : ''}`, m.line);
    tr.append(when, where, line);
    rows.append(tr);
  }
  const n = (answer.matches || []).length;
  const scope = answer.complete ? 'every line' : 'stopped at its limit';
  const state = `${n} match${n === 1 ? '' : 'es'} · scanned ${answer.scanned_lines} lines (${scope}) in ${duration(answer.took_ms)}`;
  $('ls-state').textContent = state;
  $('ls-table').hidden = n === 0;
}

// The section shows with the execution list, whose visibility app.js owns.
function followListForLogSearch() {
  $('ls-view').hidden = $('list-view').hidden;
}

function startLogSearch() {
  $('ls-form').addEventListener('submit', runLogSearch);
  new MutationObserver(followListForLogSearch).observe($('list-view'), { attributes: true, attributeFilter: ['hidden'] });
  followListForLogSearch();
}

// After app.js and schedules.js, whose helpers ($, el, getJSON, …) this file uses.
document.addEventListener('DOMContentLoaded', startLogSearch);
