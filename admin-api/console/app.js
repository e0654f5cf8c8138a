// Tollgate web console: one page, drawn from the admin JSON API with the session cookie.
// No framework, no build step. Every piece of API data reaches the DOM through
// textContent / attributes, never through innerHTML.
'use strict';

(() => {
  // ---------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------

  const NF = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const RANGES = {
    '24h': { ms: 24 * 3600e3, bucket: 'hour', label: 'Last 24 hours' },
    '7d': { ms: 7 * 24 * 3600e3, bucket: 'hour', label: 'Last 7 days' },
    '30d': { ms: 30 * 24 * 3600e3, bucket: 'day', label: 'Last 30 days' },
  };
  const PALETTE = ['#1d4ed8', '#b45309', '#047857', '#b91c1c', '#6d28d9', '#0e7490', '#be185d', '#4d7c0f', '#374151'];
  const enc = encodeURIComponent;

  let uidCounter = 0;
  const uid = (p) => `${p || 'f'}-${++uidCounter}`;

  /** Builds an element: h('a', {href, class, dataset: {...}, onclick: fn}, child, ...). */
  function h(tag, props, ...kids) {
    const e = document.createElement(tag);
    if (props) {
      for (const k of Object.keys(props)) {
        const v = props[k];
        if (v == null || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k === 'dataset') Object.assign(e.dataset, v);
        else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
        else if (k === 'value') e.value = v;
        else e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(e, kids);
    return e;
  }

  function append(parent, kids) {
    for (const k of kids) {
      if (k == null || k === false) continue;
      if (Array.isArray(k)) append(parent, k);
      else if (k instanceof Node) parent.appendChild(k);
      else parent.appendChild(document.createTextNode(String(k)));
    }
  }

  function fmtInt(n) {
    if (n == null || n === '') return '—';
    if (typeof n === 'number') return NF.format(n);
    return String(n);
  }

  function fmtDec(n, digits) {
    if (n == null || !Number.isFinite(n)) return '—';
    return n.toLocaleString(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function fmtBytes(n) {
    if (n == null) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return i === 0 ? `${NF.format(n)} B` : `${fmtDec(v, 1)} ${units[i]}`;
  }

  const pad = (n) => String(n).padStart(2, '0');

  /** Local time, ISO-like: 2025-01-31 13:04:05. */
  function fmtTime(value) {
    if (value == null || value === '') return '—';
    const d = value instanceof Date ? value : new Date(value);
    if (Number.isNaN(d.getTime())) return String(value);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function timeEl(value) {
    if (value == null || value === '') return '—';
    return h('time', { datetime: String(value), title: String(value) }, fmtTime(value));
  }

  function signed(n) {
    if (typeof n !== 'number') return fmtInt(n);
    return (n > 0 ? '+' : '') + fmtInt(n);
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function csrfToken() {
    for (const part of document.cookie.split(';')) {
      const i = part.indexOf('=');
      if (i < 0) continue;
      if (part.slice(0, i).trim() === 'tg_csrf') {
        let v = part.slice(i + 1).trim();
        if (v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
        try {
          return decodeURIComponent(v);
        } catch (_) {
          return v;
        }
      }
    }
    return '';
  }

  /** Accepts RFC 3339, unix ms, or a local "YYYY-MM-DD HH:MM[:SS]" and answers what the API takes. */
  function apiTime(text) {
    const v = String(text || '').trim();
    if (!v) return null;
    if (/^-?\d+$/.test(v)) return v;
    if (/^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)$/i.test(v)) return v;
    const d = new Date(v.replace(' ', 'T'));
    if (Number.isNaN(d.getTime())) return undefined;
    return d.toISOString();
  }

  // ---------------------------------------------------------------------------
  // API
  // ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem, headers) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem || {};
      this.headers = headers || null;
    }
  }

  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({ Accept: 'application/json' }, extraHeaders || {});
    if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken();
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, {
        title: 'Network error',
        detail: 'The server could not be reached. Check the connection and try again.',
      });
    }
    if (res.status === 204) return null;
    const type = res.headers.get('content-type') || '';
    let data = null;
    if (type.includes('json')) {
      try {
        data = await res.json();
      } catch (_) {
        data = null;
      }
    } else {
      try {
        const text = await res.text();
        data = res.ok ? text : { title: res.statusText || `HTTP ${res.status}`, detail: `HTTP ${res.status}` };
      } catch (_) {
        data = null;
      }
    }
    if (!res.ok) {
      throw new ApiError(res.status, data && typeof data === 'object' ? data : { title: `HTTP ${res.status}` }, res.headers);
    }
    return data;
  }

  // ---------------------------------------------------------------------------
  // Page lifecycle: generations, pollers, charts, readiness
  // ---------------------------------------------------------------------------

  let me = null;
  let gen = 0;
  let readyGen = -1;
  let renderStart = 0; // the first page counts from navigation start
  let firstRender = true;
  let timers = [];
  let charts = [];

  const mainEl = () => document.getElementById('main');
  const alive = (g) => g === gen;

  function stopAll() {
    for (const t of timers) clearInterval(t);
    timers = [];
    for (const c of charts) {
      try {
        c.destroy();
      } catch (_) {
        /* already gone */
      }
    }
    charts = [];
  }

  /** Starts rendering a new page: answers its generation. */
  function begin() {
    gen++;
    stopAll();
    delete document.body.dataset.ready;
    renderStart = firstRender ? 0 : performance.now();
    firstRender = false;
    const stray = document.getElementById('forbidden');
    if (stray) stray.remove();
    const m = mainEl();
    m.replaceChildren(h('div', { id: 'error', class: 'error-region', role: 'alert' }));
    m.setAttribute('aria-busy', 'true');
    markCurrentNav();
    return gen;
  }

  function ready(g, name) {
    if (g !== gen || readyGen === g) return;
    readyGen = g;
    mainEl().removeAttribute('aria-busy');
    const d = document.body.dataset;
    d.page = name;
    d.renderMs = String(Math.round(performance.now() - renderStart));
    d.ready = '1';
  }

  /** Runs fn every ms while page g is shown; never two at once. */
  function every(g, ms, fn) {
    let busy = false;
    const id = setInterval(async () => {
      if (!alive(g)) {
        clearInterval(id);
        return;
      }
      if (busy) return;
      busy = true;
      try {
        await fn();
      } catch (e) {
        backgroundFail(e, g);
      } finally {
        busy = false;
      }
    }, ms);
    timers.push(id);
  }

  function setError(text) {
    const el = document.getElementById('error');
    if (el) el.textContent = text || '';
  }

  function problemText(err) {
    const p = (err && err.problem) || {};
    let text = p.detail || p.title || (err && err.message) || 'Something went wrong';
    if (err && err.status === 429 && err.headers) {
      const after = err.headers.get('retry-after');
      if (after) text += ` (try again in ${after} s)`;
    }
    return text;
  }

  function clearFieldErrors(form) {
    if (!form) return;
    for (const e of form.querySelectorAll('.field-error')) e.remove();
    for (const e of form.querySelectorAll('[aria-invalid]')) {
      e.removeAttribute('aria-invalid');
      e.removeAttribute('aria-describedby');
    }
  }

  function fieldError(form, name, text) {
    const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
    if (!input) return false;
    const id = uid('err');
    const msg = h('p', { class: 'field-error', id, dataset: { field: name } }, text);
    input.after(msg);
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', id);
    return true;
  }

  /** Shows a refused request: page-level, and beside its field when a form has it. */
  function showProblem(err, form, fieldMap) {
    const text = problemText(err);
    setError(text);
    const field = err && err.problem && err.problem.field;
    if (form && field) {
      const last = field.split('.').pop().replace(/\[\d+\]$/, '');
      const candidates = [fieldMap && fieldMap[field], fieldMap && fieldMap[last], field, last];
      for (const name of candidates) {
        if (name && fieldError(form, name, text)) break;
      }
    }
  }

  /** A page's load failed. */
  function fail(err, g) {
    if (!alive(g)) return;
    if (err && err.status === 401) return sessionExpired();
    if (err && err.status === 403) return showForbidden();
    showProblem(err);
  }

  /** An action (form, button) failed: the page stays. */
  function failAction(err, g, form, fieldMap) {
    if (!alive(g)) return;
    if (err && err.status === 401) return sessionExpired();
    showProblem(err, form, fieldMap);
  }

  function backgroundFail(err, g) {
    if (!alive(g)) return;
    if (err && err.status === 401) return sessionExpired();
    if (err && err.status === 403) return showForbidden();
    setError(`Refresh failed: ${problemText(err)}`);
  }

  function sessionExpired() {
    me = null;
    renderHeader();
    route();
  }

  function showForbidden() {
    const g = begin();
    pageForbidden(g);
  }

  // ---------------------------------------------------------------------------
  // DOM building blocks
  // ---------------------------------------------------------------------------

  function field(label, input, hint) {
    if (!input.id) input.id = uid('f');
    return h(
      'div',
      { class: 'field' },
      h('label', { for: input.id }, label),
      input,
      hint ? h('p', { class: 'hint' }, hint) : null,
    );
  }

  /** cols: names; a leading '#' marks a numeric (right-aligned) column. */
  function table(id, caption, cols) {
    const tbody = h('tbody');
    const numeric = cols.map((c) => c.startsWith('#'));
    const tbl = h(
      'table',
      { id },
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, cols.map((c, i) => h('th', { scope: 'col', class: numeric[i] ? 'num' : null }, numeric[i] ? c.slice(1) : c)))),
      tbody,
    );
    const wrap = h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption }, tbl);
    return { wrap, table: tbl, tbody, cols: cols.length, numeric };
  }

  /** A row: cells are nodes/strings; numeric columns of t get class num. */
  function row(t, attrs, cells) {
    return h(
      'tr',
      attrs,
      cells.map((c, i) => h('td', { class: t.numeric[i] ? 'num' : null }, c)),
    );
  }

  function emptyRow(t, text) {
    return h('tr', { class: 'empty' }, h('td', { colspan: String(t.cols) }, text));
  }

  function section(id, title, ...kids) {
    const hid = uid('h');
    return h('section', { id, class: 'card', 'aria-labelledby': hid }, h('h2', { id: hid }, title), kids);
  }

  function navLink(href, text) {
    return h('a', { href, dataset: { nav: '' } }, text);
  }

  function statusBadge(text, kind) {
    return h('span', { class: `badge ${kind || ''}` }, text);
  }

  function endpointLabel(log) {
    const ep = log.endpoint || '';
    const m = log.method || '';
    return m && !ep.startsWith(`${m} `) ? `${m} ${ep}` : ep;
  }

  // ---------------------------------------------------------------------------
  // Header, navigation, routing
  // ---------------------------------------------------------------------------

  const TENANT_LINKS = [['Dashboard', '/console/']];
  const ADMIN_LINKS = [
    ['Tenants', '/console/admin/tenants'],
    ['Services', '/console/admin/services'],
    ['Plans', '/console/admin/plans'],
    ['Usage logs', '/console/admin/usage'],
    ['Billing', '/console/admin/billing'],
    ['Operations', '/console/admin/ops'],
  ];

  function ensureShell() {
    let header = document.querySelector('header');
    if (!header) {
      header = h('header', { class: 'site-header' }, h('a', { class: 'brand', href: '/console/', dataset: { nav: '' } }, 'Tollgate'));
      document.body.prepend(header);
    }
    if (!document.getElementById('nav')) header.append(h('nav', { id: 'nav', 'aria-label': 'Main', hidden: true }));
    if (!document.getElementById('whoami') || !document.getElementById('signout')) {
      header.append(
        h('div', { class: 'session' }, h('span', { id: 'whoami' }), h('button', { id: 'signout', type: 'button', hidden: true }, 'Sign out')),
      );
    }
    if (!document.getElementById('main')) document.body.append(h('main', { id: 'main', tabindex: '-1' }));
    if (!document.querySelector('.skip-link')) {
      document.body.prepend(h('a', { class: 'skip-link', href: '#main' }, 'Skip to main content'));
    }
  }

  function renderHeader() {
    const nav = document.getElementById('nav');
    const who = document.getElementById('whoami');
    const out = document.getElementById('signout');
    nav.replaceChildren();
    if (!me) {
      nav.hidden = true;
      who.textContent = '';
      out.hidden = true;
      return;
    }
    const links = TENANT_LINKS.concat(me.role === 'admin' ? ADMIN_LINKS : []);
    nav.append(h('ul', {}, links.map(([text, href]) => h('li', {}, navLink(href, text)))));
    nav.hidden = false;
    who.replaceChildren(
      h('span', { class: 'who-email' }, me.email || me.user_id || ''),
      ' ',
      statusBadge(me.role, me.role === 'admin' ? 'admin' : ''),
    );
    out.hidden = false;
    markCurrentNav();
  }

  function markCurrentNav() {
    const nav = document.getElementById('nav');
    if (!nav) return;
    const path = location.pathname.replace(/\/+$/, '') || '/console';
    for (const a of nav.querySelectorAll('a')) {
      const href = a.getAttribute('href').replace(/\/+$/, '');
      const current = href === '/console' ? path === '/console' : path === href || path.startsWith(`${href}/`);
      if (current) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  const safeDecode = (s) => {
    try {
      return decodeURIComponent(s);
    } catch (_) {
      return s;
    }
  };

  const ROUTES = [
    [/^\/console\/?$/, pageDashboard, false, 'dashboard'],
    [/^\/console\/admin\/tenants\/?$/, pageTenants, true, 'tenants'],
    [/^\/console\/admin\/tenants\/([^/]+)\/?$/, pageTenant, true, 'tenant'],
    [/^\/console\/admin\/services\/?$/, pageServices, true, 'services'],
    [/^\/console\/admin\/services\/([^/]+)\/?$/, pageService, true, 'service'],
    [/^\/console\/admin\/plans\/?$/, pagePlans, true, 'plans'],
    [/^\/console\/admin\/usage\/?$/, pageUsage, true, 'usage'],
    [/^\/console\/admin\/billing\/?$/, pageBilling, true, 'billing'],
    [/^\/console\/admin\/ops\/?$/, pageOps, true, 'ops'],
  ];

  function route() {
    const g = begin();
    if (!me) return pageSignin(g);
    const path = location.pathname;
    for (const [re, fn, admin, name] of ROUTES) {
      const m = path.match(re);
      if (!m) continue;
      if (admin && me.role !== 'admin') return pageForbidden(g);
      const p = fn(g, ...m.slice(1).map(safeDecode));
      if (p && typeof p.catch === 'function') {
        p.catch((e) => {
          fail(e, g);
          ready(g, name); // loaded, with its error shown
        });
      }
      return undefined;
    }
    if (path.startsWith('/console/admin') && me.role !== 'admin') return pageForbidden(g);
    return pageNotFound(g);
  }

  function navigate(url, replace) {
    if (replace) history.replaceState(null, '', url);
    else history.pushState(null, '', url);
    route();
    const m = mainEl();
    if (m) m.focus({ preventScroll: true });
    window.scrollTo(0, 0);
  }

  document.addEventListener('click', (e) => {
    const a = e.target.closest && e.target.closest('a[data-nav]');
    if (!a) return;
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    if (a.target && a.target !== '_self') return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || !url.pathname.startsWith('/console')) return;
    e.preventDefault();
    navigate(url.pathname + url.search + url.hash);
  });

  window.addEventListener('popstate', () => route());

  window.addEventListener('resize', () => {
    for (const c of charts) {
      const box = c.root && c.root.parentElement;
      if (box && box.clientWidth) c.setSize({ width: chartWidth(box), height: c.height });
    }
  });

  // ---------------------------------------------------------------------------
  // Charts (uPlot)
  // ---------------------------------------------------------------------------

  function chartWidth(box) {
    return Math.max(260, (box.clientWidth || 640) - 2);
  }

  function zeroBased(_u, _min, max) {
    return [0, Math.max(1, max || 0) * 1.05];
  }

  function makeChart(box, opts, data) {
    if (typeof window.uPlot !== 'function') {
      if (!box.querySelector('.chart-missing')) box.append(h('p', { class: 'muted chart-missing' }, 'Chart unavailable.'));
      return null;
    }
    for (const old of box.querySelectorAll('.chart-placeholder, .chart-missing')) old.remove();
    const chart = new window.uPlot(Object.assign({ width: chartWidth(box), height: 260 }, opts), data, box);
    charts.push(chart);
    return chart;
  }

  // ---------------------------------------------------------------------------
  // Shared sections
  // ---------------------------------------------------------------------------

  function setBalance(el, balance, threshold) {
    el.dataset.balance = String(balance);
    const low = threshold != null && typeof balance === 'number' && balance <= threshold;
    el.classList.toggle('low', low);
    el.replaceChildren(h('span', { class: 'balance-value' }, fmtInt(balance)), h('span', { class: 'balance-unit' }, ' credits'));
    if (low) el.append(h('span', { class: 'badge warn low-badge' }, 'Low balance'));
  }

  /** Usage chart + totals per endpoint + CSV link, for `base` (a series route). */
  function usageSection(g, base, title) {
    const select = h(
      'select',
      { id: 'range', name: 'range' },
      Object.keys(RANGES).map((k) => h('option', { value: k }, RANGES[k].label)),
    );
    select.value = '24h';
    const chartBox = h('div', { id: 'usage-chart', class: 'chart', role: 'img', 'aria-label': 'Calls and credits per time bucket' },
      h('p', { class: 'muted chart-placeholder' }, 'Loading usage…'));
    const summary = h('p', { class: 'summary', 'aria-live': 'polite' });
    const csv = h('a', { id: 'usage-csv', href: `${base}?format=csv`, download: 'usage.csv' }, 'Download CSV');
    const t = table('usage-table', 'Calls and credits by endpoint', ['Service', 'Endpoint', '#Calls', '#Credits']);
    const el = section(
      'usage',
      title || 'Usage',
      h('div', { class: 'toolbar' }, field('Range', select), h('p', { class: 'csv' }, csv)),
      summary,
      chartBox,
      t.wrap,
    );
    let chart = null;
    let seq = 0;

    async function load() {
      const my = ++seq;
      const r = RANGES[select.value] || RANGES['24h'];
      const toMs = Date.now();
      const fromMs = toMs - r.ms;
      const qs = new URLSearchParams({ from: new Date(fromMs).toISOString(), to: new Date(toMs).toISOString(), bucket: r.bucket });
      const url = `${base}?${qs}`;
      const data = await api('GET', url);
      if (!alive(g) || my !== seq) return;
      csv.href = `${url}&format=csv`;
      const bucketMs = r.bucket === 'day' ? 24 * 3600e3 : 3600e3;
      const byStart = new Map();
      const lines = new Map();
      let calls = 0;
      let credits = 0;
      for (const p of (data && data.points) || []) {
        const start = Date.parse(p.start);
        if (Number.isNaN(start)) continue;
        const b = byStart.get(start) || { calls: 0, credits: 0 };
        b.calls += p.calls || 0;
        b.credits += p.credits || 0;
        byStart.set(start, b);
        const key = `${p.service}\u0000${p.endpoint}`;
        const l = lines.get(key) || { service: p.service, endpoint: p.endpoint, calls: 0, credits: 0 };
        l.calls += p.calls || 0;
        l.credits += p.credits || 0;
        lines.set(key, l);
        calls += p.calls || 0;
        credits += p.credits || 0;
      }
      // Buckets without calls are absent: fill them with zeros (buckets are UTC-aligned).
      const xs = new Set(byStart.keys());
      if ([...xs].every((x) => x % bucketMs === 0)) {
        for (let x = Math.floor(fromMs / bucketMs) * bucketMs; x < toMs; x += bucketMs) xs.add(x);
      }
      const sorted = [...xs].sort((a, b) => a - b);
      const plot = [
        sorted.map((x) => x / 1000),
        sorted.map((x) => (byStart.get(x) || { calls: 0 }).calls),
        sorted.map((x) => (byStart.get(x) || { credits: 0 }).credits),
      ];
      chartBox.dataset.calls = String(calls);
      chartBox.dataset.credits = String(credits);
      chartBox.setAttribute('aria-label', `${r.label}: ${fmtInt(calls)} calls, ${fmtInt(credits)} credits, per ${r.bucket}`);
      summary.textContent = `${r.label}: ${fmtInt(calls)} calls, ${fmtInt(credits)} credits (per ${r.bucket}).`;
      if (chart) chart.setData(plot);
      else {
        chart = makeChart(
          chartBox,
          {
            scales: { x: { time: true }, calls: { range: zeroBased }, credits: { range: zeroBased } },
            series: [
              {},
              { label: 'Calls', scale: 'calls', stroke: PALETTE[0], width: 2, fill: 'rgba(29, 78, 216, 0.08)' },
              { label: 'Credits', scale: 'credits', stroke: PALETTE[1], width: 2, dash: [6, 3] },
            ],
            axes: [{}, { scale: 'calls', label: 'Calls' }, { scale: 'credits', side: 1, label: 'Credits', grid: { show: false } }],
          },
          plot,
        );
      }
      const rows = [...lines.values()].sort((a, b) => b.credits - a.credits || b.calls - a.calls);
      t.tbody.replaceChildren(
        ...(rows.length
          ? rows.map((l) => row(t, {}, [l.service, l.endpoint, fmtInt(l.calls), fmtInt(l.credits)]))
          : [emptyRow(t, 'No calls in this range.')]),
      );
    }

    select.addEventListener('change', () => {
      load().catch((e) => backgroundFail(e, g));
    });
    return { el, load };
  }

  function logRow(t, log, withTenant) {
    const credits = log.refunded
      ? h('span', {}, fmtInt(log.credits_used), ' ', statusBadge('refunded', 'info'))
      : fmtInt(log.credits_used);
    const status = statusBadge(String(log.status), log.status >= 500 ? 'bad' : log.status >= 400 ? 'warn' : 'ok');
    const cells = [timeEl(log.timestamp)];
    if (withTenant) cells.push(navLink(`/console/admin/tenants/${enc(log.tenant_id)}`, log.tenant_id));
    cells.push(log.service, endpointLabel(log), status, credits, `${fmtDec(log.latency_ms, 1)} ms`, log.key_id || 'JWT');
    return row(t, { dataset: { logId: log.id } }, cells);
  }

  function invoiceLines(lines) {
    if (!Array.isArray(lines) || !lines.length) return h('span', { class: 'muted' }, 'No lines');
    const t = table(null, 'Line items', ['Service', 'Endpoint', 'Plan', '#Calls', '#Credits']);
    t.table.removeAttribute('id');
    for (const l of lines) t.tbody.append(row(t, {}, [l.service, l.endpoint, l.plan_id || '—', fmtInt(l.calls), fmtInt(l.credits)]));
    return h('details', {}, h('summary', {}, `${lines.length} line item${lines.length === 1 ? '' : 's'}`), t.wrap);
  }

  function byNewest(items, key) {
    return items
      .map((x, i) => [x, i])
      .sort((a, b) => String(b[0][key] || '').localeCompare(String(a[0][key] || '')) || b[1] - a[1])
      .map((p) => p[0]);
  }

  function invoiceRow(t, inv, withTenant) {
    const cells = [];
    if (withTenant) cells.push(navLink(`/console/admin/tenants/${enc(inv.tenant_id)}`, inv.tenant_id));
    cells.push(
      inv.period || '—',
      statusBadge(inv.status || '—', inv.status === 'final' ? 'ok' : 'info'),
      h('span', {}, timeEl(inv.period_start), ' – ', timeEl(inv.period_end)),
      fmtInt(inv.total_credits_used),
      fmtInt(inv.log_count),
      invoiceLines(inv.logs || inv.lines),
    );
    return row(t, { dataset: { invoiceId: inv.id } }, cells);
  }

  // ---------------------------------------------------------------------------
  // Pages
  // ---------------------------------------------------------------------------

  function heading(text) {
    document.title = `${text} · Tollgate`;
    return h('h1', {}, text);
  }

  function pageSignin(g) {
    document.title = 'Sign in · Tollgate';
    const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, spellcheck: 'false' });
    const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true });
    const error = h('p', { id: 'signin-error', class: 'form-error', role: 'alert' });
    const submit = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
    const form = h('form', { id: 'signin', class: 'card narrow' }, h('h1', {}, 'Sign in to Tollgate'), field('Email', email), field('Password', password), error, submit);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.textContent = '';
      submit.disabled = true;
      try {
        me = await api('POST', '/console/session', { email: email.value.trim(), password: password.value });
        if (!alive(g)) return;
        renderHeader();
        route();
      } catch (err) {
        if (!alive(g)) return;
        if (err.status === 401) error.textContent = 'Wrong email or password.';
        else error.textContent = problemText(err);
        password.value = '';
        password.focus();
      } finally {
        submit.disabled = false;
      }
    });
    mainEl().append(form);
    ready(g, 'signin');
  }

  function pageForbidden(g) {
    document.title = 'Forbidden · Tollgate';
    mainEl().append(
      h('section', { id: 'forbidden', class: 'card' }, h('h1', {}, 'Forbidden'), h('p', {}, 'You do not have access to this page'), h('p', {}, navLink('/console/', 'Go to your dashboard'))),
    );
    ready(g, 'forbidden');
  }

  function pageNotFound(g) {
    mainEl().append(h('section', { id: 'not-found', class: 'card' }, heading('Page not found'), h('p', {}, 'There is no console page at this address.'), h('p', {}, navLink('/console/', 'Go to the dashboard'))));
    ready(g, 'notfound');
  }

  // --- Tenant dashboard -------------------------------------------------------

  async function pageDashboard(g) {
    const m = mainEl();
    const balance = h('p', { id: 'balance', class: 'balance' }, '…');
    const threshold = h('span', { id: 'threshold' }, '…');
    const tenantName = h('span', {}, me.tenant_id);
    m.append(
      heading('Dashboard'),
      h('p', { class: 'muted' }, 'Tenant: ', tenantName),
      section('balance-card', 'Credit balance', balance, h('p', { class: 'muted' }, 'Low-credit threshold: ', threshold)),
    );
    const usage = usageSection(g, '/me/usage/series', 'Usage');
    const recent = recentCalls(g);
    const keys = keysSection(g);
    const invoices = h('div', { id: 'invoices', class: 'card' });
    const notes = h('div', { id: 'notifications', class: 'card' });
    m.append(usage.el, recent.el, keys.el, invoices, notes);

    let thr = null;
    async function loadTenant() {
      try {
        const t = await api('GET', '/me/tenant');
        if (!alive(g)) return;
        thr = t.low_credit_threshold;
        threshold.textContent = fmtInt(thr);
        threshold.dataset.threshold = String(thr);
        tenantName.textContent = t.name && t.name !== t.id ? `${t.name} (${t.id})` : t.id;
        setBalance(balance, t.balance, thr);
      } catch (e) {
        if (e.status === 401) throw e;
        threshold.textContent = '—';
        await loadBalance();
      }
    }
    async function loadBalance() {
      const b = await api('GET', '/me/balance');
      if (alive(g)) setBalance(balance, b.balance, thr);
    }

    const results = await Promise.allSettled([
      loadTenant(),
      usage.load(),
      recent.load(false),
      keys.load(),
      loadInvoices(g, invoices, '/me/invoices', false),
      loadNotifications(g, notes),
    ]);
    if (!alive(g)) return;
    for (const r of results) if (r.status === 'rejected') fail(r.reason, g);
    if (!alive(g)) return;
    every(g, 2000, loadBalance);
    every(g, 5000, usage.load);
    ready(g, 'dashboard');
  }

  function recentCalls(g) {
    const t = table('recent-calls', 'Recent calls, newest first', ['Time', 'Service', 'Endpoint', 'Status', '#Credits', '#Latency', 'Key']);
    const more = h('button', { id: 'recent-more', type: 'button', hidden: true }, 'Load 20 more');
    const el = section('recent', 'Recent calls', t.wrap, h('p', {}, more));
    let cursor = null;
    async function load(next) {
      const qs = new URLSearchParams({ limit: '20', order: 'desc' });
      if (next && cursor) qs.set('cursor', cursor);
      const page = await api('GET', `/me/usage-logs?${qs}`);
      if (!alive(g)) return;
      if (!next) t.tbody.replaceChildren();
      const items = (page && page.items) || [];
      for (const log of items) t.tbody.append(logRow(t, log, false));
      if (!t.tbody.children.length) t.tbody.append(emptyRow(t, 'No calls yet.'));
      cursor = page ? page.next_cursor : null;
      more.hidden = !cursor;
    }
    more.addEventListener('click', async () => {
      more.disabled = true;
      try {
        await load(true);
      } catch (e) {
        failAction(e, g);
      } finally {
        more.disabled = false;
      }
    });
    return { el, load };
  }

  async function loadInvoices(g, box, url, withTenant) {
    const t = table(box.id === 'invoices' ? 'invoices-table' : 'invoices-admin', 'Invoices', (withTenant ? ['Tenant'] : []).concat(['Period', 'Status', 'Dates', '#Credits', '#Calls', 'Line items']));
    box.replaceChildren(h('h2', {}, 'Invoices'), t.wrap);
    const data = await api('GET', url);
    if (!alive(g)) return;
    const items = byNewest((data && data.items) || [], 'period_start');
    for (const inv of items) t.tbody.append(invoiceRow(t, inv, withTenant));
    if (!items.length) t.tbody.append(emptyRow(t, 'No invoices yet.'));
  }

  async function loadNotifications(g, box) {
    const t = table('notifications-table', 'Credit notifications', ['At', 'Level', '#Balance', '#Threshold', 'Delivery']);
    box.replaceChildren(h('h2', {}, 'Notifications'), t.wrap);
    const data = await api('GET', '/me/notifications');
    if (!alive(g)) return;
    const items = byNewest((data && data.items) || [], 'timestamp');
    for (const n of items) {
      const level = n.kind || n.level || '—';
      const delivery = n.delivery === 'delivered'
        ? h('span', {}, statusBadge('delivered', 'ok'), ' ', timeEl(n.delivered_at))
        : statusBadge(n.delivery || 'pending', 'info');
      t.tbody.append(row(t, { dataset: { notificationId: n.id } }, [timeEl(n.timestamp || n.at), statusBadge(level, level === 'exhausted' ? 'bad' : 'warn'), fmtInt(n.balance), fmtInt(n.threshold), delivery]));
    }
    if (!items.length) t.tbody.append(emptyRow(t, 'No notifications.'));
  }

  function keyStatus(k) {
    if (k.disabled) return ['disabled', 'bad'];
    if (k.expires_at && Date.parse(k.expires_at) <= Date.now()) return ['expired', 'warn'];
    return ['active', 'ok'];
  }

  function keysSection(g) {
    const name = h('input', { name: 'name', required: true, maxlength: '128', autocomplete: 'off' });
    const form = h('form', { id: 'key-create', class: 'inline-form' }, field('New key name', name), h('button', { type: 'submit', class: 'primary' }, 'Create key'));
    const shown = h('div', { id: 'key-shown', class: 'key-shown', hidden: true, role: 'status' });
    const t = table('keys-table', 'API keys', ['Name', 'Prefix', 'Created', 'Expires', 'Status', 'Actions']);
    const el = section('keys', 'API keys', form, shown, t.wrap);

    function showSecret(secret, what) {
      const code = h('code', { id: 'key-secret', class: 'secret' }, secret);
      const copy = h('button', { type: 'button', class: 'key-copy' }, 'Copy');
      copy.addEventListener('click', async () => {
        try {
          await navigator.clipboard.writeText(secret);
          copy.textContent = 'Copied';
        } catch (_) {
          const range = document.createRange();
          range.selectNodeContents(code);
          const sel = window.getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
          copy.textContent = 'Selected: press Ctrl+C';
        }
      });
      shown.replaceChildren(
        h('p', { class: 'strong' }, what),
        h('div', { class: 'secret-row' }, code, copy),
        h('p', { class: 'hint' }, 'Shown once: copy this key now and keep it safe. It is not stored and cannot be shown again.'),
      );
      shown.hidden = false;
    }

    function keyRow(k) {
      const [status, kind] = keyStatus(k);
      const roll = h('button', { type: 'button', class: 'key-roll' }, 'Roll');
      const revoke = h('button', { type: 'button', class: 'key-revoke danger' }, 'Revoke');
      const cancel = h('button', { type: 'button', class: 'key-cancel', hidden: true }, 'Cancel');
      roll.setAttribute('aria-label', `Roll key ${k.name}`);
      revoke.setAttribute('aria-label', `Revoke key ${k.name}`);
      roll.addEventListener('click', async () => {
        roll.disabled = true;
        setError('');
        try {
          const created = await api('POST', `/me/keys/${enc(k.id)}/roll`, { overlap_secs: 0 });
          if (!alive(g)) return;
          await load().catch(() => {});
          showSecret(created.key, `New key for “${created.name || k.name}” (the old one stops working now):`);
        } catch (e) {
          failAction(e, g);
        } finally {
          roll.disabled = false;
        }
      });
      revoke.addEventListener('click', async () => {
        if (revoke.dataset.confirm !== '1') {
          revoke.dataset.confirm = '1';
          revoke.textContent = 'Confirm revoke';
          revoke.setAttribute('aria-label', `Confirm revoking key ${k.name}`);
          cancel.hidden = false;
          return;
        }
        revoke.disabled = true;
        setError('');
        try {
          await api('DELETE', `/me/keys/${enc(k.id)}`);
          if (!alive(g)) return;
          await load();
        } catch (e) {
          revoke.disabled = false;
          failAction(e, g);
        }
      });
      cancel.addEventListener('click', () => {
        delete revoke.dataset.confirm;
        revoke.textContent = 'Revoke';
        revoke.setAttribute('aria-label', `Revoke key ${k.name}`);
        cancel.hidden = true;
        revoke.focus();
      });
      return row(t, { dataset: { keyId: k.id } }, [
        k.name,
        h('code', {}, `${k.prefix}…`),
        timeEl(k.created_at),
        k.expires_at ? timeEl(k.expires_at) : 'never',
        statusBadge(status, kind),
        h('span', { class: 'actions' }, roll, revoke, cancel),
      ]);
    }

    async function load() {
      const data = await api('GET', '/me/keys');
      if (!alive(g)) return;
      const items = byNewest((data && data.items) || [], 'created_at');
      t.tbody.replaceChildren(...(items.length ? items.map(keyRow) : [emptyRow(t, 'No API keys yet.')]));
    }

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearFieldErrors(form);
      setError('');
      const button = form.querySelector('button[type=submit]');
      button.disabled = true;
      try {
        const created = await api('POST', '/me/keys', { name: name.value.trim() });
        if (!alive(g)) return;
        name.value = '';
        await load().catch(() => {});
        showSecret(created.key, `Your new key “${created.name}”:`);
      } catch (err) {
        failAction(err, g, form);
      } finally {
        button.disabled = false;
      }
    });
    return { el, load };
  }

  // --- Admin: tenants ----------------------------------------------------------

  async function pageTenants(g) {
    const PAGE = 25;
    const m = mainEl();
    const search = h('input', { id: 'tenant-search', type: 'search', name: 'q', autocomplete: 'off' });
    const t = table('tenants', 'Tenants', ['Id', 'Name', '#Balance', 'Status', 'Plan', 'Last activity']);
    const prev = h('button', { id: 'tenants-prev', type: 'button' }, 'Previous');
    const next = h('button', { id: 'tenants-next', type: 'button' }, 'Next');
    const pageText = h('span', { id: 'tenants-page', 'aria-live': 'polite' });
    const createForm = tenantCreateForm(g, () => load());
    m.append(
      heading('Tenants'),
      h('div', { class: 'toolbar' }, field('Search by id or name', search)),
      t.wrap,
      h('div', { class: 'pager' }, prev, pageText, next),
      createForm,
    );
    let all = [];
    let lastCall = new Map();
    let page = 0;

    function filtered() {
      const q = search.value.trim().toLowerCase();
      if (!q) return all;
      return all.filter((x) => String(x.id).toLowerCase().includes(q) || String(x.name || '').toLowerCase().includes(q));
    }

    function draw() {
      const list = filtered();
      const pages = Math.max(1, Math.ceil(list.length / PAGE));
      page = Math.min(Math.max(0, page), pages - 1);
      const slice = list.slice(page * PAGE, page * PAGE + PAGE);
      t.tbody.replaceChildren(
        ...(slice.length
          ? slice.map((x) =>
              row(t, { dataset: { tenantId: x.id } }, [
                navLink(`/console/admin/tenants/${enc(x.id)}`, x.id),
                x.name,
                h('span', { dataset: { balance: String(x.balance) } }, fmtInt(x.balance)),
                statusBadge(x.status, x.status === 'active' ? 'ok' : 'bad'),
                x.plan_id || '—',
                lastCall.has(x.id) ? timeEl(lastCall.get(x.id)) : 'never',
              ]),
            )
          : [emptyRow(t, all.length ? 'No tenant matches.' : 'No tenants yet.')]),
      );
      pageText.textContent = `Page ${page + 1} of ${pages} · ${NF.format(list.length)} tenant${list.length === 1 ? '' : 's'}`;
      prev.disabled = page === 0;
      next.disabled = page >= pages - 1;
    }

    async function load() {
      const [tenants, activity] = await Promise.all([
        api('GET', '/admin/tenants'),
        api('GET', '/admin/reports/activity').catch((e) => {
          if (e.status === 401) throw e;
          return { items: [] };
        }),
      ]);
      if (!alive(g)) return;
      all = ((tenants && tenants.items) || []).slice().sort((a, b) => String(a.id).localeCompare(String(b.id)));
      lastCall = new Map(((activity && activity.items) || []).map((a) => [a.tenant_id, a.last_call]));
      draw();
    }

    search.addEventListener('input', () => {
      page = 0;
      draw();
    });
    prev.addEventListener('click', () => {
      page--;
      draw();
    });
    next.addEventListener('click', () => {
      page++;
      draw();
    });
    await load();
    ready(g, 'tenants');
  }

  function tenantCreateForm(g, reload) {
    const id = h('input', { name: 'id', autocomplete: 'off', maxlength: '64' });
    const name = h('input', { name: 'name', required: true, autocomplete: 'off', maxlength: '128' });
    const credits = h('input', { name: 'credits', type: 'number', step: '1', min: '0', inputmode: 'numeric' });
    const result = h('p', { id: 'tenant-created', class: 'result', role: 'status' });
    const form = h(
      'form',
      { id: 'tenant-create', class: 'card inline-form' },
      h('h2', {}, 'New tenant'),
      field('Id (optional)', id),
      field('Name', name),
      field('Starting credits', credits),
      h('button', { type: 'submit', class: 'primary' }, 'Create tenant'),
      result,
    );
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearFieldErrors(form);
      setError('');
      result.textContent = '';
      const body = { name: name.value.trim() };
      if (id.value.trim()) body.id = id.value.trim();
      if (credits.value.trim()) {
        if (!/^\d+$/.test(credits.value.trim())) {
          fieldError(form, 'credits', 'Enter a whole number of credits.');
          return;
        }
        body.credits = Number(credits.value.trim());
      }
      try {
        const created = await api('POST', '/admin/tenants', body);
        if (!alive(g)) return;
        result.replaceChildren('Created ', navLink(`/console/admin/tenants/${enc(created.id)}`, created.id), '.');
        form.reset();
        await reload();
      } catch (err) {
        failAction(err, g, form);
      }
    });
    return form;
  }

  async function pageTenant(g, id) {
    const m = mainEl();
    const base = `/admin/tenants/${enc(id)}`;
    const balance = h('p', { id: 'balance', class: 'balance' }, '…');
    const status = h('span', { id: 'tenant-status' }, '…');
    const suspend = h('button', { id: 'suspend', type: 'button', class: 'danger', hidden: true }, 'Suspend tenant');
    const reactivate = h('button', { id: 'reactivate', type: 'button', hidden: true }, 'Reactivate tenant');
    const facts = h('dl', { class: 'facts' });
    const titleEl = heading(`Tenant ${id}`);
    m.append(
      h('p', { class: 'crumbs' }, navLink('/console/admin/tenants', '← Tenants')),
      titleEl,
      h('div', { class: 'grid2' },
        section('balance-card', 'Credit balance', balance, h('p', {}, 'Status: ', status), h('p', { class: 'actions' }, suspend, reactivate)),
        section('tenant-facts', 'Details', facts, h('p', {}, navLink(`/console/admin/usage?tenant_id=${enc(id)}`, 'Usage logs of this tenant')))),
    );

    // Credits form.
    const mode = h('select', { name: 'mode' }, h('option', { value: 'add' }, 'Add or correct (signed amount)'), h('option', { value: 'set' }, 'Set the balance to'));
    const amount = h('input', { name: 'amount', type: 'number', step: '1', required: true, inputmode: 'numeric' });
    const reason = h('input', { name: 'reason', required: true, maxlength: '128', autocomplete: 'off' });
    const creditResult = h('p', { id: 'credit-result', class: 'result', role: 'status', hidden: true });
    const creditForm = h(
      'form',
      { id: 'credit-form', class: 'inline-form' },
      field('Change', mode),
      field('Amount', amount, 'Credits; negative to take credits away.'),
      field('Reason', reason),
      h('button', { type: 'submit', class: 'primary' }, 'Apply'),
    );
    const amountLabel = creditForm.querySelector(`label[for="${amount.id}"]`);
    const amountHint = creditForm.querySelector('.hint');
    mode.addEventListener('change', () => {
      amountLabel.textContent = mode.value === 'set' ? 'New balance' : 'Amount';
      amountHint.textContent = mode.value === 'set' ? 'The balance to set, in credits.' : 'Credits; negative to take credits away.';
    });
    const tx = table('transactions', 'Credit transactions, newest first', ['At', '#Amount', 'Reason', 'Actor', '#Balance after']);
    const users = table('users', 'Users of this tenant', ['Email', 'Role', 'Disabled', 'Created', 'Last sign-in']);
    const usage = usageSection(g, `${base}/usage/series`, 'Usage');
    m.append(section('credits', 'Change credits', creditForm, creditResult), h('div', { class: 'card' }, h('h2', {}, 'Transactions'), tx.wrap), usage.el, h('div', { class: 'card' }, h('h2', {}, 'Users'), users.wrap));

    let thr = null;
    function showTenant(t) {
      thr = t.low_credit_threshold;
      setBalance(balance, t.balance, thr);
      status.textContent = t.status;
      status.className = `badge ${t.status === 'active' ? 'ok' : 'bad'}`;
      suspend.hidden = t.status !== 'active';
      reactivate.hidden = t.status === 'active';
      titleEl.textContent = t.name && t.name !== t.id ? `Tenant ${t.name} (${t.id})` : `Tenant ${t.id}`;
      const fact = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
      facts.replaceChildren(
        ...fact('Id', t.id),
        ...fact('Name', t.name),
        ...fact('Plan', t.plan_id || '—'),
        ...fact('Low-credit threshold', h('span', { id: 'threshold', dataset: { threshold: String(thr) } }, fmtInt(thr))),
        ...(t.rate_limit ? fact('Rate limit', `${fmtInt(t.rate_limit.requests_per_second)}/s, burst ${fmtInt(t.rate_limit.burst)}`) : []),
        ...(t.max_concurrent ? fact('Max concurrent', fmtInt(t.max_concurrent)) : []),
      );
    }
    async function loadTenant() {
      const t = await api('GET', base);
      if (alive(g)) showTenant(t);
    }
    async function loadTx() {
      const data = await api('GET', `${base}/credits/transactions`);
      if (!alive(g)) return;
      const items = byNewest((data && data.items) || [], 'at');
      tx.tbody.replaceChildren(
        ...(items.length
          ? items.map((x) => row(tx, { dataset: { txId: x.id } }, [timeEl(x.at), signed(x.amount), x.reason, x.actor, fmtInt(x.balance_after)]))
          : [emptyRow(tx, 'No transactions.')]),
      );
    }
    async function loadUsers() {
      const data = await api('GET', `/admin/users?tenant_id=${enc(id)}`);
      if (!alive(g)) return;
      const items = (data && data.items) || [];
      users.tbody.replaceChildren(
        ...(items.length
          ? items.map((u) => row(users, { dataset: { userId: u.id } }, [u.email, u.role, u.disabled ? 'yes' : 'no', timeEl(u.created_at), u.last_login_at ? timeEl(u.last_login_at) : 'never']))
          : [emptyRow(users, 'No users.')]),
      );
    }

    async function setStatus(next, button, other) {
      button.disabled = true;
      setError('');
      try {
        const t = await api('PATCH', base, { status: next });
        if (!alive(g)) return;
        showTenant(t);
        other.focus();
      } catch (e) {
        failAction(e, g);
      } finally {
        button.disabled = false;
      }
    }
    suspend.addEventListener('click', () => setStatus('suspended', suspend, reactivate));
    reactivate.addEventListener('click', () => setStatus('active', reactivate, suspend));

    // Exactly once: one Idempotency-Key per change, reused while the same change is retried.
    let pending = null; // { key, sig }
    creditForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearFieldErrors(creditForm);
      setError('');
      creditResult.hidden = true;
      const raw = amount.value.trim();
      const why = reason.value.trim();
      if (!/^-?\d+$/.test(raw)) {
        fieldError(creditForm, 'amount', 'Enter a whole number of credits.');
        setError('Enter a whole number of credits.');
        return;
      }
      const n = BigInt(raw).toString();
      const set = mode.value === 'set';
      const body = set ? `{"balance":${n},"reason":${JSON.stringify(why)}}` : `{"amount":${n},"reason":${JSON.stringify(why)}}`;
      const sig = `${mode.value}|${n}|${why}`;
      if (!pending || pending.sig !== sig) pending = { key: uuid(), sig };
      const button = creditForm.querySelector('button[type=submit]');
      button.disabled = true;
      try {
        const res = await api(set ? 'PUT' : 'POST', `${base}/credits`, body, { 'Idempotency-Key': pending.key });
        pending = null;
        if (!alive(g)) return;
        creditResult.replaceChildren(
          set ? `Balance set to ${fmtInt(res.balance)} (${signed(res.amount)}).` : `Applied ${signed(res.amount)} credits: the balance is now ${fmtInt(res.balance)}.`,
          ' ',
          h('span', { class: 'muted' }, `Transaction ${res.transaction_id}.`),
        );
        creditResult.dataset.balance = String(res.balance);
        creditResult.hidden = false;
        amount.value = '';
        reason.value = '';
        setBalance(balance, res.balance, thr);
        await Promise.all([loadTenant(), loadTx()]);
      } catch (err) {
        const retry = err.status === 0 || err.status === 502 || err.status === 503 || err.status === 504;
        if (!retry) pending = null;
        failAction(err, g, creditForm, { balance: 'amount' });
        if (retry && alive(g)) {
          setError(`${problemText(err)} — The change was not confirmed. Submit the same form again to complete it: it will be applied once.`);
        }
      } finally {
        button.disabled = false;
      }
    });

    const results = await Promise.allSettled([loadTenant(), loadTx(), loadUsers(), usage.load()]);
    if (!alive(g)) return;
    const first = results.find((r) => r.status === 'rejected');
    if (first) {
      const err = first.reason;
      if (err && err.status === 404) {
        const g2 = begin();
        mainEl().append(h('section', { class: 'card', id: 'not-found' }, heading('Tenant not found'), h('p', {}, `There is no tenant “${id}”.`), h('p', {}, navLink('/console/admin/tenants', 'All tenants'))));
        ready(g2, 'tenant');
        return;
      }
      for (const r of results) if (r.status === 'rejected') fail(r.reason, g);
      if (!alive(g)) return;
    }
    every(g, 2000, loadTenant);
    every(g, 5000, usage.load);
    ready(g, 'tenant');
  }

  // --- Admin: services --------------------------------------------------------

  async function pageServices(g) {
    const m = mainEl();
    const t = table('services', 'Services', ['Name', 'Upstream', '#Endpoints', 'Public', 'Refund on 5xx', 'On ledger error']);
    m.append(heading('Services'), t.wrap);
    const data = await api('GET', '/admin/services');
    if (!alive(g)) return;
    const items = ((data && data.items) || []).slice().sort((a, b) => String(a.name).localeCompare(String(b.name)));
    t.tbody.replaceChildren(
      ...(items.length
        ? items.map((s) =>
            row(t, { dataset: { service: s.name } }, [
              navLink(`/console/admin/services/${enc(s.name)}`, s.name),
              h('code', {}, s.upstream),
              fmtInt((s.endpoints || []).length),
              s.public ? 'yes' : 'no',
              s.refund_on_5xx ? 'yes' : 'no',
              String(s.on_ledger_error || '—'),
            ]),
          )
        : [emptyRow(t, 'No services.')]),
    );
    ready(g, 'services');
  }

  function creditsText(c) {
    if (c == null) return '';
    return typeof c === 'object' ? JSON.stringify(c) : String(c);
  }

  function parseCredits(text) {
    const v = text.trim();
    if (/^-?\d+$/.test(v)) {
      const n = Number(v);
      if (Number.isSafeInteger(n)) return n;
    }
    return v;
  }

  async function pageService(g, name) {
    const m = mainEl();
    const base = `/admin/services/${enc(name)}`;
    const facts = h('dl', { class: 'facts' });
    const t = table('endpoints', 'Endpoints and prices', ['Method', 'Path', 'Credits', 'Other pricing']);
    m.append(
      h('p', { class: 'crumbs' }, navLink('/console/admin/services', '← Services')),
      heading(`Service ${name}`),
      section('service-facts', 'Settings', facts),
      h('div', { class: 'card' }, h('h2', {}, 'Endpoints'), h('p', { class: 'hint' }, 'A price is a whole number of credits (0 to 1,000,000) or a CEL expression, e.g. 1 + int(request.query.pages).'), t.wrap),
    );
    let service = null;

    function showFacts(s) {
      const fact = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
      const to = s.timeouts || {};
      facts.replaceChildren(
        ...fact('Upstream', h('code', { id: 'service-upstream' }, s.upstream)),
        ...fact('Timeouts', `connect ${fmtInt(to.connect_ms)} ms, read ${fmtInt(to.read_ms)} ms, write ${fmtInt(to.write_ms)} ms`),
        ...fact('Refund on 5xx', s.refund_on_5xx ? 'yes' : 'no'),
        ...fact('On ledger error', String(s.on_ledger_error || '—')),
        ...fact('Public', s.public ? 'yes' : 'no'),
        ...(s.price_headers && s.price_headers.length ? fact('Price headers', s.price_headers.join(', ')) : []),
      );
    }

    function endpointRow(ep) {
      const input = h('input', { name: 'credits', value: creditsText(ep.credits), autocomplete: 'off', spellcheck: 'false', class: 'credits-input' });
      input.setAttribute('aria-label', `Price of ${ep.method} ${ep.path}`);
      const save = h('button', { type: 'submit' }, 'Save');
      save.setAttribute('aria-label', `Save price of ${ep.method} ${ep.path}`);
      const form = h('form', { class: 'endpoint-form' }, input, save);
      const extra = [];
      if (ep.reserve != null) extra.push(`reserve ${creditsText(ep.reserve)}`);
      if (ep.settle) extra.push(`settle ${creditsText(ep.settle)}`);
      if (ep.overage) extra.push(`overage ${ep.overage}`);
      if (ep.shadow_credits != null) extra.push(`shadow ${creditsText(ep.shadow_credits)}`);
      const tr = row(t, { dataset: { endpoint: `${ep.method} ${ep.path}` } }, [ep.method, h('code', {}, ep.path), form, extra.length ? extra.join('; ') : '—']);
      form.addEventListener('submit', async (e) => {
        e.preventDefault();
        clearFieldErrors(form);
        for (const s of tr.querySelectorAll('.saved')) s.remove();
        setError('');
        // PUT replaces the endpoint: keep its other settings, change only the price.
        const body = Object.assign({}, ep, { method: ep.method, path: ep.path, credits: parseCredits(input.value) });
        save.disabled = true;
        try {
          const updated = await api('PUT', `${base}/endpoints`, body);
          if (!alive(g)) return;
          service = updated;
          const fresh = (updated.endpoints || []).find((x) => x.method === ep.method && x.path === ep.path);
          if (fresh) {
            Object.assign(ep, fresh);
            input.value = creditsText(fresh.credits);
          }
          form.after(h('span', { class: 'saved', role: 'status' }, 'Saved'));
        } catch (err) {
          failAction(err, g, form, { credits: 'credits' });
          if (err.problem && err.problem.field && !form.querySelector('.field-error')) {
            fieldError(form, 'credits', problemText(err));
          }
        } finally {
          save.disabled = false;
        }
      });
      return tr;
    }

    // Price preview.
    const pMethod = h('input', { name: 'method', value: 'GET', autocomplete: 'off', spellcheck: 'false' });
    const pPath = h('input', { name: 'path', value: '/', autocomplete: 'off', spellcheck: 'false' });
    const pQuery = h('input', { name: 'query', autocomplete: 'off', spellcheck: 'false' });
    const pTenant = h('input', { name: 'tenant_id', autocomplete: 'off' });
    const pCredits = h('input', { name: 'credits', autocomplete: 'off', spellcheck: 'false' });
    const pResult = h('p', { id: 'preview-result', class: 'result', role: 'status' });
    const preview = h(
      'form',
      { id: 'price-preview', class: 'inline-form' },
      field('Method', pMethod),
      field('Path', pPath),
      field('Query (optional)', pQuery),
      field('Tenant (optional)', pTenant),
      field('Try a price (optional)', pCredits),
      h('button', { type: 'submit' }, 'Preview price'),
    );
    preview.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearFieldErrors(preview);
      setError('');
      pResult.textContent = '';
      const body = { method: pMethod.value.trim(), path: pPath.value.trim() };
      if (pQuery.value.trim()) body.query = pQuery.value.trim().replace(/^\?/, '');
      if (pTenant.value.trim()) body.tenant_id = pTenant.value.trim();
      if (pCredits.value.trim()) body.credits = parseCredits(pCredits.value);
      try {
        const r = await api('POST', `${base}/price-preview`, body);
        if (!alive(g)) return;
        const parts = [`${r.method} ${r.endpoint}: ${fmtInt(r.credits)} credits`];
        if (r.plan_id) parts.push(`plan ${r.plan_id}`);
        if (r.reserve != null) parts.push(`reserve ${fmtInt(r.reserve)}`);
        if (r.shadow_credits != null) parts.push(`shadow ${fmtInt(r.shadow_credits)}`);
        pResult.textContent = parts.join(' · ');
        pResult.dataset.credits = String(r.credits);
      } catch (err) {
        failAction(err, g, preview);
      }
    });
    m.append(section('preview', 'Price preview', preview, pResult));

    service = await api('GET', base);
    if (!alive(g)) return;
    showFacts(service);
    const eps = service.endpoints || [];
    t.tbody.replaceChildren(...(eps.length ? eps.map(endpointRow) : [emptyRow(t, 'No endpoints.')]));
    ready(g, 'service');
  }

  // --- Admin: plans -----------------------------------------------------------

  async function pagePlans(g) {
    const m = mainEl();
    const plans = table('plans', 'Plans', ['Id', 'Name', '#Monthly credits', '#Refill day', '#Price overrides']);
    const subs = table('subscriptions', 'Subscriptions', ['Id', 'Tenant', 'Plan', 'Status', 'Period start', 'Period end', 'Created']);
    const tenantId = h('input', { name: 'tenant_id', required: true, autocomplete: 'off' });
    const planId = h('input', { name: 'plan_id', required: true, autocomplete: 'off', list: 'plan-ids' });
    const planIds = h('datalist', { id: 'plan-ids' });
    const result = h('p', { id: 'subscribe-result', class: 'result', role: 'status' });
    const form = h(
      'form',
      { id: 'subscribe', class: 'inline-form' },
      field('Tenant id', tenantId),
      field('Plan id', planId),
      planIds,
      h('button', { type: 'submit', class: 'primary' }, 'Subscribe'),
    );
    m.append(
      heading('Plans'),
      h('div', { class: 'card' }, plans.wrap),
      h('div', { class: 'card' }, subs.wrap),
      section('subscribe-card', 'Subscribe a tenant to a plan', h('p', { class: 'hint' }, "Grants the plan's monthly credits now and sets the tenant's plan."), form, result),
    );

    async function load() {
      const [p, s] = await Promise.all([api('GET', '/admin/plans'), api('GET', '/admin/subscriptions')]);
      if (!alive(g)) return;
      const pItems = ((p && p.items) || []).slice().sort((a, b) => String(a.id).localeCompare(String(b.id)));
      plans.tbody.replaceChildren(
        ...(pItems.length
          ? pItems.map((x) => row(plans, { dataset: { planId: x.id } }, [x.id, x.name, fmtInt(x.monthly_credits), fmtInt(x.refill_day), fmtInt((x.price_overrides || []).length)]))
          : [emptyRow(plans, 'No plans.')]),
      );
      planIds.replaceChildren(...pItems.map((x) => h('option', { value: x.id }, x.name)));
      const sItems = byNewest((s && s.items) || [], 'created_at');
      subs.tbody.replaceChildren(
        ...(sItems.length
          ? sItems.map((x) =>
              row(subs, { dataset: { subscriptionId: x.id } }, [
                x.id,
                navLink(`/console/admin/tenants/${enc(x.tenant_id)}`, x.tenant_id),
                x.plan_id,
                statusBadge(x.status, x.status === 'active' ? 'ok' : 'info'),
                timeEl(x.current_period_start),
                timeEl(x.current_period_end),
                timeEl(x.created_at),
              ]),
            )
          : [emptyRow(subs, 'No subscriptions.')]),
      );
    }

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearFieldErrors(form);
      setError('');
      result.textContent = '';
      try {
        const sub = await api('POST', '/admin/subscriptions', { tenant_id: tenantId.value.trim(), plan_id: planId.value.trim() });
        if (!alive(g)) return;
        result.textContent = `Subscribed ${sub.tenant_id} to ${sub.plan_id} (${sub.id}).`;
        form.reset();
        await load();
      } catch (err) {
        failAction(err, g, form);
      }
    });

    await load();
    ready(g, 'plans');
  }

  // --- Admin: usage logs ------------------------------------------------------

  async function pageUsage(g) {
    const m = mainEl();
    const q = new URLSearchParams(location.search);
    const names = [
      ['tenant_id', 'Tenant id'],
      ['service', 'Service'],
      ['key_id', 'API key id'],
      ['from', 'From'],
      ['to', 'To'],
    ];
    const inputs = {};
    for (const [n] of names) {
      inputs[n] = h('input', { name: n, value: q.get(n) || '', autocomplete: 'off', spellcheck: 'false' });
      if (n === 'from' || n === 'to') inputs[n].setAttribute('placeholder', 'YYYY-MM-DD HH:MM');
    }
    const form = h(
      'form',
      { id: 'usage-filter', class: 'inline-form card' },
      h('h2', {}, 'Filter'),
      names.map(([n, label]) => field(label, inputs[n], n === 'from' || n === 'to' ? 'Local time, RFC 3339 or unix ms' : null)),
      h('button', { type: 'submit', class: 'primary' }, 'Apply'),
    );
    const t = table('usage-logs', 'Usage logs, newest first', ['Time', 'Tenant', 'Service', 'Endpoint', 'Status', '#Credits', '#Latency', 'Key']);
    const prev = h('button', { id: 'usage-prev', type: 'button', disabled: true }, 'Newer');
    const next = h('button', { id: 'usage-next', type: 'button', disabled: true }, 'Older (next page)');
    const pageText = h('span', { id: 'usage-page', 'aria-live': 'polite' });
    m.append(heading('Usage logs'), form, h('div', { class: 'card' }, t.wrap, h('div', { class: 'pager' }, prev, pageText, next)));

    const LIMIT = 50;
    let cursors = [null]; // cursors[i]: the cursor that loads page i
    let index = 0;
    let nextCursor = null;

    function filters() {
      const f = {};
      for (const [n] of names) {
        const v = inputs[n].value.trim();
        if (!v) continue;
        if (n === 'from' || n === 'to') {
          const at = apiTime(v);
          if (at === undefined) throw Object.assign(new ApiError(422, { title: 'Invalid time', detail: `${n}: not a time (use YYYY-MM-DD HH:MM, RFC 3339 or unix ms)`, field: n }));
          f[n] = at;
        } else f[n] = v;
      }
      return f;
    }

    async function load() {
      const qs = new URLSearchParams(Object.assign(filters(), { limit: String(LIMIT), order: 'desc' }));
      if (cursors[index]) qs.set('cursor', cursors[index]);
      const page = await api('GET', `/admin/usage-logs?${qs}`);
      if (!alive(g)) return;
      const items = (page && page.items) || [];
      t.tbody.replaceChildren(...(items.length ? items.map((log) => logRow(t, log, true)) : [emptyRow(t, 'No usage logs match.')]));
      nextCursor = page ? page.next_cursor : null;
      next.disabled = !nextCursor;
      prev.disabled = index === 0;
      pageText.textContent = `Page ${index + 1}`;
    }

    async function run(fn) {
      clearFieldErrors(form);
      setError('');
      try {
        fn();
        await load();
      } catch (err) {
        failAction(err, g, form);
      }
    }

    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const qs = new URLSearchParams();
      for (const [n] of names) if (inputs[n].value.trim()) qs.set(n, inputs[n].value.trim());
      const s = qs.toString();
      history.replaceState(null, '', `/console/admin/usage${s ? `?${s}` : ''}`);
      run(() => {
        cursors = [null];
        index = 0;
      });
    });
    next.addEventListener('click', () =>
      run(() => {
        if (!nextCursor) return;
        cursors = cursors.slice(0, index + 1);
        cursors.push(nextCursor);
        index++;
      }),
    );
    prev.addEventListener('click', () =>
      run(() => {
        if (index > 0) index--;
      }),
    );

    try {
      await load();
    } catch (err) {
      if (err.status === 401 || err.status === 403) throw err;
      failAction(err, g, form);
    }
    ready(g, 'usage');
  }

  // --- Admin: billing -----------------------------------------------------------

  async function pageBilling(g) {
    const m = mainEl();
    const q = new URLSearchParams(location.search);
    const tenant = h('input', { id: 'billing-tenant', name: 'tenant_id', value: q.get('tenant_id') || '', autocomplete: 'off' });
    const form = h('form', { id: 'billing-filter', class: 'inline-form' }, field('Tenant id (optional)', tenant), h('button', { type: 'submit' }, 'Filter'));
    const sums = table('summaries', 'Usage summaries, newest first', ['Tenant', 'Window start', 'Window end', '#Calls', '#Credits']);
    const invBox = h('div', { class: 'card', id: 'billing-invoices' });
    const note = h('p', { class: 'hint' });
    m.append(heading('Billing'), h('div', { class: 'card' }, form), invBox, h('div', { class: 'card' }, h('h2', {}, 'Usage summaries'), note, sums.wrap));

    const MAX_ROWS = 500;
    async function load() {
      const v = tenant.value.trim();
      const qs = v ? `?tenant_id=${enc(v)}` : '';
      const [s] = await Promise.all([api('GET', `/admin/summaries${qs}`), loadInvoices(g, invBox, `/admin/invoices${qs}`, true)]);
      if (!alive(g)) return;
      const items = byNewest((s && s.items) || [], 'window_start');
      const shown = items.slice(0, MAX_ROWS);
      note.textContent = items.length > MAX_ROWS ? `Showing the newest ${MAX_ROWS} of ${NF.format(items.length)} summaries.` : '';
      sums.tbody.replaceChildren(
        ...(shown.length
          ? shown.map((x) =>
              row(sums, { dataset: { summaryId: x.id } }, [
                navLink(`/console/admin/tenants/${enc(x.tenant_id)}`, x.tenant_id),
                timeEl(x.window_start),
                timeEl(x.window_end),
                fmtInt(x.calls),
                fmtInt(x.credits),
              ]),
            )
          : [emptyRow(sums, 'No summaries.')]),
      );
    }
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      setError('');
      const v = tenant.value.trim();
      history.replaceState(null, '', `/console/admin/billing${v ? `?tenant_id=${enc(v)}` : ''}`);
      try {
        await load();
      } catch (err) {
        failAction(err, g, form);
      }
    });
    await load();
    ready(g, 'billing');
  }

  // --- Admin: operations ------------------------------------------------------

  async function pageOps(g) {
    const m = mainEl();
    const stat = (id, label) => {
      const v = h('span', { id, class: 'stat-value' }, '—');
      return [v, h('div', { class: 'stat' }, h('span', { class: 'stat-label' }, label), v)];
    };
    const [rps, rpsBox] = stat('ops-rps', 'Requests / s');
    const [r402, r402Box] = stat('ops-402', 'No credits (402) / s');
    const [ledger, ledgerBox] = stat('ops-ledger-ms', 'Ledger mean (ms)');
    const [reqMs, reqMsBox] = stat('ops-request-ms', 'Request mean (ms)');
    const [creditsRate, creditsBox] = stat('ops-credits', 'Credits charged / s');
    const [queue, queueBox] = stat('ops-queue', 'Usage queue depth');
    const [journal, journalBox] = stat('ops-journal', 'Usage journal');
    const [dropped, droppedBox] = stat('ops-dropped', 'Usage logs dropped');
    const [flushed, flushedBox] = stat('ops-flushed', 'Usage logs flushed');
    const [deferred, deferredBox] = stat('ops-deferred', 'Deferred charges pending');
    const at = h('p', { class: 'muted', id: 'ops-at', 'aria-live': 'off' }, 'Waiting for the first sample…');
    const outcomes = table('ops-outcomes-table', 'Requests by outcome', ['Outcome', '#Per second', '#Total']);
    const outcomesBox = h('div', { id: 'ops-outcomes' }, outcomes.wrap);
    const chartBox = h('div', { id: 'ops-chart', class: 'chart', role: 'img', 'aria-label': 'Requests per second by outcome' }, h('p', { class: 'muted chart-placeholder' }, 'The chart starts after two samples.'));
    m.append(
      heading('Operations'),
      at,
      h('div', { class: 'stats' }, rpsBox, r402Box, ledgerBox, reqMsBox, creditsBox, queueBox, journalBox, droppedBox, flushedBox, deferredBox),
      section('ops-rates', 'Requests per second by outcome', chartBox, outcomesBox),
    );

    const KEEP = 150; // 5 minutes at one sample every 2 s
    let prev = null;
    const times = [];
    const hist = new Map(); // outcome -> rates aligned with times
    let chart = null;
    let chartKeys = '';

    const setVal = (el, text, raw) => {
      el.textContent = text;
      el.dataset.value = String(raw);
    };
    const delta = (a, b) => Math.max(0, (a || 0) - (b || 0));

    function meanMs(cur, old) {
      if (!cur) return null;
      if (old) {
        const dc = (cur.count || 0) - (old.count || 0);
        if (dc > 0) return (((cur.sum_seconds || 0) - (old.sum_seconds || 0)) / dc) * 1000;
        if (dc === 0) return null;
      }
      return cur.count ? (cur.sum_seconds / cur.count) * 1000 : null;
    }

    function drawChart() {
      const keys = [...hist.keys()].sort();
      const data = [times.slice()].concat(keys.map((k) => hist.get(k).slice()));
      const sig = keys.join('\u0000');
      if (chart && sig === chartKeys) {
        chart.setData(data);
        return;
      }
      if (chart) {
        charts = charts.filter((c) => c !== chart);
        chart.destroy();
      }
      chartKeys = sig;
      chart = makeChart(
        chartBox,
        {
          scales: { x: { time: true }, y: { range: zeroBased } },
          series: [{}].concat(keys.map((k, i) => ({ label: k, stroke: PALETTE[i % PALETTE.length], width: 2, value: (_u, v) => (v == null ? '—' : fmtDec(v, 1)) }))),
          axes: [{}, { label: 'req/s' }],
        },
        data,
      );
    }

    async function poll() {
      const cur = await api('GET', '/admin/ops/metrics');
      if (!alive(g)) return;
      const clock = performance.now();
      const serverMs = Date.parse(cur.at);
      at.textContent = `Sampled at ${fmtTime(cur.at)}; cumulative since the process started, rates over the last interval.`;
      const requests = cur.requests || {};
      setVal(queue, fmtInt(cur.usage_queue_depth), cur.usage_queue_depth);
      setVal(journal, fmtBytes(cur.usage_journal_bytes), cur.usage_journal_bytes);
      setVal(dropped, fmtInt(cur.usage_dropped), cur.usage_dropped);
      setVal(flushed, fmtInt(cur.usage_flushed), cur.usage_flushed);
      setVal(deferred, fmtInt(cur.deferred_pending), cur.deferred_pending);
      const ledgerMean = meanMs(cur.ledger, prev && prev.m.ledger);
      setVal(ledger, ledgerMean == null ? '—' : fmtDec(ledgerMean, 2), ledgerMean == null ? '' : ledgerMean);
      const reqMean = meanMs(cur.request, prev && prev.m.request);
      setVal(reqMs, reqMean == null ? '—' : fmtDec(reqMean, 2), reqMean == null ? '' : reqMean);

      const keys = new Set(Object.keys(requests).concat(prev ? Object.keys(prev.m.requests || {}) : []));
      const rates = {};
      let total = 0;
      if (prev) {
        let dt = (serverMs - prev.serverMs) / 1000;
        if (!(dt > 0)) dt = (clock - prev.clock) / 1000;
        if (dt > 0) {
          for (const k of keys) {
            rates[k] = delta(requests[k], (prev.m.requests || {})[k]) / dt;
            total += rates[k];
          }
          setVal(rps, fmtDec(total, 1), total);
          const nc = rates.no_credits || 0;
          setVal(r402, fmtDec(nc, 1), nc);
          const cr = delta(cur.credits_charged, prev.m.credits_charged) / dt;
          setVal(creditsRate, fmtDec(cr, 1), cr);
          times.push((Number.isNaN(serverMs) ? Date.now() : serverMs) / 1000);
          for (const k of keys) {
            if (!hist.has(k)) hist.set(k, new Array(times.length - 1).fill(0));
            hist.get(k).push(rates[k]);
          }
          while (times.length > KEEP) {
            times.shift();
            for (const arr of hist.values()) arr.shift();
          }
          drawChart();
        }
      }
      outcomes.tbody.replaceChildren(
        ...([...keys].sort().map((k) => row(outcomes, { dataset: { outcome: k } }, [k, k in rates ? fmtDec(rates[k], 1) : '—', fmtInt(requests[k] || 0)]))),
      );
      if (!keys.size) outcomes.tbody.append(emptyRow(outcomes, 'No requests yet.'));
      prev = { m: cur, serverMs, clock };
    }

    try {
      await poll();
    } catch (err) {
      if (err.status === 401 || err.status === 403) throw err;
      fail(err, g);
    }
    if (!alive(g)) return;
    every(g, 2000, poll);
    ready(g, 'ops');
  }

  // ---------------------------------------------------------------------------
  // Boot
  // ---------------------------------------------------------------------------

  async function boot() {
    ensureShell();
    document.getElementById('signout').addEventListener('click', async () => {
      const button = document.getElementById('signout');
      button.disabled = true;
      try {
        await api('DELETE', '/console/session');
      } catch (e) {
        if (e.status !== 401) {
          setError(`Sign-out failed: ${problemText(e)}`);
          button.disabled = false;
          return;
        }
      }
      button.disabled = false;
      me = null;
      renderHeader();
      history.pushState(null, '', '/console/');
      route();
    });

    const forbidden = document.body.dataset.forbidden === '1';
    try {
      me = await api('GET', '/me');
    } catch (e) {
      me = null;
      if (e.status !== 401 && !forbidden) {
        renderHeader();
        const g = begin();
        setError(`The console cannot load: ${problemText(e)}`);
        mainEl().append(h('p', {}, h('button', { type: 'button', id: 'retry', onclick: () => location.reload() }, 'Try again')));
        ready(g, 'error');
        return;
      }
    }
    renderHeader();
    if (forbidden) {
      delete document.body.dataset.forbidden;
      const g = begin();
      pageForbidden(g);
      return;
    }
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
