'use strict';
// warren's management console: a client of the management HTTP API (the same /api
// endpoints rabbitmqadmin uses), with no framework and no build step.
//
// Shape: small helpers (DOM building, API calls, tables, forms), then one function per
// page. A page function builds its static parts (forms) once and returns a `refresh`
// function that re-reads the API and redraws only the live parts; the router calls it
// now and every REFRESH_MS, so a half-filled form is never wiped by a refresh.
//
// Credentials: like RabbitMQ's console, the login form turns username and password into
// an HTTP basic Authorization header, kept in sessionStorage (gone when the tab closes)
// and sent with every API call. The API stays the only judge of what a user may do.

const REFRESH_MS = 5000;
const AUTH_KEY = 'warren.console.auth';
const CHART_SAMPLES = 60; // five minutes of 5 s samples
const PAGE_SIZE = 100;

const state = {
  refresh: null, // the current page's refresh function
  timer: null,
  generation: 0, // bumped by every navigation: late answers for an old page are dropped
  busy: false,
  again: false, // a refresh was asked for while one ran
  refreshFailed: false, // the error shown is a refresh's (cleared when one succeeds)
  samples: [], // overview samples for the charts: {t, rates, queued}
};

// ---------------------------------------------------------------- DOM helpers

function $(id) {
  return document.getElementById(id);
}

// el('a', {href: '#/x', testid: 'y', onclick: f}, 'text', child, ...): an element.
// Text is always set as text, never parsed as HTML, so names from the broker are safe.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'testid') node.setAttribute('data-testid', v);
    else if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-') || k.startsWith('aria-')) node.setAttribute(k, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmtNum(n) {
  return n === undefined || n === null ? '' : Number(n).toLocaleString('en');
}

function fmtRate(r) {
  return r === undefined || r === null ? '' : Number(r).toFixed(1) + '/s';
}

function rateOf(stats, key) {
  const d = stats && stats[key + '_details'];
  return d ? d.rate : 0;
}

function yesNo(b) {
  return b ? 'yes' : 'no';
}

function json(v) {
  return v && Object.keys(v).length ? JSON.stringify(v) : '';
}

function showError(message) {
  state.refreshFailed = false;
  const box = $('error');
  box.textContent = message || '';
  box.hidden = !message;
}

function showNotice(message) {
  const box = $('notice');
  box.textContent = message || '';
  box.hidden = !message;
}

// ---------------------------------------------------------------- the API

class ApiFailure extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

// '/queues' + seg('/', 'q') -> '/queues/%2F/q': every path piece percent-encoded.
function seg(...parts) {
  return parts.map((p) => '/' + encodeURIComponent(p)).join('');
}

// One API call. Resolves to the decoded JSON (null for an empty body); rejects with an
// ApiFailure carrying the API's "reason". A failed login (the stored credentials no
// longer valid) logs out.
async function api(method, path, body, headers) {
  const init = { method, headers: Object.assign({}, headers) };
  const auth = sessionStorage.getItem(AUTH_KEY);
  if (auth) init.headers.Authorization = auth;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  return send('api' + path, init);
}

// `credentials: 'omit'`: the Authorization header is ours, not the browser's. Without
// it a 401 (which carries WWW-Authenticate, as RabbitMQ's does) makes the browser open
// its own login dialog and hold the request until someone answers it (the Fetch
// standard prompts only when credentials are included).
async function send(url, init) {
  const resp = await fetch(url, Object.assign({ credentials: 'omit', cache: 'no-store' }, init));
  const raw = await resp.text();
  let data = null;
  try {
    data = raw ? JSON.parse(raw) : null;
  } catch (e) {
    data = { reason: raw };
  }
  if (!resp.ok) {
    const reason = (data && (data.reason || data.error)) || resp.status + ' ' + resp.statusText;
    if (resp.status === 401 && reason === 'Login failed' && init.headers.Authorization) {
      logout(reason);
    }
    throw new ApiFailure(resp.status, reason);
  }
  return data;
}

// A paginated listing (RabbitMQ's page/page_size/name parameters): {items, ...}.
function listPath(path, page, filter) {
  const q = new URLSearchParams({
    page: String(page),
    page_size: String(PAGE_SIZE),
    name: filter || '',
    use_regex: 'false',
    pagination: 'true',
  });
  return path + '?' + q.toString();
}

// Run an action from a button or form: show its outcome or the API's reason.
async function act(what, done) {
  showError('');
  showNotice('');
  try {
    const result = await what();
    if (done) showNotice(typeof done === 'function' ? done(result) : done);
    await refreshNow();
    return result;
  } catch (e) {
    showError(e.message);
    return undefined;
  }
}

// ---------------------------------------------------------------- login

function basicAuth(user, password) {
  const bytes = new TextEncoder().encode(user + ':' + password);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return 'Basic ' + btoa(binary);
}

async function login(event) {
  event.preventDefault();
  const auth = basicAuth($('login-username').value, $('login-password').value);
  const error = $('login-error');
  error.hidden = true;
  try {
    const who = await send('api/whoami', { headers: { Authorization: auth } });
    sessionStorage.setItem(AUTH_KEY, auth);
    $('login-password').value = '';
    showApp(who);
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  }
}

function logout(reason) {
  sessionStorage.removeItem(AUTH_KEY);
  stopRefresh();
  $('app').hidden = true;
  $('content').replaceChildren();
  $('login').hidden = false;
  const error = $('login-error');
  error.textContent = reason || '';
  error.hidden = !reason;
}

function showApp(who) {
  $('login').hidden = true;
  $('app').hidden = false;
  $('whoami').textContent = who.name;
  if (!location.hash || location.hash === '#' || location.hash === '#/') {
    location.hash = '#/overview';
  } else {
    route();
  }
}

// ---------------------------------------------------------------- routing and refresh

const pages = {
  overview: overviewPage,
  connections: connectionsPage,
  connection: connectionPage,
  channels: channelsPage,
  exchanges: exchangesPage,
  exchange: exchangePage,
  queues: queuesPage,
  queue: queuePage,
  consumers: consumersPage,
  users: usersPage,
  vhosts: vhostsPage,
  permissions: permissionsPage,
  policies: policiesPage,
};

// '#/queues' -> the list; '#/queues/<vhost>/<name>' -> one queue; likewise exchanges;
// '#/connections/<name>' -> one connection.
function parseHash() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const list = parts[0] || 'overview';
  const args = parts.slice(1);
  const detail = { queues: 'queue', exchanges: 'exchange', connections: 'connection' }[list];
  if (detail && args.length) return { name: detail, nav: list, args };
  return { name: pages[list] ? list : 'overview', nav: list, args: [] };
}

function route() {
  if (!sessionStorage.getItem(AUTH_KEY)) return;
  stopRefresh();
  showError('');
  showNotice('');
  const { name, nav, args } = parseHash();
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === nav);
  }
  const root = $('content');
  root.replaceChildren();
  root.dataset.page = name;
  state.generation += 1;
  state.refresh = pages[name](root, ...args);
  refreshNow();
  state.timer = setInterval(refreshNow, REFRESH_MS);
}

function stopRefresh() {
  clearInterval(state.timer);
  state.timer = null;
  state.refresh = null;
}

// Re-read the current page now. One refresh runs at a time; a request during one (an
// action's result, a navigation) runs once more right after it, so it is never lost.
async function refreshNow() {
  if (!state.refresh) return;
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  try {
    do {
      state.again = false;
      const generation = state.generation;
      try {
        await state.refresh();
        if (generation === state.generation) {
          $('updated').textContent = 'Last update: ' + new Date().toLocaleTimeString();
          if (state.refreshFailed) showError(''); // the API answers again
          state.refreshFailed = false;
        }
      } catch (e) {
        if (generation === state.generation) {
          showError(e.message);
          state.refreshFailed = true;
        }
      }
    } while (state.again && state.refresh);
  } finally {
    state.busy = false;
  }
}

function go(hash) {
  location.hash = hash;
}

// ---------------------------------------------------------------- tables and forms

// A table: columns are {title, field, num, value(row) -> text or node}. Each row is
// <tr data-testid="<testid>-row" data-name="<key(row)>">, plus data-vhost for objects
// that live in a vhost, and each cell has data-field=field, so tests find "the
// messages_ready cell of queue q in vhost /" without depending on layout.
function table(testid, columns, rows, key) {
  const head = el('tr', {}, columns.map((c) => el('th', {}, c.title)));
  const body = rows.map((row) =>
    el(
      'tr',
      {
        testid: testid + '-row',
        'data-name': key ? key(row) : undefined,
        'data-vhost': typeof row.vhost === 'string' ? row.vhost : undefined,
      },
      columns.map((c) =>
        el(
          'td',
          { class: c.num ? 'num' : undefined, 'data-field': c.field },
          c.value ? c.value(row) : c.num ? fmtNum(row[c.field]) : row[c.field]
        )
      )
    )
  );
  if (!rows.length) {
    body.push(el('tr', {}, el('td', { class: 'empty', colSpan: columns.length }, 'None')));
  }
  return el('table', { testid }, el('thead', {}, head), el('tbody', {}, body));
}

// A list page section with a name filter and pages of PAGE_SIZE, reading one of the
// API's paginated listings: returns {node, refresh}.
function pagedList(testid, path, columns, key) {
  let page = 1;
  let filter = '';
  const holder = el('div', { testid: testid + '-holder' });
  const info = el('span', { testid: testid + '-count' });
  const pager = el('span', { class: 'pager' });
  const input = el('input', {
    type: 'search',
    placeholder: 'Filter by name',
    testid: testid + '-filter',
    oninput: () => {
      filter = input.value;
      page = 1;
      refreshNow();
    },
  });
  async function refresh() {
    let data;
    try {
      data = await api('GET', listPath(path, page, filter));
    } catch (e) {
      if (e.message !== 'Page out of range' || page === 1) throw e;
      page = 1;
      data = await api('GET', listPath(path, page, filter));
    }
    holder.replaceChildren(table(testid, columns, data.items, key));
    info.textContent = `${data.filtered_count} of ${data.total_count} shown`;
    pager.replaceChildren();
    if (data.page_count > 1) {
      pager.append(
        el('button', { type: 'button', disabled: page <= 1, onclick: () => { page -= 1; refreshNow(); } }, '<'),
        ` page ${data.page} of ${data.page_count} `,
        el('button', { type: 'button', disabled: page >= data.page_count, onclick: () => { page += 1; refreshNow(); } }, '>')
      );
    }
  }
  const node = el('div', {}, el('div', { class: 'filter' }, input, ' ', info, ' ', pager), holder);
  return { node, refresh };
}

// A labelled form field.
function field(label, input) {
  return el('label', {}, el('span', {}, label), input);
}

function input(id, attrs) {
  return el('input', Object.assign({ id, name: id, testid: id }, attrs));
}

function select(id, options, value) {
  return el(
    'select',
    { id, name: id, testid: id },
    options.map(([v, label]) => el('option', { value: v, selected: v === value }, label))
  );
}

// A <select> of the vhosts, filled when the API answers.
function vhostSelect(id) {
  const sel = select(id, [['/', '/']], '/');
  api('GET', '/vhosts')
    .then((vhosts) => {
      const names = vhosts.map((v) => v.name);
      sel.replaceChildren(...names.map((n) => el('option', { value: n, selected: n === '/' }, n)));
    })
    .catch((e) => showError(e.message));
  return sel;
}

function form(testid, title, fields, submitLabel, onsubmit) {
  return el(
    'form',
    {
      class: 'box',
      testid,
      id: testid,
      onsubmit: (e) => {
        e.preventDefault();
        onsubmit(e.target);
      },
    },
    el('h3', {}, title),
    fields,
    el('button', { type: 'submit', testid: testid + '-submit', id: testid + '-submit' }, submitLabel)
  );
}

// A JSON object typed into a form, or an error naming the field.
function parseJsonField(text, what) {
  if (!text.trim()) return {};
  try {
    const v = JSON.parse(text);
    if (v && typeof v === 'object' && !Array.isArray(v)) return v;
  } catch (e) {
    // fall through
  }
  throw new Error(what + ' must be a JSON object, e.g. {"x-message-ttl": 60000}');
}

// A definition list of label/value pairs; values tagged data-field for tests.
function props(testid, pairs) {
  return el(
    'dl',
    { class: 'props', testid },
    pairs.map(([label, fieldName, value]) => [
      el('dt', {}, label),
      el('dd', { 'data-field': fieldName }, value),
    ])
  );
}

function dangerButton(testid, label, question, action) {
  return el(
    'button',
    {
      type: 'button',
      class: 'danger',
      testid,
      id: testid,
      onclick: () => {
        if (window.confirm(question)) action();
      },
    },
    label
  );
}

// ---------------------------------------------------------------- overview

function overviewPage(root) {
  const totals = el('div', { testid: 'overview-totals' });
  const rates = el('div', { testid: 'overview-rates' });
  const charts = el('div', { testid: 'overview-charts' });
  const node = el('div', { testid: 'overview-node' });
  const nodes = el('div', { testid: 'overview-nodes' });
  root.append(
    el('h2', {}, 'Overview'),
    totals,
    el('h2', {}, 'Message rates'),
    rates,
    charts,
    el('h2', {}, 'Node'),
    node,
    el('h2', {}, 'Nodes'),
    nodes
  );
  return async () => {
    const o = await api('GET', '/overview');
    // Monitoring users and above see the nodes; others get a 403 and no table.
    const members = await api('GET', '/nodes').catch(() => null);
    if (members) nodes.replaceChildren(nodesTable(members));
    recordSample(o);
    totals.replaceChildren(overviewTotals(o));
    rates.replaceChildren(overviewRates(o.message_stats || {}));
    charts.replaceChildren(
      chart('chart-rates', 'Message rates (per second)', [
        ['publish', 'Publish', '#e67e22'],
        ['deliver_get', 'Deliver / get', '#2980b9'],
        ['ack', 'Ack', '#27ae60'],
      ], (s) => s.rates),
      chart('chart-queued', 'Queued messages', [
        ['messages_ready', 'Ready', '#c0392b'],
        ['messages_unacknowledged', 'Unacked', '#8e44ad'],
      ], (s) => s.queued)
    );
    node.replaceChildren(
      props('overview-node-props', [
        ['Node', 'node', o.node],
        ['Product', 'product', `${o.product_name} ${o.product_version}`],
        ['RabbitMQ compatibility', 'rabbitmq_version', o.rabbitmq_version],
        ['Listeners', 'listeners', (o.listeners || []).map((l) => `${l.protocol} ${l.ip_address}:${l.port}`).join(', ')],
      ])
    );
  };
}

// Every node of the cluster as /api/nodes lists it (a single node: one row), live with
// the overview: warren's role, in-sync state and replication lag next to RabbitMQ's
// running flag.
function nodesTable(members) {
  return table(
    'nodes',
    [
      { title: 'Name', field: 'name' },
      { title: 'Role', field: 'warren_role', value: (n) => n.warren_role || 'single' },
      { title: 'Running', field: 'running', value: (n) => (n.running ? 'yes' : 'no') },
      { title: 'In sync', field: 'warren_in_sync', value: (n) => (n.warren_role ? (n.warren_in_sync ? 'yes' : 'no') : '') },
      { title: 'Behind (changes)', field: 'warren_lag_changes', num: true },
      { title: 'Lag (s)', field: 'warren_lag_seconds', num: true, value: (n) => (n.warren_lag_seconds == null ? '' : Number(n.warren_lag_seconds).toFixed(1)) },
    ],
    members,
    (n) => n.name
  );
}

function overviewTotals(o) {
  const t = o.object_totals || {};
  const q = o.queue_totals || {};
  const box = (label, fieldName, value) =>
    el('div', { 'data-field': fieldName }, label, el('b', {}, fmtNum(value)));
  return el(
    'div',
    { class: 'totals' },
    box('Connections', 'connections', t.connections),
    box('Channels', 'channels', t.channels),
    box('Exchanges', 'exchanges', t.exchanges),
    box('Queues', 'queues', t.queues),
    box('Consumers', 'consumers', t.consumers),
    box('Messages ready', 'messages_ready', q.messages_ready),
    box('Unacked', 'messages_unacknowledged', q.messages_unacknowledged),
    box('Total messages', 'messages', q.messages)
  );
}

const RATE_KEYS = [
  ['publish', 'Publish'],
  ['confirm', 'Publisher confirm'],
  ['deliver_get', 'Deliver / get'],
  ['redeliver', 'Redelivered'],
  ['ack', 'Consumer ack'],
  ['get_empty', 'Get (empty)'],
  ['return_unroutable', 'Unroutable (return)'],
  ['drop_unroutable', 'Unroutable (drop)'],
];

function overviewRates(stats) {
  const rows = RATE_KEYS.map(([k, label]) => ({ key: k, label, rate: rateOf(stats, k), total: stats[k] }));
  return table(
    'rates',
    [
      { title: 'Rate', field: 'label' },
      { title: 'Per second', field: 'rate', num: true, value: (r) => fmtRate(r.rate) },
      { title: 'Total', field: 'total', num: true },
    ],
    rows,
    (r) => r.key
  );
}

function recordSample(o) {
  const stats = o.message_stats || {};
  const rates = {};
  for (const [k] of RATE_KEYS) rates[k] = rateOf(stats, k);
  state.samples.push({ t: Date.now(), rates, queued: o.queue_totals || {} });
  if (state.samples.length > CHART_SAMPLES) state.samples.shift();
}

// A line chart on a <canvas> of the collected samples: one line per series, scaled to
// the largest value seen, newest sample at the right edge.
function chart(testid, title, series, pick) {
  const W = 600;
  const H = 120;
  const samples = state.samples;
  let max = 1;
  for (const s of samples) for (const [k] of series) max = Math.max(max, Number(pick(s)[k]) || 0);
  const canvas = el('canvas', { class: 'chart', width: W, height: H, testid, 'data-samples': samples.length });
  const g = canvas.getContext('2d');
  g.strokeStyle = '#eee';
  for (const f of [0.25, 0.5, 0.75]) {
    g.beginPath();
    g.moveTo(0, H * f);
    g.lineTo(W, H * f);
    g.stroke();
  }
  const x = (i) => W - (samples.length - 1 - i) * (W / (CHART_SAMPLES - 1));
  const y = (v) => H - (v / max) * (H - 10);
  g.lineWidth = 2;
  for (const [k, , colour] of series) {
    g.strokeStyle = colour;
    g.beginPath();
    samples.forEach((s, i) => {
      const px = x(i);
      const py = y(Number(pick(s)[k]) || 0);
      if (i === 0) g.moveTo(px, py);
      else g.lineTo(px, py);
    });
    g.stroke();
  }
  const legend = el(
    'div',
    { class: 'legend' },
    series.map(([k, label, colour]) => {
      const last = samples.length ? pick(samples[samples.length - 1])[k] : 0;
      return el('span', { 'data-series': k }, el('i', { style: `background:${colour}` }), `${label} ${fmtNum(last)}`);
    }),
    el('span', {}, `(max ${fmtNum(max)}, ${samples.length} samples every ${REFRESH_MS / 1000} s)`)
  );
  return el('div', {}, el('h3', {}, title), canvas, legend);
}

// ---------------------------------------------------------------- connections and channels

function connectionLink(name) {
  return el('a', { href: '#/connections' + seg(name) }, name);
}

function connectionsPage(root) {
  const list = pagedList(
    'connections',
    '/connections',
    [
      { title: 'Name', field: 'name', value: (c) => connectionLink(c.name) },
      { title: 'Client name', field: 'user_provided_name' },
      { title: 'User', field: 'user' },
      { title: 'Virtual host', field: 'vhost' },
      { title: 'Channels', field: 'channels', num: true },
      { title: 'Protocol', field: 'protocol' },
      { title: 'Connected at', field: 'connected_at', value: (c) => new Date(c.connected_at).toLocaleString() },
    ],
    (c) => c.name
  );
  root.append(
    el('h2', {}, 'Connections'),
    el('p', {}, 'A channel count that only grows points at a client that opens channels and never closes them.'),
    list.node
  );
  return list.refresh;
}

function connectionPage(root, name) {
  const info = el('div');
  const channels = el('div');
  root.append(
    el('h2', {}, 'Connection ', el('span', { testid: 'connection-name' }, name)),
    info,
    el('h3', {}, 'Channels'),
    channels,
    el(
      'div',
      { class: 'box' },
      field('Reason', input('close-reason', { value: 'Closed via management plugin', size: 40 })),
      dangerButton('connection-close', 'Force close', `Close connection ${name}?`, () =>
        act(async () => {
          await api('DELETE', '/connections' + seg(name), undefined, { 'X-Reason': $('close-reason').value });
          go('#/connections');
        }, 'Connection closed.')
      )
    )
  );
  return async () => {
    const c = await api('GET', '/connections' + seg(name));
    info.replaceChildren(
      props('connection-props', [
        ['User', 'user', c.user],
        ['Virtual host', 'vhost', c.vhost],
        ['Client name', 'user_provided_name', c.user_provided_name || ''],
        ['Peer', 'peer', `${c.peer_host}:${c.peer_port}`],
        ['Channels', 'channels', fmtNum(c.channels)],
        ['Protocol', 'protocol', c.protocol],
        ['Connected at', 'connected_at', new Date(c.connected_at).toLocaleString()],
      ])
    );
    const list = await api('GET', '/connections' + seg(name) + '/channels');
    channels.replaceChildren(channelTable('connection-channels', list));
  };
}

const CHANNEL_COLUMNS = [
  { title: 'Channel', field: 'name' },
  { title: 'User', field: 'user' },
  { title: 'Virtual host', field: 'vhost' },
  { title: 'Mode', field: 'mode', value: (c) => (c.confirm ? 'confirm' : '') + (c.transactional ? 'tx' : '') },
  { title: 'Prefetch', field: 'prefetch_count', num: true },
  { title: 'Consumers', field: 'consumer_count', num: true },
  { title: 'Unacked', field: 'messages_unacknowledged', num: true },
  { title: 'Unconfirmed', field: 'messages_unconfirmed', num: true },
];

function channelTable(testid, rows) {
  return table(testid, CHANNEL_COLUMNS, rows, (c) => c.name);
}

function channelsPage(root) {
  const list = pagedList('channels', '/channels', CHANNEL_COLUMNS, (c) => c.name);
  root.append(el('h2', {}, 'Channels'), list.node);
  return list.refresh;
}

function consumersPage(root) {
  const holder = el('div');
  root.append(el('h2', {}, 'Consumers'), holder);
  return async () => {
    const list = await api('GET', '/consumers');
    holder.replaceChildren(
      table(
        'consumers',
        [
          { title: 'Virtual host', field: 'vhost', value: (c) => c.queue.vhost },
          { title: 'Queue', field: 'queue', value: (c) => queueLink(c.queue.vhost, c.queue.name) },
          { title: 'Consumer tag', field: 'consumer_tag' },
          {
            title: 'Channel',
            field: 'channel',
            value: (c) =>
              el('a', { href: '#/connections' + seg(c.channel_details.connection_name || '') }, c.channel_details.name),
          },
          { title: 'Ack required', field: 'ack_required', value: (c) => yesNo(c.ack_required) },
          { title: 'Exclusive', field: 'exclusive', value: (c) => yesNo(c.exclusive) },
          { title: 'Prefetch', field: 'prefetch_count', num: true },
          { title: 'Arguments', field: 'arguments', value: (c) => json(c.arguments) },
        ],
        list,
        (c) => c.consumer_tag
      )
    );
  };
}

// ---------------------------------------------------------------- exchanges

function exchangeLink(vhost, name) {
  return el('a', { href: '#/exchanges' + seg(vhost, name || 'amq.default') }, name || '(AMQP default)');
}

function features(o) {
  return [o.durable && 'D', o.auto_delete && 'AD', o.internal && 'I', o.exclusive && 'Excl', json(o.arguments) && 'Args']
    .filter(Boolean)
    .join(' ');
}

function exchangesPage(root) {
  const list = pagedList(
    'exchanges',
    '/exchanges',
    [
      { title: 'Virtual host', field: 'vhost' },
      { title: 'Name', field: 'name', value: (x) => exchangeLink(x.vhost, x.name) },
      { title: 'Type', field: 'type' },
      { title: 'Features', field: 'features', value: features },
    ],
    (x) => x.name
  );
  const add = form(
    'exchange-declare',
    'Add a new exchange',
    [
      field('Virtual host', vhostSelect('exchange-vhost')),
      field('Name', input('exchange-name', { required: true })),
      field('Type', select('exchange-type', ['direct', 'fanout', 'topic', 'headers'].map((t) => [t, t]), 'direct')),
      field('Durability', select('exchange-durable', [['true', 'Durable'], ['false', 'Transient']], 'true')),
      field('Auto delete', select('exchange-auto-delete', [['false', 'No'], ['true', 'Yes']], 'false')),
      field('Internal', select('exchange-internal', [['false', 'No'], ['true', 'Yes']], 'false')),
      field('Arguments (JSON)', el('textarea', { id: 'exchange-arguments', testid: 'exchange-arguments' })),
    ],
    'Add exchange',
    (f) =>
      act(() => {
        const body = {
          type: f['exchange-type'].value,
          durable: f['exchange-durable'].value === 'true',
          auto_delete: f['exchange-auto-delete'].value === 'true',
          internal: f['exchange-internal'].value === 'true',
          arguments: parseJsonField(f['exchange-arguments'].value, 'Arguments'),
        };
        return api('PUT', '/exchanges' + seg(f['exchange-vhost'].value, f['exchange-name'].value), body);
      }, 'Exchange declared.')
  );
  root.append(el('h2', {}, 'Exchanges'), list.node, add);
  return list.refresh;
}

function bindingTable(testid, rows, vhost) {
  return table(
    testid,
    [
      { title: 'From', field: 'source', value: (b) => exchangeLink(vhost, b.source) },
      {
        title: 'To',
        field: 'destination',
        value: (b) => (b.destination_type === 'queue' ? queueLink(vhost, b.destination) : exchangeLink(vhost, b.destination)),
      },
      { title: 'Routing key', field: 'routing_key' },
      { title: 'Arguments', field: 'arguments', value: (b) => json(b.arguments) },
      {
        title: '',
        field: 'unbind',
        value: (b) =>
          b.source === ''
            ? '(default binding)'
            : el('button', { type: 'button', testid: 'unbind', onclick: () => unbind(vhost, b) }, 'Unbind'),
      },
    ],
    rows,
    (b) => `${b.source} -> ${b.destination} (${b.routing_key})`
  );
}

function unbind(vhost, b) {
  const kind = b.destination_type === 'queue' ? 'q' : 'e';
  const path = '/bindings' + seg(vhost) + '/e' + seg(b.source) + '/' + kind + seg(b.destination, b.properties_key);
  act(() => api('DELETE', path), 'Binding removed.');
}

function exchangePage(root, vhost, name) {
  const info = el('div');
  const bindingsOut = el('div');
  const bindingsIn = el('div');
  const result = el('p', { testid: 'publish-result', id: 'publish-result' });
  const display = name === 'amq.default' ? '(AMQP default)' : name;
  const publish = form(
    'publish',
    'Publish message',
    [
      field('Routing key', input('publish-routing-key', { size: 40 })),
      field('Delivery mode', select('publish-delivery-mode', [['1', '1 - Non-persistent'], ['2', '2 - Persistent']], '1')),
      field('Headers (JSON)', el('textarea', { id: 'publish-headers', testid: 'publish-headers' })),
      field('Properties (JSON)', el('textarea', { id: 'publish-properties', testid: 'publish-properties', placeholder: '{"content_type": "text/plain"}' })),
      field('Payload', el('textarea', { id: 'publish-payload', testid: 'publish-payload' })),
    ],
    'Publish message',
    (f) =>
      act(async () => {
        result.textContent = '';
        const properties = parseJsonField(f['publish-properties'].value, 'Properties');
        properties.delivery_mode = Number(f['publish-delivery-mode'].value);
        const headers = parseJsonField(f['publish-headers'].value, 'Headers');
        if (Object.keys(headers).length) properties.headers = headers;
        const r = await api('POST', '/exchanges' + seg(vhost, name) + '/publish', {
          properties,
          routing_key: f['publish-routing-key'].value,
          payload: f['publish-payload'].value,
          payload_encoding: 'string',
        });
        // RabbitMQ's console says the same.
        result.textContent = r.routed ? 'Message published.' : 'Message published, but not routed.';
        result.dataset.routed = String(r.routed);
        return r;
      })
  );
  const bind = form(
    'exchange-bind',
    'Add binding from this exchange',
    [
      field('To', select('bind-destination-type', [['q', 'To queue'], ['e', 'To exchange']], 'q')),
      field('Destination', input('bind-destination', { required: true })),
      field('Routing key', input('bind-routing-key')),
      field('Arguments (JSON)', el('textarea', { id: 'bind-arguments', testid: 'bind-arguments' })),
    ],
    'Bind',
    (f) =>
      act(() => {
        const path = '/bindings' + seg(vhost) + '/e' + seg(name) + '/' + f['bind-destination-type'].value + seg(f['bind-destination'].value);
        return api('POST', path, {
          routing_key: f['bind-routing-key'].value,
          arguments: parseJsonField(f['bind-arguments'].value, 'Arguments'),
        });
      }, 'Binding added.')
  );
  root.append(
    el('h2', {}, 'Exchange ', el('span', { testid: 'exchange-name' }, display), ' in virtual host ', vhost),
    info,
    el('h3', {}, 'Bindings from this exchange'),
    bindingsOut,
    el('h3', {}, 'Bindings to this exchange'),
    bindingsIn,
    name === 'amq.default' ? '' : bind,
    publish,
    result,
    name === 'amq.default' || name.startsWith('amq.')
      ? ''
      : dangerButton('exchange-delete', 'Delete this exchange', `Delete exchange ${name}?`, () =>
          act(async () => {
            await api('DELETE', '/exchanges' + seg(vhost, name));
            go('#/exchanges');
          }, 'Exchange deleted.')
        )
  );
  return async () => {
    const x = await api('GET', '/exchanges' + seg(vhost, name));
    info.replaceChildren(
      props('exchange-props', [
        ['Type', 'type', x.type],
        ['Features', 'features', features(x)],
        ['Policy', 'policy', x.policy || ''],
      ])
    );
    if (name === 'amq.default') return; // its implicit bindings are the queues page
    const [out, inbound] = await Promise.all([
      api('GET', '/exchanges' + seg(vhost, name) + '/bindings/source'),
      api('GET', '/exchanges' + seg(vhost, name) + '/bindings/destination'),
    ]);
    bindingsOut.replaceChildren(bindingTable('bindings-source', out, vhost));
    bindingsIn.replaceChildren(bindingTable('bindings-destination', inbound, vhost));
  };
}

// ---------------------------------------------------------------- queues

function queueLink(vhost, name) {
  return el('a', { href: '#/queues' + seg(vhost, name) }, name);
}

function queuesPage(root) {
  const list = pagedList(
    'queues',
    '/queues',
    [
      { title: 'Virtual host', field: 'vhost' },
      { title: 'Name', field: 'name', value: (q) => queueLink(q.vhost, q.name) },
      { title: 'Type', field: 'type' },
      { title: 'Features', field: 'features', value: features },
      { title: 'State', field: 'state' },
      { title: 'Ready', field: 'messages_ready', num: true },
      { title: 'Unacked', field: 'messages_unacknowledged', num: true },
      { title: 'Total', field: 'messages', num: true },
      { title: 'Consumers', field: 'consumers', num: true },
      { title: 'Incoming', field: 'publish_rate', num: true, value: (q) => fmtRate(rateOf(q.message_stats, 'publish')) },
      { title: 'Deliver / get', field: 'deliver_rate', num: true, value: (q) => fmtRate(rateOf(q.message_stats, 'deliver_get')) },
      { title: 'Ack', field: 'ack_rate', num: true, value: (q) => fmtRate(rateOf(q.message_stats, 'ack')) },
    ],
    (q) => q.name
  );
  const add = form(
    'queue-declare',
    'Add a new queue',
    [
      field('Virtual host', vhostSelect('queue-vhost')),
      field('Name', input('queue-name', { required: true })),
      field('Durability', select('queue-durable', [['true', 'Durable'], ['false', 'Transient']], 'true')),
      field('Auto delete', select('queue-auto-delete', [['false', 'No'], ['true', 'Yes']], 'false')),
      field('Arguments (JSON)', el('textarea', { id: 'queue-arguments', testid: 'queue-arguments', placeholder: '{"x-message-ttl": 60000}' })),
    ],
    'Add queue',
    (f) =>
      act(() => {
        const body = {
          durable: f['queue-durable'].value === 'true',
          auto_delete: f['queue-auto-delete'].value === 'true',
          arguments: parseJsonField(f['queue-arguments'].value, 'Arguments'),
        };
        return api('PUT', '/queues' + seg(f['queue-vhost'].value, f['queue-name'].value), body);
      }, 'Queue declared.')
  );
  root.append(el('h2', {}, 'Queues'), list.node, add);
  return list.refresh;
}

function queuePage(root, vhost, name) {
  const info = el('div');
  const bindings = el('div');
  const messages = el('div', { testid: 'get-results', id: 'get-results' });
  const get = form(
    'get-messages',
    'Get messages',
    [
      el('p', {}, 'Getting messages is a destructive action: with a requeue mode they come back as redelivered.'),
      field(
        'Ack mode',
        select(
          'get-ackmode',
          [
            ['ack_requeue_true', 'Nack message requeue true'],
            ['ack_requeue_false', 'Automatic ack'],
            ['reject_requeue_true', 'Reject requeue true'],
            ['reject_requeue_false', 'Reject requeue false'],
          ],
          'ack_requeue_true'
        )
      ),
      field('Encoding', select('get-encoding', [['auto', 'Auto string / base64'], ['base64', 'base64']], 'auto')),
      field('Messages', input('get-count', { type: 'number', min: 1, value: 1 })),
    ],
    'Get message(s)',
    (f) =>
      act(async () => {
        const got = await api('POST', '/queues' + seg(vhost, name) + '/get', {
          count: Number(f['get-count'].value) || 1,
          ackmode: f['get-ackmode'].value,
          encoding: f['get-encoding'].value,
          truncate: 50000,
        });
        messages.replaceChildren(gotMessages(got));
        return got;
      })
  );
  const bind = form(
    'queue-bind',
    'Add binding to this queue',
    [
      field('From exchange', input('queue-bind-source', { required: true })),
      field('Routing key', input('queue-bind-routing-key')),
      field('Arguments (JSON)', el('textarea', { id: 'queue-bind-arguments', testid: 'queue-bind-arguments' })),
    ],
    'Bind',
    (f) =>
      act(() => {
        const path = '/bindings' + seg(vhost) + '/e' + seg(f['queue-bind-source'].value) + '/q' + seg(name);
        return api('POST', path, {
          routing_key: f['queue-bind-routing-key'].value,
          arguments: parseJsonField(f['queue-bind-arguments'].value, 'Arguments'),
        });
      }, 'Binding added.')
  );
  root.append(
    el('h2', {}, 'Queue ', el('span', { testid: 'queue-name' }, name), ' in virtual host ', vhost),
    info,
    el('h3', {}, 'Bindings'),
    bindings,
    bind,
    get,
    messages,
    el(
      'div',
      { class: 'box' },
      dangerButton('queue-purge', 'Purge messages', `Purge all messages of queue ${name}?`, () =>
        act(() => api('DELETE', '/queues' + seg(vhost, name) + '/contents'), 'Queue purged.')
      ),
      ' ',
      dangerButton('queue-delete', 'Delete queue', `Delete queue ${name}?`, () =>
        act(async () => {
          await api('DELETE', '/queues' + seg(vhost, name));
          go('#/queues');
        }, 'Queue deleted.')
      )
    )
  );
  return async () => {
    const q = await api('GET', '/queues' + seg(vhost, name));
    info.replaceChildren(queueProps(q));
    const list = await api('GET', '/queues' + seg(vhost, name) + '/bindings');
    bindings.replaceChildren(bindingTable('queue-bindings', list, vhost));
  };
}

function queueProps(q) {
  return props('queue-props', [
    ['Type', 'type', q.type],
    ['State', 'state', q.state],
    ['Features', 'features', features(q)],
    ['Arguments', 'arguments', json(q.arguments)],
    ['Policy', 'policy', q.policy || ''],
    ['Ready', 'messages_ready', fmtNum(q.messages_ready)],
    ['Unacked', 'messages_unacknowledged', fmtNum(q.messages_unacknowledged)],
    ['Total', 'messages', fmtNum(q.messages)],
    ['Consumers', 'consumers', fmtNum(q.consumers)],
    ['Memory', 'memory', q.memory === undefined ? '' : fmtNum(q.memory) + ' bytes'],
  ]);
}

function gotMessages(list) {
  if (!list.length) return el('p', { testid: 'get-empty' }, 'Queue is empty');
  return el(
    'div',
    {},
    list.map((m, i) =>
      el(
        'div',
        { class: 'box', testid: 'got-message' },
        el('h3', {}, `Message ${i + 1}`),
        props('got-message-props', [
          ['Exchange', 'exchange', m.exchange || '(AMQP default)'],
          ['Routing key', 'routing_key', m.routing_key],
          ['Redelivered', 'redelivered', yesNo(m.redelivered)],
          ['Remaining messages', 'message_count', fmtNum(m.message_count)],
          ['Properties', 'properties', json(m.properties)],
          ['Payload', 'payload', el('pre', { class: 'payload' }, m.payload)],
          ['Encoding', 'payload_encoding', m.payload_encoding],
        ])
      )
    )
  );
}

// ---------------------------------------------------------------- users, vhosts, permissions

function usersPage(root) {
  const holder = el('div');
  const add = form(
    'user-add',
    'Add / update a user',
    [
      field('Username', input('user-name', { required: true })),
      field('Password', input('user-password', { type: 'password', autocomplete: 'new-password' })),
      field('Tags', input('user-tags', { placeholder: 'administrator, monitoring, policymaker, management' })),
    ],
    'Add user',
    (f) =>
      act(
        () =>
          api('PUT', '/users' + seg(f['user-name'].value), {
            password: f['user-password'].value,
            tags: f['user-tags'].value,
          }),
        'User saved.'
      )
  );
  root.append(el('h2', {}, 'Users'), holder, add);
  return async () => {
    const users = await api('GET', '/users');
    holder.replaceChildren(
      table(
        'users',
        [
          { title: 'Name', field: 'name' },
          { title: 'Tags', field: 'tags', value: (u) => (Array.isArray(u.tags) ? u.tags.join(', ') : u.tags) },
          { title: 'Can log in with password', field: 'password', value: (u) => yesNo(u.password_hash !== '') },
          {
            title: '',
            field: 'delete',
            value: (u) =>
              dangerButton('user-delete', 'Delete', `Delete user ${u.name}?`, () =>
                act(() => api('DELETE', '/users' + seg(u.name)), 'User deleted.')
              ),
          },
        ],
        users,
        (u) => u.name
      )
    );
  };
}

function vhostsPage(root) {
  const holder = el('div');
  const add = form(
    'vhost-add',
    'Add a new virtual host',
    [
      field('Name', input('vhost-name', { required: true })),
      field('Description', input('vhost-description')),
    ],
    'Add virtual host',
    (f) =>
      act(
        () => api('PUT', '/vhosts' + seg(f['vhost-name'].value), { description: f['vhost-description'].value }),
        'Virtual host added.'
      )
  );
  root.append(el('h2', {}, 'Virtual hosts'), holder, add);
  return async () => {
    const vhosts = await api('GET', '/vhosts');
    holder.replaceChildren(
      table(
        'vhosts',
        [
          { title: 'Name', field: 'name' },
          { title: 'Description', field: 'description' },
          { title: 'Ready', field: 'messages_ready', num: true },
          { title: 'Unacked', field: 'messages_unacknowledged', num: true },
          { title: 'Total', field: 'messages', num: true },
          {
            title: '',
            field: 'delete',
            value: (v) =>
              dangerButton('vhost-delete', 'Delete', `Delete virtual host ${v.name} and everything in it?`, () =>
                act(() => api('DELETE', '/vhosts' + seg(v.name)), 'Virtual host deleted.')
              ),
          },
        ],
        vhosts,
        (v) => v.name
      )
    );
  };
}

function permissionsPage(root) {
  const holder = el('div');
  const topicHolder = el('div');
  const set = form(
    'permission-set',
    'Set permission',
    [
      field('User', input('permission-user', { required: true })),
      field('Virtual host', vhostSelect('permission-vhost')),
      field('Configure regexp', input('permission-configure', { value: '.*' })),
      field('Write regexp', input('permission-write', { value: '.*' })),
      field('Read regexp', input('permission-read', { value: '.*' })),
    ],
    'Set permission',
    (f) =>
      act(
        () =>
          api('PUT', '/permissions' + seg(f['permission-vhost'].value, f['permission-user'].value), {
            configure: f['permission-configure'].value,
            write: f['permission-write'].value,
            read: f['permission-read'].value,
          }),
        'Permission set.'
      )
  );
  root.append(el('h2', {}, 'Permissions'), holder, set, el('h2', {}, 'Topic permissions'), topicHolder);
  return async () => {
    const [perms, topic] = await Promise.all([api('GET', '/permissions'), api('GET', '/topic-permissions')]);
    holder.replaceChildren(
      table(
        'permissions',
        [
          { title: 'User', field: 'user' },
          { title: 'Virtual host', field: 'vhost' },
          { title: 'Configure', field: 'configure' },
          { title: 'Write', field: 'write' },
          { title: 'Read', field: 'read' },
          {
            title: '',
            field: 'delete',
            value: (p) =>
              dangerButton('permission-clear', 'Clear', `Clear ${p.user}'s permissions in ${p.vhost}?`, () =>
                act(() => api('DELETE', '/permissions' + seg(p.vhost, p.user)), 'Permission cleared.')
              ),
          },
        ],
        perms,
        (p) => p.user
      )
    );
    topicHolder.replaceChildren(
      table(
        'topic-permissions',
        [
          { title: 'User', field: 'user' },
          { title: 'Virtual host', field: 'vhost' },
          { title: 'Exchange', field: 'exchange' },
          { title: 'Write', field: 'write' },
          { title: 'Read', field: 'read' },
        ],
        topic,
        (p) => p.user + '/' + p.exchange
      )
    );
  };
}

// ---------------------------------------------------------------- policies

function policiesPage(root) {
  const holder = el('div');
  const add = form(
    'policy-add',
    'Add / update a policy',
    [
      field('Virtual host', vhostSelect('policy-vhost')),
      field('Name', input('policy-name', { required: true })),
      field('Pattern', input('policy-pattern', { required: true, placeholder: '^amq\\.' })),
      field(
        'Apply to',
        select('policy-apply-to', [['all', 'Exchanges and queues'], ['exchanges', 'Exchanges'], ['queues', 'Queues']], 'all')
      ),
      field('Priority', input('policy-priority', { type: 'number', value: 0 })),
      field('Definition (JSON)', el('textarea', { id: 'policy-definition', testid: 'policy-definition', placeholder: '{"max-length": 1000}' })),
    ],
    'Add / update policy',
    (f) =>
      act(
        () =>
          api('PUT', '/policies' + seg(f['policy-vhost'].value, f['policy-name'].value), {
            pattern: f['policy-pattern'].value,
            'apply-to': f['policy-apply-to'].value,
            priority: Number(f['policy-priority'].value) || 0,
            definition: parseJsonField(f['policy-definition'].value, 'Definition'),
          }),
        'Policy saved.'
      )
  );
  root.append(el('h2', {}, 'Policies'), holder, add);
  return async () => {
    const list = await api('GET', '/policies');
    holder.replaceChildren(
      table(
        'policies',
        [
          { title: 'Virtual host', field: 'vhost' },
          { title: 'Name', field: 'name' },
          { title: 'Pattern', field: 'pattern' },
          { title: 'Apply to', field: 'apply-to' },
          { title: 'Definition', field: 'definition', value: (p) => json(p.definition) },
          { title: 'Priority', field: 'priority', num: true },
          {
            title: '',
            field: 'delete',
            value: (p) =>
              dangerButton('policy-delete', 'Delete', `Delete policy ${p.name}?`, () =>
                act(() => api('DELETE', '/policies' + seg(p.vhost, p.name)), 'Policy deleted.')
              ),
          },
        ],
        list,
        (p) => p.name
      )
    );
  };
}

// ---------------------------------------------------------------- start

async function start() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', () => logout(''));
  window.addEventListener('hashchange', route);
  if (!sessionStorage.getItem(AUTH_KEY)) {
    logout('');
    return;
  }
  try {
    showApp(await api('GET', '/whoami'));
  } catch (e) {
    logout(e.message);
  }
}

start();
