/* Knowbot console: a single-page app in plain JavaScript.
 *
 * Rules kept throughout: every visible string comes from the i18n files (t()); data is only ever
 * rendered as text (textContent / createTextNode, never as markup); no inline scripts or event
 * handlers (the server can send script-src 'self'); every non-GET carries X-CSRF-Token.
 */
'use strict';

(() => {
  const API = '/console/api';
  const LANG_KEY = 'knowbot.console.lang';
  const TENANT_KEY = 'knowbot.console.tenant';
  const LANGS = ['en', 'zh'];
  const CHANNELS = ['telegram', 'slack', 'wechat', 'console'];

  const state = {
    me: null,
    lang: 'en',
    dict: {},
    fallback: {},
    seq: 0, // render sequence: a late answer for a page that is gone is dropped
    playground: [], // the playground's log survives page changes
    playgroundBusy: false,
    uploads: [], // per-file upload rows of the knowledge page
  };

  // ---------------------------------------------------------------- i18n

  function t(key, params) {
    let text = state.dict[key];
    if (text === undefined) text = state.fallback[key];
    if (text === undefined) text = key;
    if (params) {
      text = text.replace(/\{(\w+)\}/g, (whole, name) =>
        (params[name] === undefined || params[name] === null ? whole : String(params[name])));
    }
    return text;
  }

  function pickLang() {
    const saved = localStorage.getItem(LANG_KEY);
    if (LANGS.includes(saved)) return saved;
    const wanted = (navigator.languages && navigator.languages.length
      ? navigator.languages : [navigator.language || 'en']);
    for (const tag of wanted) {
      const base = String(tag).toLowerCase().split('-')[0];
      if (LANGS.includes(base)) return base;
    }
    return 'en';
  }

  async function loadDict(lang) {
    const res = await fetch(`/console/static/i18n/${lang}.json`, { credentials: 'same-origin' });
    if (!res.ok) throw new Error(`i18n ${lang}: HTTP ${res.status}`);
    return res.json();
  }

  async function setLang(lang) {
    if (!Object.keys(state.fallback).length) state.fallback = await loadDict('en');
    state.dict = lang === 'en' ? state.fallback : await loadDict(lang);
    state.lang = lang;
    document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
    document.title = t('title');
    for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll('[data-i18n-aria]')) {
      el.setAttribute('aria-label', t(el.dataset.i18nAria));
    }
    const select = document.getElementById('lang');
    select.value = lang;
    select.setAttribute('aria-label', t('language'));
  }

  // ---------------------------------------------------------------- DOM helpers

  function append(el, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) append(el, child);
      else if (child instanceof Node) el.appendChild(child);
      else el.appendChild(document.createTextNode(String(child)));
    }
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'on') {
        for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
      } else if (name === 'text') {
        el.textContent = String(value);
      } else if (name === 'value' || name === 'checked' || name === 'disabled' || name === 'selected') {
        el[name] = value;
      } else if (value === true) {
        el.setAttribute(name, '');
      } else {
        el.setAttribute(name, String(value));
      }
    }
    return el;
  }

  /** h('tag.class', {attrs}, ...children): an element whose texts are text nodes. */
  function h(spec, attrs, ...children) {
    const [tag, ...classes] = spec.split('.');
    const el = document.createElement(tag || 'div');
    if (classes.length) el.className = classes.join(' ');
    setAttrs(el, attrs);
    return append(el, children);
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) el.setAttribute(name, String(value));
    }
    return append(el, children);
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  function announce(text) {
    const live = document.getElementById('live');
    live.textContent = '';
    window.setTimeout(() => { live.textContent = text; }, 30);
  }

  function banner(text) {
    const el = document.getElementById('banner');
    if (!text) { el.hidden = true; el.textContent = ''; return; }
    clear(el);
    append(el, [h('span', { text }),
      h('button.btn.ghost', { type: 'button', text: t('dismiss'),
        on: { click: () => banner(null) } })]);
    el.hidden = false;
  }

  function errorBox(text) {
    return h('p.error', { role: 'alert' }, text);
  }

  function fmtNumber(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return '—';
    const opts = digits === undefined ? {} : { minimumFractionDigits: digits, maximumFractionDigits: digits };
    return new Intl.NumberFormat(state.lang === 'zh' ? 'zh-CN' : 'en', opts).format(value);
  }

  function fmtTime(value) {
    if (!value) return '—';
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return String(value);
    return new Intl.DateTimeFormat(state.lang === 'zh' ? 'zh-CN' : 'en',
      { dateStyle: 'medium', timeStyle: 'short' }).format(date);
  }

  function fmtBytes(n) {
    if (n < 1024) return t('bytes', { n: fmtNumber(n) });
    if (n < 1024 * 1024) return t('kib', { n: fmtNumber(n / 1024, 1) });
    return t('mib', { n: fmtNumber(n / (1024 * 1024), 1) });
  }

  function score(value) {
    return value === null || value === undefined ? '—' : fmtNumber(value, 3);
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  function qs(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== '') search.set(key, String(value));
    }
    const text = search.toString();
    return text ? `?${text}` : '';
  }

  async function request(method, path, { json, body, contentType, signal } = {}) {
    const headers = { Accept: 'application/json, application/x-ndjson' };
    if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = state.me ? state.me.csrf : '';
    let payload;
    if (json !== undefined) {
      payload = JSON.stringify(json);
      headers['Content-Type'] = 'application/json';
    } else if (body !== undefined) {
      payload = body;
      headers['Content-Type'] = contentType || 'application/octet-stream';
    }
    let res;
    try {
      res = await fetch(API + path, { method, headers, body: payload, credentials: 'same-origin', signal });
    } catch (err) {
      if (err && err.name === 'AbortError') throw err;
      throw new ApiError(t('err_network'), 0);
    }
    if (res.status === 401) {
      window.location.assign('/console/login');
      throw new ApiError(t('err_signed_out'), 401);
    }
    if (!res.ok) {
      let message = null;
      try { message = (await res.json()).error; } catch (_) { /* not JSON */ }
      if (!message) {
        message = res.status === 404 ? t('err_not_found')
          : res.status === 403 ? t('err_forbidden')
            : res.status === 413 ? t('err_too_large')
              : t('err_http', { status: res.status });
      }
      throw new ApiError(message, res.status);
    }
    return res;
  }

  async function getJSON(path) {
    return (await request('GET', path)).json();
  }

  /** Read an NDJSON answer line by line; onLine gets each parsed object. */
  async function readNDJSON(res, onLine) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let last = null;
    const take = (line) => {
      if (!line.trim()) return;
      let obj;
      try { obj = JSON.parse(line); } catch (_) { return; }
      last = obj;
      onLine(obj);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        take(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
      }
    }
    buffer += decoder.decode();
    take(buffer);
    return last;
  }

  // ---------------------------------------------------------------- routing

  function parseRoute() {
    const raw = window.location.hash.replace(/^#\/?/, '');
    const [page, query] = raw.split('?');
    const pages = Object.keys(PAGES);
    return { page: pages.includes(page) ? page : 'knowledge', params: new URLSearchParams(query || '') };
  }

  function href(page, params) {
    return `#/${page}${qs(params)}`;
  }

  function go(page, params) {
    const target = href(page, params);
    if (window.location.hash === target) render();
    else window.location.hash = target;
  }

  function tenants() {
    const list = (state.me && state.me.tenants) || [];
    return list.length ? list : [state.me.console_tenant];
  }

  /** The tenant the page works on: the URL's (the server decides whether it may be seen). */
  function routeTenant(params) {
    const asked = params.get('tenant');
    if (asked) return asked;
    const saved = localStorage.getItem(TENANT_KEY);
    if (saved && tenants().includes(saved)) return saved;
    return tenants()[0];
  }

  function tenantPicker(current, onChange, { allowAll = false } = {}) {
    const id = `tenant-${state.seq}`;
    const select = h('select', { id, on: { change: () => onChange(select.value) } });
    if (allowAll) select.appendChild(h('option', { value: '', text: t('all_tenants') }));
    const list = tenants().slice();
    if (current && !list.includes(current)) list.unshift(current);
    for (const tenant of list) select.appendChild(h('option', { value: tenant, text: tenant }));
    select.value = current || '';
    return h('div.field', null, h('label', { for: id, text: t('tenant') }), select);
  }

  async function render() {
    const { page, params } = parseRoute();
    const seq = ++state.seq;
    for (const link of document.querySelectorAll('#nav a')) {
      if (link.dataset.route === page) {
        link.setAttribute('aria-current', 'page');
        // on a phone the menu scrolls sideways: keep the current page's entry in sight
        const nav = link.parentElement;
        if (nav.scrollWidth > nav.clientWidth) nav.scrollLeft = Math.max(0, link.offsetLeft - nav.offsetLeft - 16);
      } else {
        link.removeAttribute('aria-current');
      }
    }
    const main = clear(document.getElementById('main'));
    document.title = `${t(`nav_${page}`)} · ${t('title')}`;
    try {
      await PAGES[page](main, params, () => seq === state.seq);
    } catch (err) {
      if (seq !== state.seq) return;
      main.appendChild(errorBox(err.message || String(err)));
    }
  }

  function pageHead(titleKey, introKey) {
    return h('div.page-head', null,
      h('h1', { text: t(titleKey) }),
      introKey ? h('p.intro', { text: t(introKey) }) : null);
  }

  function table(columns, rows, { caption, empty } = {}) {
    if (!rows.length && empty) return empty;
    const head = h('tr', null, columns.map((col) =>
      h('th', { scope: 'col', class: col.num ? 'num' : null, text: col.label })));
    const body = rows.map((row) => h('tr', row.attrs || null, columns.map((col) => {
      const value = col.cell(row.data);
      return h('td', { 'data-label': col.label, class: [col.num ? 'num' : '', col.cls || ''].join(' ').trim() || null },
        value instanceof Node || Array.isArray(value) ? value : String(value ?? '—'));
    })));
    return h('div.table-wrap', null,
      h('table.responsive', null, caption ? h('caption', { text: caption }) : null,
        h('thead', null, head), h('tbody', null, body)));
  }

  // ---------------------------------------------------------------- dialogs

  /** A modal confirmation: resolves true when confirmed. Escape and Cancel resolve false. */
  function confirmDialog({ title, body, ok, danger = true }) {
    const dialog = document.getElementById('dialog');
    const opener = document.activeElement;
    document.getElementById('dialog-title').textContent = title;
    const content = clear(document.getElementById('dialog-content'));
    append(content, [typeof body === 'string' ? h('p', { text: body }) : body]);
    const okButton = document.getElementById('dialog-ok');
    okButton.textContent = ok;
    okButton.className = danger ? 'btn danger' : 'btn primary';
    okButton.hidden = false;
    document.getElementById('dialog-cancel').textContent = t('cancel');
    dialog.returnValue = 'cancel';
    return new Promise((resolve) => {
      const done = () => {
        dialog.removeEventListener('close', done);
        if (opener && opener.focus && document.contains(opener)) opener.focus();
        resolve(dialog.returnValue === 'ok');
      };
      dialog.addEventListener('close', done);
      dialog.showModal();
      document.getElementById('dialog-cancel').focus();
    });
  }

  function trapFocus(event) {
    // showModal() already makes the page behind inert; this keeps Tab cycling inside the dialog
    // instead of leaving for the browser's own controls.
    if (event.key !== 'Tab') return;
    const dialog = event.currentTarget;
    const items = [...dialog.querySelectorAll(
      'button:not([hidden]):not([disabled]), a[href], input:not([disabled]), select, textarea, [tabindex]:not([tabindex="-1"])')];
    if (!items.length) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (event.shiftKey && document.activeElement === first) { last.focus(); event.preventDefault(); }
    else if (!event.shiftKey && document.activeElement === last) { first.focus(); event.preventDefault(); }
  }

  // ---------------------------------------------------------------- Knowledge

  async function pageKnowledge(main, params, alive) {
    const tenant = routeTenant(params);
    localStorage.setItem(TENANT_KEY, tenant);
    main.appendChild(pageHead('knowledge_title', 'knowledge_intro'));
    main.appendChild(h('div.controls', null,
      tenantPicker(tenant, (value) => go('knowledge', { tenant: value }))));
    const kbArea = h('section.card', { 'aria-labelledby': 'kbs-h' },
      h('h2', { id: 'kbs-h', text: t('kbs_title') }), h('p.muted', { text: t('loading') }));
    main.appendChild(kbArea);

    let kbs;
    try {
      kbs = await getJSON(`/kbs${qs({ tenant })}`);
    } catch (err) {
      if (!alive()) return;
      clear(kbArea);
      kbArea.appendChild(h('h2', { id: 'kbs-h', text: t('kbs_title') }));
      kbArea.appendChild(errorBox(err.status === 404 ? t('err_tenant_unknown', { tenant }) : err.message));
      return;
    }
    if (!alive()) return;
    const kb = params.get('kb') || (kbs[0] && kbs[0].name) || 'default';
    clear(kbArea);
    kbArea.appendChild(h('h2', { id: 'kbs-h', text: t('kbs_title') }));
    if (!kbs.length) {
      kbArea.appendChild(h('p.empty', { text: t('kbs_empty') }));
    } else {
      kbArea.appendChild(h('ul.kb-list', null, kbs.map((item) => h('li', null,
        h('a.kb', { href: href('knowledge', { tenant, kb: item.name }),
          'aria-current': item.name === kb ? 'true' : null },
          h('span.kb-name', { text: item.name }),
          item.shared ? h('span.badge', { text: t('kb_shared') }) : null,
          h('span.kb-meta', { text: t('kb_sources', { n: fmtNumber(item.sources) }) }),
          h('span.kb-meta', {
            text: item.chats && item.chats.length
              ? t('kb_chats', { chats: item.chats.join(', ') }) : t('kb_no_chats'),
          }))))));
    }

    const sourcesSection = h('section.card', { 'aria-labelledby': 'sources-h' });
    main.appendChild(sourcesSection);
    sourcesSection.appendChild(h('h2', { id: 'sources-h', text: t('sources_of', { kb }) }));
    const status = h('p.status', { role: 'status' });
    const listArea = h('div');
    // a knowledge base that does not exist yet is empty: the first upload makes it
    let known = kbs.some((item) => item.name === kb);
    const reload = async () => {
      if (!known) {
        try { known = (await getJSON(`/kbs${qs({ tenant })}`)).some((item) => item.name === kb); } catch (_) { /* shown below */ }
      }
      if (known) await loadSources(listArea, tenant, kb, status, alive);
      else clear(listArea).appendChild(h('p.empty', { 'data-testid': 'sources-empty', text: t('sources_empty') }));
    };
    sourcesSection.appendChild(uploadArea(tenant, kb, reload));
    sourcesSection.appendChild(linkForm(tenant, kb, reload, status));
    sourcesSection.appendChild(status);
    sourcesSection.appendChild(listArea);
    await reload();

    const sourceId = params.get('source');
    if (sourceId && alive()) main.appendChild(await chunksPanel(tenant, kb, sourceId, alive));
  }

  async function loadSources(area, tenant, kb, status, alive) {
    let sources;
    try {
      sources = await getJSON(`/sources${qs({ tenant, kb })}`);
    } catch (err) {
      if (!alive()) return;
      clear(area).appendChild(errorBox(err.message));
      return;
    }
    if (!alive()) return;
    clear(area);
    if (!sources.length) {
      area.appendChild(h('p.empty', { 'data-testid': 'sources-empty', text: t('sources_empty') }));
      return;
    }
    const columns = [
      { label: t('col_title'), cls: 'title-cell', cell: (s) => h('a', { href: href('knowledge', { tenant, kb, source: s.id }), text: s.title }) },
      { label: t('col_origin'), cell: (s) => (s.url ? h('span.origin', { text: s.url, title: s.url }) : h('span.origin', { text: s.origin, title: s.origin })) },
      { label: t('col_type'), cell: (s) => s.kind },
      { label: t('col_pages'), num: true, cell: (s) => fmtNumber(s.pages) },
      { label: t('col_chunks'), num: true, cell: (s) => fmtNumber(s.chunks) },
      { label: t('col_added'), cls: 'when-cell', cell: (s) => h('span.added', null, h('span', { text: fmtTime(s.added_at) }),
        h('span.muted.added-by', { text: t('added_by', { who: s.added_by || '—' }) })) },
      { label: t('col_lang'), cell: (s) => s.lang || '—' },
      { label: t('col_recrawled'), cell: (s) => (s.url ? fmtTime(s.recrawled_at) : t('not_a_link')) },
      {
        label: t('col_actions'),
        cell: (s) => h('div.row-actions', null,
          h('a.btn.small', { href: href('knowledge', { tenant, kb, source: s.id }), text: t('show_chunks'),
            'aria-label': t('show_chunks_of', { title: s.title }) }),
          s.url ? h('button.btn.small', { type: 'button', text: t('recrawl'),
            'aria-label': t('recrawl_of', { title: s.title }),
            on: { click: (ev) => recrawl(ev.currentTarget, tenant, kb, s, status, () => loadSources(area, tenant, kb, status, alive)) } }) : null,
          h('button.btn.small.danger', { type: 'button', text: t('delete'),
            'aria-label': t('delete_of', { title: s.title }),
            on: { click: () => deleteSource(tenant, kb, s, status, () => loadSources(area, tenant, kb, status, alive)) } })),
      },
    ];
    area.appendChild(table(columns, sources.map((s) => ({ data: s, attrs: { 'data-source-id': s.id } })),
      { caption: t('sources_caption', { n: fmtNumber(sources.length) }) }));
  }

  async function deleteSource(tenant, kb, source, status, reload) {
    const ok = await confirmDialog({
      title: t('delete_title'),
      body: t('delete_body', { title: source.title, chunks: fmtNumber(source.chunks) }),
      ok: t('delete'),
    });
    if (!ok) return;
    try {
      const res = await request('DELETE', `/sources/${encodeURIComponent(source.id)}${qs({ tenant, kb })}`);
      const done = await res.json();
      status.textContent = t('deleted', { title: done.title || source.title });
      announce(status.textContent);
    } catch (err) {
      status.textContent = '';
      banner(err.message);
    }
    await reload();
  }

  async function recrawl(button, tenant, kb, source, status, reload) {
    button.disabled = true;
    status.textContent = t('recrawling', { title: source.title });
    try {
      const res = await request('POST', `/sources/${encodeURIComponent(source.id)}/recrawl${qs({ tenant, kb })}`);
      const last = await readNDJSON(res, (line) => {
        if (line.progress) status.textContent = t('recrawl_progress', { title: source.title, done: line.progress[0], total: line.progress[1] });
      });
      if (last && last.ok) status.textContent = last.receipt && last.receipt.message ? last.receipt.message : t('recrawled', { title: source.title });
      else status.textContent = (last && last.error) || t('err_no_answer');
    } catch (err) {
      status.textContent = err.message;
    }
    announce(status.textContent);
    button.disabled = false;
    await reload();
  }

  function uploadArea(tenant, kb, reload) {
    const input = h('input.visually-hidden', { type: 'file', id: 'file-input', multiple: true,
      tabindex: '-1', 'aria-hidden': 'true' });
    const choose = h('button.btn.primary', { type: 'button', text: t('choose_files'),
      on: { click: () => input.click() } });
    const list = h('ul.uploads', { 'aria-label': t('uploads_label') });
    const zone = h('div.dropzone', { role: 'group', 'aria-label': t('dropzone_label'), 'data-testid': 'dropzone' },
      h('p.drop-hint', { text: t('drop_here') }), choose, list);
    const start = (files) => {
      const items = [...files].map((file) => uploadRow(file));
      for (const item of items) list.prepend(item.row);
      runUploads(items, tenant, kb, reload);
    };
    input.addEventListener('change', () => { if (input.files.length) start(input.files); input.value = ''; });
    zone.addEventListener('dragover', (ev) => { ev.preventDefault(); zone.classList.add('over'); });
    zone.addEventListener('dragleave', () => zone.classList.remove('over'));
    zone.addEventListener('drop', (ev) => {
      ev.preventDefault();
      zone.classList.remove('over');
      if (ev.dataTransfer && ev.dataTransfer.files.length) start(ev.dataTransfer.files);
    });
    return h('div', null, zone, input);
  }

  function uploadRow(file) {
    const bar = h('progress', { max: '1', value: 0, 'aria-label': t('upload_progress_of', { name: file.name }) });
    const note = h('span.upload-note', { text: t('upload_waiting') });
    const row = h('li.upload', { 'data-file': file.name },
      h('span.upload-name', { text: file.name }), h('span.upload-size', { text: fmtBytes(file.size) }), bar, note);
    return { file, row, bar, note };
  }

  async function runUploads(items, tenant, kb, reload) {
    // two at a time: the server embeds on the CPU, more would only queue there
    let next = 0;
    const worker = async () => {
      while (next < items.length) {
        const item = items[next++];
        await uploadOne(item, tenant, kb);
      }
    };
    await Promise.all([worker(), worker()]);
    const good = items.filter((i) => i.row.classList.contains('ok')).length;
    announce(t('uploads_done', { ok: good, total: items.length }));
    await reload();
  }

  async function uploadOne(item, tenant, kb) {
    item.note.textContent = t('uploading');
    try {
      const res = await request('POST', `/upload${qs({ tenant, kb, name: item.file.name })}`,
        { body: item.file, contentType: item.file.type || 'application/octet-stream' });
      const last = await readNDJSON(res, (line) => {
        if (line.progress) {
          const [done, total] = line.progress;
          item.bar.max = Math.max(1, total);
          item.bar.value = done;
          item.note.textContent = t('upload_progress', { done: fmtNumber(done), total: fmtNumber(total) });
        }
      });
      if (last && last.ok) {
        item.bar.value = item.bar.max;
        item.row.classList.add('ok');
        item.note.textContent = (last.receipt && last.receipt.message) || t('upload_ok');
      } else {
        throw new ApiError((last && last.error) || t('err_no_answer'), 0);
      }
    } catch (err) {
      item.row.classList.add('failed');
      item.bar.hidden = true;
      item.note.textContent = err.message;
      item.note.setAttribute('role', 'alert');
    }
  }

  function linkForm(tenant, kb, reload, status) {
    const id = 'link-url';
    const input = h('input', { id, type: 'url', required: true, placeholder: 'https://', autocomplete: 'url' });
    const button = h('button.btn', { type: 'submit', text: t('add_link') });
    const form = h('form.inline-form', { 'aria-label': t('add_link') },
      h('label', { for: id, text: t('link_label') }), input, button);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const url = input.value.trim();
      if (!url) return;
      button.disabled = true;
      status.textContent = t('link_fetching', { url });
      try {
        const res = await request('POST', `/link${qs({ tenant, kb })}`, { json: { url } });
        const last = await readNDJSON(res, (line) => {
          if (line.progress) status.textContent = t('upload_progress', { done: line.progress[0], total: line.progress[1] });
        });
        if (last && last.ok) {
          status.textContent = (last.receipt && last.receipt.message) || t('upload_ok');
          input.value = '';
        } else {
          status.textContent = (last && last.error) || t('err_no_answer');
        }
      } catch (err) {
        status.textContent = err.message;
      }
      announce(status.textContent);
      button.disabled = false;
      await reload();
    });
    return form;
  }

  async function chunksPanel(tenant, kb, sourceId, alive) {
    const panel = h('section.card.chunks', { 'aria-labelledby': 'chunks-h', id: 'chunks' });
    const close = h('a.btn.ghost', { href: href('knowledge', { tenant, kb }), text: t('close') });
    panel.appendChild(h('div.card-head', null, h('h2', { id: 'chunks-h', text: t('chunks_title') }), close));
    try {
      const chunks = await getJSON(`/sources/${encodeURIComponent(sourceId)}/chunks${qs({ tenant })}`);
      if (!alive()) return panel;
      if (!chunks.length) panel.appendChild(h('p.empty', { text: t('chunks_empty') }));
      panel.appendChild(h('ol.chunk-list', null, chunks.map((c) => h('li.chunk', null,
        h('div.chunk-meta', null, h('span.badge', { text: `#${c.ordinal}` }),
          h('span', { text: c.location || t('no_location') })),
        h('p.chunk-text', { text: c.text })))));
    } catch (err) {
      panel.appendChild(errorBox(err.message));
    }
    window.setTimeout(() => panel.scrollIntoView({ block: 'start' }), 0);
    return panel;
  }

  // ---------------------------------------------------------------- Retrieval bench

  async function pageBench(main, params, alive) {
    const tenant = routeTenant(params);
    main.appendChild(pageHead('bench_title', 'bench_intro'));
    let kbs = [];
    let loadError = null;
    try { kbs = await getJSON(`/kbs${qs({ tenant })}`); } catch (err) { loadError = err; }
    if (!alive()) return;
    const form = h('form.card.bench-form', { 'aria-label': t('bench_title') });
    if (loadError) form.appendChild(errorBox(loadError.status === 404 ? t('err_tenant_unknown', { tenant }) : loadError.message));
    const scope = h('select', { id: 'bench-scope' });
    const kbGroup = h('optgroup', { label: t('scope_kbs') });
    for (const kb of kbs) kbGroup.appendChild(h('option', { value: `kb:${kb.name}`, text: kb.name }));
    const chatGroup = h('optgroup', { label: t('scope_chats') });
    const chats = new Set();
    for (const kb of kbs) for (const chat of kb.chats || []) chats.add(chat);
    for (const chat of chats) chatGroup.appendChild(h('option', { value: `chat:${chat}`, text: chat }));
    if (kbs.length) scope.appendChild(kbGroup);
    if (chats.size) scope.appendChild(chatGroup);
    if (!kbs.length && !chats.size) scope.appendChild(h('option', { value: '', text: t('scope_none') }));
    const wanted = params.get('kb') ? `kb:${params.get('kb')}` : params.get('chat') ? `chat:${params.get('chat')}` : null;
    if (wanted) scope.value = wanted;

    const question = h('textarea', { id: 'bench-q', rows: '2', required: true, placeholder: t('bench_placeholder') });
    const topK = h('input', { id: 'bench-k', type: 'number', min: '1', max: '50', value: '8', inputmode: 'numeric' });
    const run = h('button.btn.primary', { type: 'submit', text: t('bench_run') });
    form.appendChild(h('div.field.grow', null, h('label', { for: 'bench-q', text: t('question') }), question));
    form.appendChild(h('div.form-row', null,
      tenantPicker(tenant, (value) => go('bench', { tenant: value })),
      h('div.field', null, h('label', { for: 'bench-scope', text: t('scope') }), scope),
      h('div.field.narrow', null, h('label', { for: 'bench-k', text: t('top_k') }), topK),
      run));
    question.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
    });
    main.appendChild(form);
    const results = h('section.bench-results', { 'aria-live': 'polite', 'aria-busy': 'false' });
    main.appendChild(results);

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const query = question.value.trim();
      if (!query) return;
      const [kind, ...rest] = (scope.value || '').split(':');
      const name = rest.join(':') || null;
      run.disabled = true;
      results.setAttribute('aria-busy', 'true');
      clear(results).appendChild(h('p.muted', { text: t('searching') }));
      try {
        const res = await request('POST', '/bench', { json: {
          query, tenant, kb: kind === 'kb' ? name : null, chat: kind === 'chat' ? name : null,
          top_k: Math.max(1, Math.min(50, Number(topK.value) || 8)),
        } });
        const data = await res.json();
        if (alive()) renderBench(clear(results), data);
      } catch (err) {
        if (alive()) clear(results).appendChild(errorBox(err.message));
      }
      results.setAttribute('aria-busy', 'false');
      run.disabled = false;
    });
  }

  function renderBench(area, data) {
    const passages = data.passages || [];
    const gate = data.gate || { kept: passages.length, reason: '' };
    area.appendChild(h('div.card.answer', { 'aria-labelledby': 'answer-h' },
      h('h2', { id: 'answer-h', text: t('bench_answer') }),
      h('p.answer-text', { 'data-testid': 'bench-answer', text: data.answer || '—' })));
    if (!passages.length) {
      area.appendChild(h('p.empty', { text: t('bench_nothing') }));
      if (gate.reason) area.appendChild(h('p.gate-reason', { text: gate.reason }));
      return;
    }
    // one ranking per text searched: the question, then (with a model) its translation
    const groups = [];
    for (const p of passages) {
      const query = p.query === undefined ? null : p.query;
      let group = groups.find((g) => g.query === query);
      if (!group) { group = { query, passages: [] }; groups.push(group); }
      group.passages.push(p);
    }
    const card = h('div.card', null, h('h2', { text: t('bench_passages') }));
    if (groups.length > 1 && gate.reason) card.appendChild(h('p.gate-reason.muted', { text: gate.reason }));
    groups.forEach((group, gi) => {
      if (groups.length > 1) {
        card.appendChild(h('h3.ranking', { text: gi === 0 ? t('ranking_question', { q: group.query }) : t('ranking_translation', { q: group.query }) }));
      }
      card.appendChild(rankingTable(group.passages, groups.length > 1 ? null : gate, gi));
    });
    area.appendChild(card);
  }

  function rankingTable(passages, gate, index) {
    const maxFused = Math.max(...passages.map((p) => p.scores.fused || 0), 1e-9);
    const headers = [t('col_rank'), t('col_passage'), t('score_dense'), t('score_xling'), t('score_bm25'), t('score_fused')];
    const gateRow = () => h('tr.gate-line', { 'data-testid': 'gate-line' },
      h('td', { colspan: '6' }, h('span.gate-label', { text: t('gate_line') }),
        gate && gate.reason ? h('span.gate-reason', { text: ` ${gate.reason}` }) : null));
    // the gate keeps passages by score, not by rank: the kept ones (in rank order) are above
    // the line, the others below it, each still showing its rank
    const keptCount = gate ? gate.kept : passages.length;
    const isKept = (p, i) => (typeof p.kept === 'boolean' ? p.kept : i < keptCount);
    const row = (p, kept) => h(`tr.${kept ? 'kept' : 'dropped'}`, { 'data-rank': p.rank, 'data-kept': String(kept) },
      h('td.num', { 'data-label': headers[0] }, String(p.rank)),
      h('td', { 'data-label': headers[1] },
        h('p.passage-text', { text: p.text }),
        h('p.passage-src', null, h('span.source', { text: p.source }),
          p.location ? h('span', { text: ` · ${p.location}` }) : null,
          h(`span.badge.${kept ? 'used' : 'unused'}`, { text: t(kept ? 'passage_used' : 'passage_unused') }))),
      h('td.num', { 'data-label': headers[2] }, score(p.scores.dense)),
      h('td.num', { 'data-label': headers[3] }, score(p.scores.xling)),
      h('td.num', { 'data-label': headers[4] }, score(p.scores.bm25)),
      h('td.num', { 'data-label': headers[5] }, h('span.fused', null, score(p.scores.fused),
        h('span.meter', { 'aria-hidden': 'true' }, meterFill(p.scores.fused / maxFused)))));
    const rows = [];
    passages.forEach((p, i) => { if (isKept(p, i)) rows.push(row(p, true)); });
    rows.push(gateRow());
    passages.forEach((p, i) => { if (!isKept(p, i)) rows.push(row(p, false)); });
    return h('div.table-wrap', null, h(`table.responsive.bench`, { 'data-ranking': String(index) },
      h('caption.visually-hidden', { text: t('bench_passages') }),
      h('thead', null, h('tr', null, headers.map((label, i) =>
        h('th', { scope: 'col', class: i === 1 ? null : 'num', text: label })))),
      h('tbody', null, rows)));
  }

  function meterFill(fraction) {
    const fill = h('span.meter-fill');
    fill.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
    return fill;
  }

  // ---------------------------------------------------------------- Conversations

  async function pageConversations(main, params, alive) {
    main.appendChild(pageHead('conv_title', 'conv_intro'));
    const all = state.me.scope === 'all';
    const tenant = params.get('tenant') || (all ? '' : routeTenant(params));
    const channel = params.get('channel') || '';
    const q = params.get('q') || '';
    const id = params.get('id');

    const channelSelect = h('select', { id: 'conv-channel' },
      h('option', { value: '', text: t('all_channels') }),
      CHANNELS.map((c) => h('option', { value: c, text: t(`channel_${c}`) })));
    channelSelect.value = channel;
    const search = h('input', { id: 'conv-q', type: 'search', value: q, placeholder: t('conv_search_placeholder') });
    let tenantValue = tenant;
    const form = h('form.card.filters', { role: 'search', 'aria-label': t('conv_search') },
      h('div.field', null, h('label', { for: 'conv-channel', text: t('channel') }), channelSelect),
      tenantPicker(tenant, (value) => { tenantValue = value; }, { allowAll: all }),
      h('div.field.grow', null, h('label', { for: 'conv-q', text: t('conv_search') }), search),
      h('button.btn.primary', { type: 'submit', text: t('search') }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      go('conversations', { channel: channelSelect.value, tenant: tenantValue, q: search.value.trim() });
    });
    main.appendChild(form);

    const layout = h('div.split');
    main.appendChild(layout);
    const listArea = h('section.card.conv-list', { 'aria-labelledby': 'conv-list-h' },
      h('h2', { id: 'conv-list-h', text: t('conv_list') }), h('p.muted', { text: t('loading') }));
    layout.appendChild(listArea);
    const detail = h('section.card.conv-detail', { 'aria-labelledby': 'conv-detail-h' });
    layout.appendChild(detail);

    const filters = { channel, tenant, q };
    try {
      const list = await getJSON(`/conversations${qs({ ...filters, limit: 100 })}`);
      if (!alive()) return;
      clear(listArea).appendChild(h('h2', { id: 'conv-list-h', text: t('conv_list') }));
      if (!list.length) listArea.appendChild(h('p.empty', { text: q ? t('conv_none_found', { q }) : t('conv_empty') }));
      else {
        listArea.appendChild(h('ul.conversations', null, list.map((c) => h('li', null,
          h('a.conv', { href: href('conversations', { ...filters, id: c.id }), 'aria-current': String(c.id) === id ? 'true' : null },
            h('span.conv-chat', null, h('span.badge', { text: t(`channel_${c.channel}`) }), ' ', c.chat_id,
              c.thread_id ? h('span.muted', { text: ` / ${c.thread_id}` }) : null),
            h('span.conv-last', { text: c.last || '' }),
            h('span.conv-meta', { text: t('conv_meta', { n: fmtNumber(c.messages), when: fmtTime(c.updated_at), tenant: c.tenant }) }))))));
      }
    } catch (err) {
      if (!alive()) return;
      clear(listArea).appendChild(h('h2', { id: 'conv-list-h', text: t('conv_list') }));
      listArea.appendChild(errorBox(err.message));
    }

    if (id) await renderConversation(detail, id, filters, alive);
    else {
      detail.appendChild(h('h2', { id: 'conv-detail-h', text: t('conv_detail') }));
      detail.appendChild(h('p.muted', { text: t('conv_pick') }));
    }
    main.appendChild(deleteUserForm(tenant));
  }

  async function renderConversation(area, id, filters, alive) {
    let conv;
    try {
      conv = await getJSON(`/conversations/${encodeURIComponent(id)}${qs({ tenant: filters.tenant })}`);
    } catch (err) {
      if (!alive()) return;
      area.appendChild(h('h2', { id: 'conv-detail-h', text: t('conv_detail') }));
      area.appendChild(errorBox(err.message));
      return;
    }
    if (!alive()) return;
    area.appendChild(h('h2', { id: 'conv-detail-h', text: t('conv_with', { chat: conv.chat_id, channel: t(`channel_${conv.channel}`) }) }));
    area.appendChild(h('p.muted', { text: conv.tenant }));
    const messages = conv.messages || [];
    if (!messages.length) area.appendChild(h('p.empty', { text: t('conv_no_messages') }));
    area.appendChild(h('ol.messages', null, messages.map((m) => messageItem(m, conv))));
  }

  function messageItem(m, conv) {
    const role = m.role === 'user' ? 'user' : m.role === 'assistant' ? 'assistant' : 'other';
    return h(`li.msg.${role}`, null,
      h('div.msg-head', null,
        h('span.msg-role', { text: t(`role_${role}`) }),
        role === 'user' && m.user_id ? h('span.msg-user', { text: m.user_id }) : null,
        h('time', { datetime: m.created_at || '', text: fmtTime(m.created_at) }),
        role === 'user' && m.user_id ? h('button.btn.small.ghost', { type: 'button', text: t('delete_user'),
          'aria-label': t('delete_user_of', { user: m.user_id }),
          on: { click: () => deleteUser(conv.channel, conv.tenant, m.user_id) } }) : null),
      h('p.msg-text', { text: m.content || '' }),
      (m.tools || []).map((tool) => toolItem(tool.name, tool.arguments, tool.result)),
      m.citations && m.citations.length ? citationList(m.citations) : null,
      m.error ? h('p.error', { text: t('msg_error', { error: m.error }) }) : null);
  }

  function toolItem(name, args, result) {
    const summary = h('summary', null, h('span.tool-icon', { 'aria-hidden': 'true', text: '⚙' }), ' ',
      t('tool_call', { name }));
    const body = [h('p.tool-label', { text: t('tool_arguments') }), h('pre', { text: pretty(args) })];
    if (result !== undefined && result !== null) body.push(h('p.tool-label', { text: t('tool_result') }), h('pre', { text: pretty(result) }));
    return h('details.tool', null, summary, body);
  }

  function pretty(value) {
    if (typeof value === 'string') {
      try { return JSON.stringify(JSON.parse(value), null, 2); } catch (_) { return value; }
    }
    return JSON.stringify(value, null, 2);
  }

  function citationList(citations) {
    return h('div.citations', null, h('p.cite-label', { text: t('citations') }),
      h('ol', null, citations.map((c) => h('li.citation', null,
        c.url ? h('a', { href: safeUrl(c.url), rel: 'noopener noreferrer', target: '_blank', text: c.source }) : h('span', { text: c.source }),
        c.location ? h('span.muted', { text: ` · ${c.location}` }) : null))));
  }

  function safeUrl(url) {
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.href : '#';
    } catch (_) { return '#'; }
  }

  async function deleteUser(channel, tenant, user) {
    const ok = await confirmDialog({
      title: t('delete_user_title'),
      body: t('delete_user_body', { user, channel: t(`channel_${channel}`), tenant }),
      ok: t('delete_user_ok'),
    });
    if (!ok) return null;
    try {
      const res = await request('DELETE', `/users${qs({ channel, tenant, user })}`);
      const done = await res.json();
      const text = t('delete_user_done', { user, messages: done.messages, conversations: done.conversations, jobs: done.jobs });
      announce(text);
      await render();
      banner(text);
      return done;
    } catch (err) {
      banner(err.message);
      return null;
    }
  }

  function deleteUserForm(tenant) {
    const channel = h('select', { id: 'del-channel' }, CHANNELS.map((c) => h('option', { value: c, text: t(`channel_${c}`) })));
    // a tenant is CHANNEL:WORKSPACE: the channel follows the tenant typed
    const follow = (value) => { const prefix = value.split(':')[0]; if (CHANNELS.includes(prefix)) channel.value = prefix; };
    const tenantInput = h('input', { id: 'del-tenant', type: 'text', value: tenant || '', required: true, placeholder: 'telegram:-1001' });
    const user = h('input', { id: 'del-user', type: 'text', required: true, autocomplete: 'off' });
    follow(tenant || '');
    tenantInput.addEventListener('input', () => follow(tenantInput.value));
    const form = h('form.card.inline-form.delete-user', { 'aria-labelledby': 'del-h' },
      h('h2', { id: 'del-h', text: t('delete_user_title') }),
      h('p.muted', { text: t('delete_user_intro') }),
      h('div.form-row', null,
        h('div.field', null, h('label', { for: 'del-channel', text: t('channel') }), channel),
        h('div.field', null, h('label', { for: 'del-tenant', text: t('tenant') }), tenantInput),
        h('div.field', null, h('label', { for: 'del-user', text: t('user_id') }), user),
        h('button.btn.danger', { type: 'submit', text: t('delete_user_ok') })));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!user.value.trim() || !tenantInput.value.trim()) return;
      await deleteUser(channel.value, tenantInput.value.trim(), user.value.trim());
    });
    return form;
  }

  // ---------------------------------------------------------------- Usage

  async function pageUsage(main, params, alive) {
    main.appendChild(pageHead('usage_title', 'usage_intro'));
    const all = state.me.scope === 'all';
    const tenant = params.get('tenant') || (all ? '' : routeTenant(params));
    const days = Number(params.get('days')) || 30;
    const daysSelect = h('select', { id: 'usage-days', on: { change: () => go('usage', { tenant, days: daysSelect.value }) } },
      [7, 30, 90].map((n) => h('option', { value: String(n), text: t('last_days', { n }) })));
    daysSelect.value = String(days);
    main.appendChild(h('div.controls', null,
      tenantPicker(tenant, (value) => go('usage', { tenant: value, days }), { allowAll: all }),
      h('div.field', null, h('label', { for: 'usage-days', text: t('period') }), daysSelect)));

    const data = await getJSON(`/usage${qs({ days, tenant })}`);
    if (!alive()) return;
    const rows = data.rows || [];
    const backlog = data.backlog || { inbox: {}, outbox: 0 };
    const inbox = backlog.inbox || {};
    main.appendChild(h('section.stats', { 'aria-label': t('backlog') },
      stat(t('inbox_queued'), inbox.queued), stat(t('inbox_running'), inbox.running),
      stat(t('inbox_dead'), inbox.dead, inbox.dead > 0), stat(t('outbox_pending'), backlog.outbox),
      stat(t('total_calls'), rows.reduce((a, r) => a + (r.calls || 0), 0)),
      stat(t('total_tokens'), rows.reduce((a, r) => a + (r.prompt_tokens || 0) + (r.completion_tokens || 0), 0))));

    if (!rows.length) {
      main.appendChild(h('p.empty.card', { text: t('usage_empty') }));
    } else {
      const byDay = perDay(rows);
      const charts = [
        [t('chart_requests'), () => barChart(byDay, [
          { key: 'calls', label: t('series_calls'), cls: 'c1' },
          { key: 'errors', label: t('series_errors'), cls: 'c3' }], { stacked: false })],
        [t('chart_tokens'), () => barChart(byDay, [
          { key: 'prompt_tokens', label: t('series_prompt'), cls: 'c1' },
          { key: 'completion_tokens', label: t('series_completion'), cls: 'c2' }], { stacked: true })],
        [t('chart_latency'), () => lineChart(byDay, 'latency', t('series_latency'))],
      ].map(([title, draw]) => ({ card: h('figure.card.chart', null, h('figcaption', { text: title })), draw }));
      main.appendChild(h('div.charts', null, charts.map((c) => c.card)));
      // drawn at the width they get, so the text in them is at its real size
      for (const { card, draw } of charts) {
        const style = window.getComputedStyle(card);
        const inner = card.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        CW = Math.max(240, Math.floor(inner));
        card.appendChild(draw());
      }
      main.appendChild(groupTable(rows, (r) => `${r.provider || '—'} · ${r.model || '—'}`, t('by_provider')));
      main.appendChild(groupTable(rows, (r) => r.tenant || '—', t('by_tenant')));
      main.appendChild(groupTable(rows, (r) => (r.channel ? t(`channel_${r.channel}`) : '—'), t('by_channel')));
    }
    main.appendChild(quotaTable(data.quotas || []));
  }

  function stat(label, value, alarm) {
    return h(`div.stat${alarm ? '.alarm' : ''}`, null, h('span.stat-value', { text: fmtNumber(value || 0) }),
      h('span.stat-label', { text: label }));
  }

  function perDay(rows) {
    const map = new Map();
    for (const r of rows) {
      const day = map.get(r.day) || { day: r.day, calls: 0, errors: 0, prompt_tokens: 0, completion_tokens: 0, latencySum: 0 };
      day.calls += r.calls || 0;
      day.errors += r.errors || 0;
      day.prompt_tokens += r.prompt_tokens || 0;
      day.completion_tokens += r.completion_tokens || 0;
      day.latencySum += (r.latency_ms_avg || 0) * (r.calls || 0);
      map.set(r.day, day);
    }
    const days = [...map.keys()].sort();
    // every day between the first and the last, so gaps show as gaps
    const out = [];
    if (days.length) {
      const end = new Date(`${days[days.length - 1]}T00:00:00Z`);
      for (let d = new Date(`${days[0]}T00:00:00Z`); d <= end && out.length < 400; d.setUTCDate(d.getUTCDate() + 1)) {
        const key = d.toISOString().slice(0, 10);
        const row = map.get(key) || { day: key, calls: 0, errors: 0, prompt_tokens: 0, completion_tokens: 0, latencySum: 0 };
        row.latency = row.calls ? row.latencySum / row.calls : null;
        out.push(row);
      }
    }
    return out;
  }

  let CW = 600; // the chart's width in pixels, set before each chart is drawn
  const CH = 220;
  const PAD = { l: 52, r: 12, t: 12, b: 28 };

  function niceMax(value) {
    if (value <= 0) return 1;
    const exp = 10 ** Math.floor(Math.log10(value));
    for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * exp) return m * exp;
    return 10 * exp;
  }

  function axes(max, days, formatter) {
    const g = svg('g', { class: 'axes' });
    const plotH = CH - PAD.t - PAD.b;
    for (let i = 0; i <= 4; i++) {
      const y = PAD.t + plotH - (plotH * i) / 4;
      g.appendChild(svg('line', { x1: PAD.l, x2: CW - PAD.r, y1: y, y2: y, class: 'grid' }));
      g.appendChild(svg('text', { x: PAD.l - 6, y: y + 4, 'text-anchor': 'end', class: 'tick' }, formatter((max * i) / 4)));
    }
    if (days.length) {
      g.appendChild(svg('text', { x: PAD.l, y: CH - 8, class: 'tick' }, days[0].day));
      if (days.length > 1) g.appendChild(svg('text', { x: CW - PAD.r, y: CH - 8, 'text-anchor': 'end', class: 'tick' }, days[days.length - 1].day));
    }
    return g;
  }

  function shortNumber(n) {
    return new Intl.NumberFormat(state.lang === 'zh' ? 'zh-CN' : 'en', { notation: 'compact', maximumFractionDigits: 1 }).format(n);
  }

  function legend(series) {
    return h('ul.legend', null, series.map((s) => h('li', null, h(`span.swatch.${s.cls}`, { 'aria-hidden': 'true' }), s.label)));
  }

  function dataTable(days, series, caption) {
    return h('details.chart-data', null, h('summary', { text: t('show_numbers') }),
      h('table', null, h('caption.visually-hidden', { text: caption }),
        h('thead', null, h('tr', null, h('th', { scope: 'col', text: t('col_day') }),
          series.map((s) => h('th', { scope: 'col', class: 'num', text: s.label })))),
        h('tbody', null, days.map((d) => h('tr', null, h('th', { scope: 'row', text: d.day }),
          series.map((s) => h('td.num', { text: s.format ? s.format(d[s.key]) : fmtNumber(d[s.key]) })))))));
  }

  function barChart(days, series, { stacked }) {
    const plotW = CW - PAD.l - PAD.r;
    const plotH = CH - PAD.t - PAD.b;
    const totals = days.map((d) => (stacked ? series.reduce((a, s) => a + d[s.key], 0) : Math.max(...series.map((s) => d[s.key]))));
    const max = niceMax(Math.max(0, ...totals));
    const slot = plotW / Math.max(1, days.length);
    const barW = Math.max(1, Math.min(28, slot * 0.7));
    const label = series.map((s) => `${s.label}: ${fmtNumber(days.reduce((a, d) => a + d[s.key], 0))}`).join(', ');
    const chart = svg('svg', { viewBox: `0 0 ${CW} ${CH}`, width: CW, height: CH, role: 'img', 'aria-label': label, class: 'chart-svg' });
    chart.appendChild(axes(max, days, shortNumber));
    days.forEach((d, i) => {
      const x = PAD.l + slot * i + (slot - barW) / 2;
      let base = PAD.t + plotH;
      series.forEach((s, j) => {
        const value = d[s.key];
        if (!value) return;
        const height = (value / max) * plotH;
        const w = stacked ? barW : (j === 0 ? barW : barW * 0.45);
        const xx = stacked || j === 0 ? x : x + (barW - w) / 2;
        const y = stacked ? base - height : PAD.t + plotH - height;
        chart.appendChild(svg('rect', { x: xx, y, width: w, height: Math.max(0.5, height), class: `bar ${s.cls}` },
          svg('title', null, `${d.day} · ${s.label}: ${fmtNumber(value)}`)));
        if (stacked) base -= height;
      });
    });
    return h('div', null, chart, legend(series), dataTable(days, series, label));
  }

  function lineChart(days, key, label) {
    const plotW = CW - PAD.l - PAD.r;
    const plotH = CH - PAD.t - PAD.b;
    const values = days.map((d) => d[key]).filter((v) => v !== null);
    const max = niceMax(Math.max(0, ...values));
    const ms = (v) => t('ms', { n: shortNumber(v) });
    const avg = values.length ? values.reduce((a, v) => a + v, 0) / values.length : 0;
    const chart = svg('svg', { viewBox: `0 0 ${CW} ${CH}`, width: CW, height: CH, role: 'img', class: 'chart-svg',
      'aria-label': `${label}: ${t('ms', { n: fmtNumber(avg, 0) })}` });
    chart.appendChild(axes(max, days, ms));
    const step = days.length > 1 ? plotW / (days.length - 1) : 0;
    const points = [];
    days.forEach((d, i) => {
      if (d[key] === null) return;
      const x = PAD.l + (days.length > 1 ? step * i : plotW / 2);
      const y = PAD.t + plotH - (d[key] / max) * plotH;
      points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
      chart.appendChild(svg('circle', { cx: x, cy: y, r: 3.5, class: 'dot c2' },
        svg('title', null, `${d.day} · ${label}: ${t('ms', { n: fmtNumber(d[key], 0) })}`)));
    });
    if (points.length > 1) chart.insertBefore(svg('polyline', { points: points.join(' '), class: 'line c2' }), chart.children[1] || null);
    const series = [{ key, label, cls: 'c2', format: (v) => (v === null ? '—' : t('ms', { n: fmtNumber(v, 0) })) }];
    return h('div', null, chart, legend(series), dataTable(days, series, label));
  }

  function groupTable(rows, keyOf, caption) {
    const groups = new Map();
    for (const r of rows) {
      const key = keyOf(r);
      const g = groups.get(key) || { key, calls: 0, errors: 0, prompt: 0, completion: 0, latencySum: 0 };
      g.calls += r.calls || 0;
      g.errors += r.errors || 0;
      g.prompt += r.prompt_tokens || 0;
      g.completion += r.completion_tokens || 0;
      g.latencySum += (r.latency_ms_avg || 0) * (r.calls || 0);
      groups.set(key, g);
    }
    const list = [...groups.values()].sort((a, b) => b.calls - a.calls);
    return h('section.card', null, h('h2', { text: caption }), table([
      { label: caption, cell: (g) => g.key },
      { label: t('series_calls'), num: true, cell: (g) => fmtNumber(g.calls) },
      { label: t('series_errors'), num: true, cell: (g) => fmtNumber(g.errors) },
      { label: t('series_prompt'), num: true, cell: (g) => fmtNumber(g.prompt) },
      { label: t('series_completion'), num: true, cell: (g) => fmtNumber(g.completion) },
      { label: t('series_latency'), num: true, cell: (g) => (g.calls ? t('ms', { n: fmtNumber(g.latencySum / g.calls, 0) }) : '—') },
    ], list.map((g) => ({ data: g }))));
  }

  function quotaTable(quotas) {
    const section = h('section.card', { 'aria-labelledby': 'quota-h' }, h('h2', { id: 'quota-h', text: t('quotas') }));
    if (!quotas.length) {
      section.appendChild(h('p.empty', { text: t('quotas_empty') }));
      return section;
    }
    const used = (n, limit) => {
      if (!limit) return h('span', null, fmtNumber(n || 0), h('span.muted', { text: ` · ${t('quota_no_limit')}` }));
      const share = (n || 0) / limit;
      return h(`span.fused${share >= 1 ? '.over' : ''}`, null, t('quota_of', { n: fmtNumber(n || 0), limit: fmtNumber(limit) }),
        h('span.meter', { 'aria-hidden': 'true' }, meterFill(share)));
    };
    section.appendChild(table([
      { label: t('quota_scope'), cell: (q) => t(`quota_scope_${q.scope}`) === `quota_scope_${q.scope}` ? String(q.scope) : t(`quota_scope_${q.scope}`) },
      { label: t('quota_id'), cell: (q) => q.id || '—' },
      { label: t('tenant'), cell: (q) => q.tenant || '—' },
      { label: t('col_day'), cls: 'when-cell', cell: (q) => q.day || '—' },
      { label: t('quota_requests'), num: true, cell: (q) => used(q.requests, q.limit_requests) },
      { label: t('quota_tokens'), num: true, cell: (q) => used(q.tokens, q.limit_tokens) },
    ], quotas.map((q) => ({ data: q }))));
    return section;
  }

  // ---------------------------------------------------------------- Playground

  async function pagePlayground(main, params, alive) {
    main.appendChild(pageHead('play_title', 'play_intro'));
    if (state.me.scope !== 'all') {
      main.appendChild(h('p.empty.card', { text: t('play_admins_only') }));
      return;
    }
    let kbs = [];
    try { kbs = await getJSON(`/kbs${qs({ tenant: state.me.console_tenant })}`); } catch (_) { kbs = []; }
    if (!alive()) return;
    const log = h('ol.play-log', { 'aria-label': t('play_log'), 'aria-live': 'polite', 'data-testid': 'play-log' });
    for (const entry of state.playground) log.appendChild(entry);
    if (!state.playground.length) log.appendChild(h('li.empty.play-empty', { text: t('play_empty') }));
    const kbSelect = h('select', { id: 'play-kb' }, h('option', { value: '', text: t('play_all_kbs') }),
      kbs.map((kb) => h('option', { value: kb.name, text: kb.name })));
    if (params.get('kb')) kbSelect.value = params.get('kb');
    const input = h('textarea', { id: 'play-q', rows: '2', required: true, placeholder: t('play_placeholder') });
    const send = h('button.btn.primary', { type: 'submit', text: t('send'), disabled: state.playgroundBusy });
    const form = h('form.card.play-form', { 'aria-label': t('play_title') },
      h('div.form-row', null,
        h('div.field', null, h('label', { for: 'play-kb', text: t('knowledge_base') }), kbSelect)),
      h('div.field.grow', null, h('label', { for: 'play-q', text: t('play_message') }), input),
      h('div.form-row.end', null, h('span.muted.hint', { text: t('play_hint') }), send));
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const message = input.value.trim();
      if (!message || state.playgroundBusy) return;
      input.value = '';
      await playgroundSend(log, send, message, kbSelect.value || null);
      input.focus();
    });
    main.appendChild(h('section.card.play', null, log));
    main.appendChild(form);
    input.focus();
  }

  function pushLog(log, item) {
    const empty = log.querySelector('.play-empty');
    if (empty) empty.remove();
    state.playground.push(item);
    // the log element may be gone if the admin moved to another page meanwhile
    log.appendChild(item);
    item.scrollIntoView({ block: 'nearest' });
    return item;
  }

  async function playgroundSend(log, send, message, kb) {
    state.playgroundBusy = true;
    send.disabled = true;
    pushLog(log, h('li.msg.user', null, h('div.msg-head', null, h('span.msg-role', { text: t('role_you') })),
      h('p.msg-text', { text: message })));
    const thinking = pushLog(log, h('li.msg.pending', null, h('span.spinner', { 'aria-hidden': 'true' }), t('thinking')));
    const tools = new Map();
    try {
      const res = await request('POST', '/playground', { json: { message, kb } });
      await readNDJSON(res, (event) => {
        if (event.tool) {
          const item = h('li.tool-event', { 'data-tool': event.tool.name },
            h('span.tool-icon', { 'aria-hidden': 'true', text: '⚙' }), ' ',
            h('span', { text: t('tool_running', { name: event.tool.name }) }),
            h('pre', { text: pretty(event.tool.arguments) }));
          log.insertBefore(item, thinking);
          state.playground.splice(state.playground.indexOf(thinking), 0, item);
          tools.set(event.tool.name, item);
        } else if (event.tool_result) {
          const item = tools.get(event.tool_result.name);
          if (item) {
            item.classList.add('done');
            item.querySelector('span:not(.tool-icon)').textContent = t('tool_done', { name: event.tool_result.name });
            item.appendChild(h('details', null, h('summary', { text: t('tool_result') }), h('pre', { text: pretty(event.tool_result.result) })));
          }
        } else if (event.answer !== undefined) {
          thinking.replaceWith(answerItem(event.answer, event.citations || []));
          state.playground[state.playground.indexOf(thinking)] = log.lastElementChild;
        } else if (event.error) {
          // a failed answer may still carry the passages it quoted
          const item = h('li.msg.failed', { role: 'alert' }, h('p.error', { text: event.error }),
            event.citations && event.citations.length ? citationList(event.citations) : null);
          thinking.replaceWith(item);
          state.playground[state.playground.indexOf(thinking)] = item;
        }
      });
    } catch (err) {
      const item = h('li.msg.failed', { role: 'alert' }, h('p.error', { text: err.message }));
      thinking.replaceWith(item);
      state.playground[state.playground.indexOf(thinking)] = item;
    }
    if (thinking.isConnected) {
      const item = h('li.msg.failed', { role: 'alert' }, h('p.error', { text: t('err_no_answer') }));
      thinking.replaceWith(item);
      state.playground[state.playground.indexOf(thinking)] = item;
    }
    state.playgroundBusy = false;
    send.disabled = false;
  }

  function answerItem(text, citations) {
    return h('li.msg.assistant', { 'data-testid': 'play-answer' },
      h('div.msg-head', null, h('span.msg-role', { text: t('role_assistant') })),
      h('p.msg-text', { text }),
      citations.length ? citationList(citations) : null);
  }

  // ---------------------------------------------------------------- start

  const PAGES = {
    knowledge: pageKnowledge,
    bench: pageBench,
    conversations: pageConversations,
    usage: pageUsage,
    playground: pagePlayground,
  };

  async function logout() {
    try {
      await fetch('/console/logout', { method: 'POST', credentials: 'same-origin', redirect: 'manual',
        headers: { 'X-CSRF-Token': state.me ? state.me.csrf : '', 'Content-Type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ csrf: state.me ? state.me.csrf : '' }) });
    } catch (_) { /* going to the sign-in page anyway */ }
    window.location.assign('/console/login');
  }

  async function start() {
    const dialog = document.getElementById('dialog');
    dialog.addEventListener('keydown', trapFocus);
    document.getElementById('logout').addEventListener('click', logout);
    document.getElementById('lang').addEventListener('change', async (ev) => {
      localStorage.setItem(LANG_KEY, ev.target.value);
      await setLang(ev.target.value);
      await render();
    });
    try {
      await setLang(pickLang());
    } catch (err) {
      document.getElementById('main').textContent = String(err.message || err);
      return;
    }
    try {
      state.me = await getJSON('/me');
    } catch (err) {
      clear(document.getElementById('main')).appendChild(errorBox(err.message));
      return;
    }
    // the playground answers in the console's own tenant: Knowbot admins only
    document.querySelector('#nav a[data-route=playground]').hidden = state.me.scope !== 'all';
    document.getElementById('who').textContent = t(state.me.scope === 'all' ? 'who_all' : 'who_tenant',
      { admin: state.me.admin, tenants: tenants().join(', ') });
    window.addEventListener('hashchange', () => {
      banner(null);
      render().then(() => document.getElementById('main').focus({ preventScroll: true }));
    });
    await render();
    document.body.dataset.ready = 'true';
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
