'use strict';
// The management UI: a few views over /api/v1, routed by the URL's hash.
// Everything shown is built with DOM calls and textContent (never HTML from
// data); changes send the session's CSRF token in X-CSRF-Token.

const session = { csrf: null, team: null };
// What the current view set up (timers, event sources), undone on leaving.
let cleanups = [];

const TERMINAL = ['succeeded', 'failed', 'cancelled'];

async function api(method, path, body) {
  const opts = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  if (method !== 'GET') opts.headers['X-CSRF-Token'] = session.csrf;
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    window.location.assign('/ui/login');
    throw new Error('signed out');
  }
  const data = r.status === 204 ? null : await r.json();
  if (!r.ok) throw new Error((data && data.error) || r.statusText);
  return data;
}

// el('td', {class: 'x'}, 'text', child…): attributes are set as attributes,
// strings become text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function table(headers, rows, attrs) {
  return el('table', attrs || {},
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows));
}

function time(t) {
  if (!t) return '–';
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString();
}

function stateBadge(state) {
  return el('span', { class: 'state state-' + state, 'data-state': state }, state);
}

function showError(e) {
  const p = document.getElementById('error');
  p.textContent = e ? String(e.message || e) : '';
  p.hidden = !e;
}

function every(ms, fn) {
  fn();
  const t = setInterval(fn, ms);
  cleanups.push(() => clearInterval(t));
}

function render(...nodes) {
  document.getElementById('main').replaceChildren(...nodes);
}

// ---- views ----

async function workersView() {
  const holder = el('div', { id: 'workers' }, el('p', { class: 'muted' }, 'Loading…'));
  render(el('h1', {}, 'Workers'), holder);
  every(2000, async () => {
    try {
      const { workers } = await api('GET', '/api/v1/workers');
      if (workers.length === 0) {
        holder.replaceChildren(el('p', { class: 'muted' },
          'No worker has connected with this team\'s key yet. Start one with --web-socket-url pointing here.'));
        return;
      }
      holder.replaceChildren(table(
        ['Worker id', 'State', 'Processes', 'Connected since', 'Active runs', 'Queued', 'Last seen', ''],
        workers.map((w) => el('tr', {
          'data-worker-id': w.worker_id,
          class: w.connections.length ? 'connected' : 'offline',
        },
        el('td', {}, w.worker_id),
        el('td', { class: 'worker-state' }, workerState(w)),
        el('td', { class: 'processes' }, String(w.connections.length)),
        el('td', {}, w.connections.length ? time(w.connections[0].connected_at) : 'offline'),
        el('td', {}, String(w.active_runs)),
        el('td', {}, String(w.queued_runs)),
        el('td', {}, time(w.last_seen_at)),
        el('td', {}, el('button', {
          type: 'button',
          class: 'pause-toggle',
          onclick: async () => {
            try {
              await api('POST', '/api/v1/workers/' + encodeURIComponent(w.worker_id) + (w.paused ? '/resume' : '/pause'));
              showError(null);
            } catch (e) { showError(e); }
          },
        }, w.paused ? 'Resume' : 'Pause')))),
        { class: 'list' }));
      showError(null);
    } catch (e) { showError(e); }
  });
}

// Paused (an operator's choice) first; draining only when every process
// of the id says so (the worker-state extension), else how many are at
// capacity.
function workerState(w) {
  const parts = [];
  if (w.paused) parts.push('paused');
  const n = w.connections.length;
  const draining = w.connections.filter((c) => c.draining).length;
  const full = w.connections.filter((c) => c.at_capacity && !c.draining).length;
  if (n === 0) parts.push('offline');
  else if (draining === n) parts.push('draining');
  else {
    if (draining) parts.push(draining + ' draining');
    if (full) parts.push(full + ' at capacity');
    if (!draining && !full) parts.push('online');
  }
  return parts.join(', ');
}


// Runs per page of the runs view; the API allows up to RUNS_MAX per request.
const RUNS_PAGE = 50;
const RUNS_MAX = 1000;

// The runs view fetches only what it shows: the newest page, one more page
// per "More" (from the last page's cursor), and every 2 s the newest runs
// again, as many as are shown (so new runs appear on top and states change
// in place), never the whole list.
async function runsView() {
  const holder = el('div', { id: 'runs' }, el('p', { class: 'muted' }, 'Loading…'));
  const more = el('button', { id: 'runs-more', type: 'button', hidden: true }, 'More');
  const count = el('p', { id: 'runs-count', class: 'muted' });
  render(el('h1', {}, 'Runs ', el('a', { href: '#/new', class: 'button' }, 'New run')), holder, count, more);
  let shown = [];   // newest first
  let next = null;  // the cursor after the last shown run
  // One request at a time, so pages never interleave: each waits for the
  // one before. A "More" click that comes while a refresh is in flight
  // waits for it (it used to be dropped, losing the click); a refresh tick
  // that finds one refresh pending or running is skipped.
  let queue = Promise.resolve();
  let refreshing = false;
  const draw = () => {
    holder.replaceChildren(shown.length === 0
      ? el('p', { class: 'muted' }, 'No runs yet.')
      : table(['Run', 'State', 'Host', 'Title', 'Created', 'Updated'],
        shown.map((r) => el('tr', { 'data-run-id': r.id },
          el('td', {}, el('a', { href: '#/runs/' + encodeURIComponent(r.id) }, r.id)),
          el('td', {}, stateBadge(r.state)),
          el('td', {}, r.worker_host),
          el('td', {}, r.title),
          el('td', {}, time(r.created_at)),
          el('td', {}, time(r.updated_at)))),
        { class: 'list' }));
    count.textContent = shown.length ? `Showing the newest ${shown.length} runs` + (next ? '' : ' (all)') : '';
    more.hidden = !next;
  };
  const inTurn = (fn) => {
    queue = queue.then(async () => {
      try { await fn(); showError(null); } catch (e) { showError(e); }
    });
    return queue;
  };
  more.addEventListener('click', () => inTurn(async () => {
    if (!next) return; // an earlier click fetched the last page
    const page = await api('GET', `/api/v1/runs?limit=${RUNS_PAGE}&cursor=${encodeURIComponent(next)}`);
    const known = new Set(shown.map((r) => r.id));
    shown = shown.concat(page.runs.filter((r) => !known.has(r.id)));
    next = page.next_cursor;
    draw();
  }));
  every(2000, () => {
    if (refreshing) return;
    refreshing = true;
    inTurn(async () => {
      try {
        const limit = Math.min(Math.max(shown.length, RUNS_PAGE), RUNS_MAX);
        const page = await api('GET', `/api/v1/runs?limit=${limit}`);
        if (shown.length <= limit) {
          shown = page.runs;
          next = page.next_cursor;
        } else {
          // More than one request can hold: refresh the newest, keep the rest.
          const fresh = new Set(page.runs.map((r) => r.id));
          shown = page.runs.concat(shown.slice(limit).filter((r) => !fresh.has(r.id)));
        }
        draw();
      } finally { refreshing = false; }
    });
  });
}

function field(label, value) {
  if (value === undefined || value === null || value === '' ||
      (Array.isArray(value) && value.length === 0)) return null;
  return [el('dt', {}, label), el('dd', {}, Array.isArray(value) ? value.join(', ') : String(value))];
}

async function runView(id) {
  const meta = el('dl', { id: 'run-meta' });
  const history = el('div', { id: 'run-history' });
  const output = el('pre', { id: 'output', class: 'output' });
  const outputState = el('p', { id: 'output-state', class: 'muted' }, 'Connecting to the output…');
  const cancel = el('button', { id: 'cancel', type: 'button', hidden: true }, 'Cancel run');
  const path = '/api/v1/runs/' + encodeURIComponent(id);
  cancel.addEventListener('click', async () => {
    try { await api('POST', path + '/cancel'); await refresh(); } catch (e) { showError(e); }
  });
  render(el('h1', {}, 'Run ', el('code', {}, id), ' ', cancel), meta, el('h2', {}, 'Output'),
    outputState, output, el('h2', {}, 'History'), history);

  async function refresh() {
    const r = await api('GET', path);
    meta.replaceChildren(...[
      [el('dt', {}, 'State'), el('dd', {}, stateBadge(r.state))],
      field('Worker host', r.worker_host),
      field('Title', r.title),
      field('Prompt', r.prompt),
      field('Image', r.docker_image),
      field('Agent sidecar', r.sidecar_image),
      // Names only: the API never returns values.
      field('Environment', r.env_var_names),
      field('Execution', r.execution_id),
      field('Schedule', r.schedule_id && (r.schedule_id + ' (slot ' + time(r.scheduled_for) + ')')),
      field('Created', time(r.created_at)),
      field('Updated', time(r.updated_at)),
      field('Waiting', r.waiting_reason),
      field('Failure reason', r.failure_reason),
      field('Exit code', r.exit_code),
      field('Message', r.message),
      field('Cancel', r.cancel_requested && !TERMINAL.includes(r.state) ? 'requested' : null),
    ].filter(Boolean).flat());
    history.replaceChildren(table(['At', 'State', 'Note'], r.history.map((h) =>
      el('tr', {}, el('td', {}, time(h.at)), el('td', {}, stateBadge(h.state)), el('td', {}, h.note || '')))));
    cancel.hidden = TERMINAL.includes(r.state);
    return r;
  }

  let done = false;
  let source = null;
  const timer = setInterval(async () => {
    if (done) return;
    try { const r = await refresh(); done = TERMINAL.includes(r.state) && source === null; } catch (e) { showError(e); }
  }, 2000);
  cleanups.push(() => clearInterval(timer));
  try { await refresh(); } catch (e) { showError(e); return; }

  // Live output: server-sent events; the browser resumes from the last
  // event id by itself after a dropped connection.
  source = new EventSource(path + '/output?follow=true');
  cleanups.push(() => { if (source) source.close(); });
  const append = (cls, text) => {
    const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
    output.append(el('span', { class: cls }, text));
    if (atBottom) output.scrollTop = output.scrollHeight;
  };
  source.addEventListener('open', () => { outputState.textContent = 'Live.'; });
  source.addEventListener('output', (ev) => {
    const c = JSON.parse(ev.data);
    if (c.dropped_bytes) {
      append('marker', '[' + c.dropped_bytes + ' bytes of output dropped by the worker here: its link was slower than the task]\n');
    }
    append(c.stream, c.data);
  });
  source.addEventListener('truncated', (ev) => {
    const t = JSON.parse(ev.data);
    append('marker', '[' + t.bytes + ' bytes of earlier output skipped: the control plane keeps the last ' +
      t.limit_bytes + ' bytes of a run]\n');
  });
  source.addEventListener('end', async (ev) => {
    const r = JSON.parse(ev.data);
    source.close();
    source = null;
    outputState.textContent = 'The run ended (' + r.state + '); this is all of its output.';
    output.setAttribute('data-complete', 'true');
    try { await refresh(); } catch (e) { showError(e); }
  });
  source.addEventListener('error', () => {
    if (source) outputState.textContent = 'Reconnecting to the output…';
  });
}

// The worker ids this team's workers connected with, connected ones first.
async function hostOptions(select) {
  const { workers } = await api('GET', '/api/v1/workers');
  select.replaceChildren(...workers.map((w) => el('option', { value: w.worker_id },
    w.worker_id + (w.connections.length ? ' (' + w.connections.length + ' connected)' : ' (offline)'))));
  if (workers.length === 0) {
    select.append(el('option', { value: '', disabled: true, selected: true }, 'no worker has connected yet'));
  }
}

// KEY=VALUE lines; a line without = is refused rather than guessed.
function parseEnv(text) {
  const env = {};
  for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const i = line.indexOf('=');
    if (i <= 0) throw new Error('Environment: write one KEY=VALUE per line (' + line.split('=')[0] + ')');
    env[line.slice(0, i)] = line.slice(i + 1);
  }
  return env;
}

function runFields() {
  const f = {
    host: el('select', { id: 'host', name: 'worker_host', required: true }),
    title: el('input', { id: 'title', name: 'title', type: 'text' }),
    prompt: el('textarea', { id: 'prompt', name: 'prompt', rows: 3 }),
    image: el('input', { id: 'image', name: 'docker_image', type: 'text', placeholder: "the worker's default" }),
    sidecar: el('input', { id: 'sidecar', name: 'sidecar_image', type: 'text' }),
    env: el('textarea', { id: 'env', name: 'env', rows: 3, placeholder: 'KEY=VALUE, one per line', autocomplete: 'off' }),
  };
  const rows = [
    ['Worker host', f.host], ['Title', f.title], ['Prompt', f.prompt], ['Image', f.image],
    ['Agent sidecar', f.sidecar], ['Environment (values are secrets: sent, never shown again)', f.env],
  ].map(([label, input]) => el('label', {}, el('span', {}, label), input));
  const spec = () => {
    const s = { worker_host: f.host.value };
    if (f.title.value.trim()) s.title = f.title.value.trim();
    if (f.prompt.value.trim()) s.prompt = f.prompt.value;
    if (f.image.value.trim()) s.docker_image = f.image.value.trim();
    if (f.sidecar.value.trim()) s.sidecar_image = f.sidecar.value.trim();
    const env = parseEnv(f.env.value);
    if (Object.keys(env).length) s.env_vars = env;
    return s;
  };
  return { f, rows, spec };
}

async function newRunView() {
  const { f, rows, spec } = runFields();
  const form = el('form', { id: 'new-run', class: 'form' }, rows,
    el('button', { type: 'submit', id: 'create-run' }, 'Create run'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const run = await api('POST', '/api/v1/runs', spec());
      window.location.hash = '#/runs/' + encodeURIComponent(run.id);
    } catch (e) { showError(e); }
  });
  render(el('h1', {}, 'New run'), form);
  try { await hostOptions(f.host); } catch (e) { showError(e); }
}

async function schedulesView() {
  const holder = el('div', { id: 'schedules' });
  const { f, rows, spec } = runFields();
  const cron = el('input', { id: 'cron', name: 'cron', type: 'text', required: true, placeholder: '*/15 * * * *' });
  const tz = el('input', { id: 'time_zone', name: 'time_zone', type: 'text', value: 'UTC' });
  const name = el('input', { id: 'schedule-name', name: 'name', type: 'text' });
  const missed = el('select', { id: 'missed', name: 'missed' },
    el('option', { value: 'skip' }, 'skip slots missed while the control plane was down'),
    el('option', { value: 'run_once' }, 'run the latest missed slot once'));
  const form = el('form', { id: 'new-schedule', class: 'form' },
    el('label', {}, el('span', {}, 'Cron expression (5 fields, or 6 with seconds)'), cron),
    el('label', {}, el('span', {}, 'Time zone (IANA)'), tz),
    el('label', {}, el('span', {}, 'Missed slots'), missed),
    el('label', {}, el('span', {}, 'Name'), name),
    rows,
    el('button', { type: 'submit', id: 'create-schedule' }, 'Create schedule'));

  async function refresh() {
    const { schedules } = await api('GET', '/api/v1/schedules');
    const action = (s, verb, label) => el('button', {
      type: 'button',
      onclick: async () => {
        try {
          if (verb === 'delete') await api('DELETE', '/api/v1/schedules/' + encodeURIComponent(s.id));
          else await api('POST', '/api/v1/schedules/' + encodeURIComponent(s.id) + '/' + verb);
          await refresh();
        } catch (e) { showError(e); }
      },
    }, label);
    holder.replaceChildren(schedules.length === 0 ? el('p', { class: 'muted' }, 'No schedules yet.')
      : table(['Name', 'Cron', 'Time zone', 'Missed', 'Host', 'State', 'Next', 'Last run', ''],
        schedules.map((s) => el('tr', { 'data-schedule-id': s.id },
          el('td', {}, s.name), el('td', {}, el('code', {}, s.cron)), el('td', {}, s.time_zone),
          el('td', {}, s.missed), el('td', {}, s.run.worker_host),
          el('td', {}, s.paused ? 'paused' : 'active'), el('td', {}, time(s.next_slot_at)),
          el('td', {}, s.last_run_id
            ? el('a', { href: '#/runs/' + encodeURIComponent(s.last_run_id) }, s.last_run_id) : '–'),
          el('td', {}, s.paused ? action(s, 'resume', 'Resume') : action(s, 'pause', 'Pause'), ' ',
            action(s, 'delete', 'Delete')))),
        { class: 'list' }));
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const body = { cron: cron.value, time_zone: tz.value.trim() || 'UTC', missed: missed.value, run: spec() };
      if (name.value.trim()) body.name = name.value.trim();
      await api('POST', '/api/v1/schedules', body);
      form.reset();
      tz.value = 'UTC';
      await refresh();
      showError(null);
    } catch (e) { showError(e); }
  });
  render(el('h1', {}, 'Schedules'), holder, el('h2', {}, 'New schedule'), form);
  try { await Promise.all([refresh(), hostOptions(f.host)]); } catch (e) { showError(e); }
}

// ---- routing ----

function route() {
  for (const c of cleanups) c();
  cleanups = [];
  showError(null);
  const hash = window.location.hash.replace(/^#\/?/, '');
  const [view, arg] = hash.split('/');
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.getAttribute('data-nav') === (view || 'workers'));
  }
  switch (view) {
    case 'runs': return arg ? runView(decodeURIComponent(arg)) : runsView();
    case 'new': return newRunView();
    case 'schedules': return schedulesView();
    default: return workersView();
  }
}

async function start() {
  try {
    const s = await api('GET', '/ui/session');
    session.csrf = s.csrf_token;
    session.team = s.team;
  } catch (e) {
    return; // api() went to the sign-in page
  }
  document.getElementById('team').textContent = 'team ' + session.team;
  document.getElementById('sign-out').addEventListener('click', async () => {
    try { await api('POST', '/ui/logout'); } catch (e) { /* signed out either way */ }
    window.location.assign('/ui/login');
  });
  window.addEventListener('hashchange', route);
  route();
}

start();
