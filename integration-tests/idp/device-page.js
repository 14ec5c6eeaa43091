// The test device page: a person plays the user's phone. It lists the CIBA
// requests the IdP holds for one user (binding message, requesting client,
// scope, expiry) with Approve and Deny buttons, refreshes itself every
// second, and shows the outcome of a click. server.js serves it at
// /device?user=<sub> when test endpoints are on.
//
// Everything a request carries (the binding message above all: agents choose
// the resource ids it is built from) is untrusted. The browser script puts
// values into the page with textContent only, the few values rendered here
// go through escapeHtml, and a strict Content-Security-Policy (a per-response
// nonce, no inline handlers, no other origins) stops script that would get
// past both anyway. The buttons POST JSON to the same /test/ endpoints the
// tests use; server.js refuses cross-site and non-JSON posts there.

export function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

/** Response headers of both pages: no caching, no framing, no sniffing. */
export function pageHeaders(nonce, body) {
  return {
    'content-type': 'text/html; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    'content-security-policy': [
      "default-src 'none'",
      `script-src 'nonce-${nonce}'`,
      `style-src 'nonce-${nonce}'`,
      "connect-src 'self'",
      'img-src data:',
      "base-uri 'none'",
      "form-action 'none'",
      "frame-ancestors 'none'",
    ].join('; '),
    'x-content-type-options': 'nosniff',
    'x-frame-options': 'DENY',
    'referrer-policy': 'no-referrer',
  };
}

const STYLE = `
:root { color-scheme: light; --ink: #1d2330; --muted: #5d6677; --line: #e3e6ec;
  --bg: #f3f5f8; --card: #fff; --ok: #1a7f4b; --ok-bg: #e6f4ec; --no: #b42318;
  --no-bg: #fdecea; --wait: #8a5a00; --wait-bg: #fff4d6; --accent: #2f5bd3; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 30rem; margin: 0 auto; padding: 1.25rem 1rem 2rem; }
.brand { margin: 0; font-size: .75rem; letter-spacing: .08em; text-transform: uppercase; color: var(--muted); }
h1 { margin: .15rem 0 0; font-size: 1.5rem; }
.who { margin: .1rem 0 0; color: var(--muted); }
.intro { margin: .9rem 0 1.1rem; color: var(--muted); font-size: .9rem; }
h2 { margin: 1.4rem 0 .6rem; font-size: .8rem; letter-spacing: .06em; text-transform: uppercase; color: var(--muted); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 14px; padding: 1rem 1.1rem;
  margin: 0 0 .8rem; box-shadow: 0 1px 2px rgba(16, 24, 40, .05); }
.card.decided { opacity: .85; }
.card-head { display: flex; justify-content: space-between; align-items: center; gap: .5rem; }
.client { font-weight: 600; font-size: .9rem; }
.pill { font-size: .75rem; font-weight: 600; padding: .15rem .6rem; border-radius: 999px; white-space: nowrap; }
.pill.pending { color: var(--wait); background: var(--wait-bg); }
.pill.approved { color: var(--ok); background: var(--ok-bg); }
.pill.denied, .pill.expired, .pill.error { color: var(--no); background: var(--no-bg); }
.pill.none { color: var(--muted); background: var(--bg); font-weight: 500; }
.message { margin: .7rem 0 .3rem; font-size: 1.2rem; font-weight: 600; overflow-wrap: anywhere; white-space: pre-wrap; }
.message.none { font-weight: 400; font-style: italic; color: var(--muted); font-size: 1rem; }
.message .code { display: inline-block; margin-top: .35rem; font: 600 1.05rem ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  letter-spacing: .06em; background: #eef2fb; color: var(--accent); padding: .15rem .55rem; border-radius: 8px; }
.hint { margin: 0 0 .5rem; color: var(--muted); font-size: .85rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem .9rem; margin: .6rem 0 0; font-size: .88rem; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.actions { display: flex; gap: .6rem; margin-top: 1rem; }
button { flex: 1; font: inherit; font-weight: 600; padding: .7rem; border-radius: 10px; cursor: pointer; }
button.approve { background: var(--ok); color: #fff; border: 1px solid var(--ok); }
button.deny { background: #fff; color: var(--no); border: 1px solid #e4a29b; }
button:disabled { opacity: .55; cursor: progress; }
.result { margin: .8rem 0 0; font-weight: 600; }
.result:empty { display: none; }
.result.approved { color: var(--ok); }
.result.denied, .result.expired, .result.error { color: var(--no); }
.empty { text-align: center; color: var(--muted); padding: 1.6rem 1rem; border: 1px dashed #cfd4dc; border-radius: 14px; }
footer a { color: inherit; }
footer { margin-top: 1.6rem; font-size: .78rem; color: var(--muted); display: flex; justify-content: space-between; gap: .5rem; flex-wrap: wrap; }
.offline { color: var(--no); font-weight: 600; }
ul.users { list-style: none; padding: 0; margin: 0; }
ul.users li { margin: 0 0 .6rem; }
ul.users a { display: flex; justify-content: space-between; align-items: center; text-decoration: none; color: inherit;
  background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: .8rem 1rem; }
ul.users a:hover { border-color: var(--accent); }
.notice { background: var(--no-bg); color: var(--no); border-radius: 10px; padding: .6rem .8rem; }
`;

// Runs in the browser. Every value from the IdP goes in with textContent.
const SCRIPT = `
(() => {
  'use strict';
  const sub = document.body.dataset.sub;
  const pendingList = document.getElementById('pending');
  const decidedList = document.getElementById('decided');
  const decidedTitle = document.getElementById('decided-title');
  const empty = document.getElementById('empty');
  const updated = document.getElementById('updated');
  const cards = new Map(); // request id -> { el, fields, view }
  const outcomes = new Map(); // request id -> { status, text } from this page's clicks
  const PILL = { pending: 'Waiting for you', approved: 'Approved', denied: 'Denied', expired: 'Expired', error: 'Not sent' };
  const KEEP_DECIDED = 20;

  const nowSecs = () => Math.floor(Date.now() / 1000);
  const clock = (unix) => {
    const d = new Date(unix * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
  };
  const countdown = (unix) => {
    const s = Math.max(0, unix - nowSecs());
    return Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
  };
  const node = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // The IdP's answer wins once it has one; until the next refresh shows it,
  // this page's own click result stands in for it.
  function statusOf(view) {
    if (view.status !== 'pending') return view.status;
    const local = outcomes.get(view.id);
    if (local && local.status !== 'working') return local.status;
    return view.expires_at <= nowSecs() ? 'expired' : 'pending';
  }

  function resultText(view, status) {
    const local = outcomes.get(view.id);
    if (local && local.status === status) return local.text;
    const at = view.decided_at ? ' at ' + clock(view.decided_at) : '';
    if (status === 'approved') return 'Approved' + (view.approved_by ? ' as ' + view.approved_by : '') + at + '. The agent may go on.';
    if (status === 'denied') return 'Denied' + at + '. The agent is refused' + (view.error_description ? ': ' + view.error_description : '.');
    if (status === 'expired') return 'Expired without an answer. The agent is refused.';
    return '';
  }

  function build(view) {
    const el = node('article', 'card');
    el.dataset.id = view.id;
    el.dataset.authReqId = view.auth_req_id;
    const head = node('div', 'card-head');
    const client = node('span', 'client');
    const pill = node('span', 'pill');
    head.append(client, pill);
    const message = node('p', 'message');
    message.dataset.field = 'binding_message';
    const hint = node('p', 'hint', 'Check that your agent shows the same code.');
    const dl = node('dl');
    const field = (label, name) => {
      const dd = node('dd');
      dd.dataset.field = name;
      dl.append(node('dt', null, label), dd);
      return dd;
    };
    const fields = {
      client, pill, message, hint,
      requester: field('Requested by', 'client'),
      scope: field('Access', 'scope'),
      asked: field('Asked at', 'created'),
      expiry: field('Expires', 'expiry'),
    };
    const actions = node('div', 'actions');
    const approve = node('button', 'approve', 'Approve');
    const deny = node('button', 'deny', 'Deny');
    approve.type = 'button';
    deny.type = 'button';
    approve.dataset.action = 'approve';
    deny.dataset.action = 'deny';
    approve.addEventListener('click', () => decide(view.id, 'approve'));
    deny.addEventListener('click', () => decide(view.id, 'deny'));
    actions.append(approve, deny);
    const result = node('p', 'result');
    result.dataset.field = 'result';
    result.setAttribute('role', 'status');
    el.append(head, message, hint, dl, actions, result);
    Object.assign(fields, { actions, approve, deny, result });
    return { el, fields, view };
  }

  function fill(card, view) {
    const f = card.fields;
    card.view = view;
    const status = statusOf(view);
    card.el.dataset.status = status;
    card.el.className = 'card' + (status === 'pending' ? '' : ' decided');
    f.client.textContent = view.client_name || view.client_id;
    f.pill.textContent = PILL[status] || status;
    f.pill.className = 'pill ' + status;
    // The message exactly as sent (its textContent is the binding message);
    // a trailing confirmation code ("... Code: 123456", number matching)
    // set apart so it is easy to compare with the agent's screen.
    const message = typeof view.binding_message === 'string' ? view.binding_message : '';
    const match = /^(.*) (Code: [0-9]{4,8})$/s.exec(message);
    if (match) {
      f.message.replaceChildren(match[1], ' ', node('span', 'code', match[2]));
    } else {
      f.message.textContent = message || 'No binding message: the agent did not say what this is for.';
    }
    f.message.className = message ? 'message' : 'message none';
    f.hint.hidden = !match || status !== 'pending';
    f.requester.textContent = view.client_id;
    f.scope.textContent = view.scope || '(none)';
    f.asked.textContent = clock(view.created_at);
    f.expiry.textContent = status === 'pending'
      ? 'in ' + countdown(view.expires_at) + ' (at ' + clock(view.expires_at) + ')'
      : clock(view.expires_at);
    const local = outcomes.get(view.id);
    const working = local && local.status === 'working';
    f.actions.hidden = status !== 'pending' && status !== 'error';
    f.approve.disabled = working;
    f.deny.disabled = working;
    f.result.textContent = working ? local.text : resultText(view, status);
    f.result.className = 'result ' + status;
  }

  // Moves nodes only when the order changed, so a card being clicked stays put.
  function place(list, els) {
    const now = [...list.children];
    if (now.length !== els.length || now.some((e, i) => e !== els[i])) list.replaceChildren(...els);
  }

  function render(views) {
    const seen = new Set();
    for (const view of views) {
      seen.add(view.id);
      let card = cards.get(view.id);
      if (!card) {
        card = build(view);
        cards.set(view.id, card);
      }
      fill(card, view);
    }
    for (const [id, card] of cards) {
      if (!seen.has(id)) {
        card.el.remove();
        cards.delete(id);
      }
    }
    const seq = (c) => Number(String(c.view.id).replace(/^\D+/, '')) || 0;
    const newest = (a, b) => b.view.created_at - a.view.created_at || seq(b) - seq(a);
    const all = [...cards.values()].sort(newest);
    const pending = all.filter((c) => c.el.dataset.status === 'pending' || c.el.dataset.status === 'error');
    const decided = all.filter((c) => !pending.includes(c)).slice(0, KEEP_DECIDED);
    place(pendingList, pending.map((c) => c.el));
    place(decidedList, decided.map((c) => c.el));
    empty.hidden = pending.length > 0;
    decidedTitle.hidden = decided.length === 0;
  }

  async function decide(id, action) {
    const card = cards.get(id);
    outcomes.set(id, { status: 'working', text: action === 'approve' ? 'Approving…' : 'Denying…' });
    if (card) fill(card, card.view);
    let status;
    let text;
    try {
      const res = await fetch('/test/ciba/' + encodeURIComponent(id) + '/' + action, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{}',
        cache: 'no-store',
      });
      const body = await res.json().catch(() => ({}));
      const at = clock(nowSecs());
      if (res.ok) {
        status = body.status;
        text = (status === 'approved' ? 'Approved at ' + at + '. The agent may go on.'
          : 'Denied at ' + at + '. The agent is refused.');
      } else if (res.status === 409) {
        status = (body.request && body.request.status) || 'error';
        text = 'Already answered: ' + status + '.';
      } else if (res.status === 410) {
        status = 'expired';
        text = 'Too late: the request expired before your answer.';
      } else {
        status = 'error';
        text = 'Could not ' + action + ': ' + (body.error_description || body.error || ('HTTP ' + res.status)) + '.';
      }
    } catch (err) {
      status = 'error';
      text = 'Could not ' + action + ': the IdP did not answer.';
    }
    outcomes.set(id, { status, text });
    if (card) fill(card, card.view);
    refresh();
  }

  let timer;
  async function refresh() {
    clearTimeout(timer);
    try {
      const res = await fetch('/test/ciba/pending?all=1&sub=' + encodeURIComponent(sub), { cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      render(await res.json());
      updated.textContent = 'Updated ' + clock(nowSecs());
      updated.className = '';
    } catch (err) {
      updated.textContent = 'The IdP is not answering; retrying…';
      updated.className = 'offline';
    }
    timer = setTimeout(refresh, 1000);
  }
  refresh();
})();
`;

function page({ nonce, title, body, sub, refreshSecs }) {
  const meta = refreshSecs ? `\n<meta http-equiv="refresh" content="${refreshSecs}">` : '';
  const data = sub === undefined ? '' : ` data-sub="${escapeHtml(sub)}"`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">${meta}
<title>${escapeHtml(title)}</title>
<link rel="icon" href="data:,">
<style nonce="${nonce}">${STYLE}</style>
</head>
<body${data}>
<main>
${body}
</main>
</body>
</html>
`;
}

/** The device of one user. */
export function renderDevicePage({ nonce, user, issuer }) {
  const name = user.name || user.username || user.sub;
  const first = name.split(' ')[0];
  const ids = [user.sub, user.email].filter(Boolean).map(escapeHtml).join(' · ');
  const body = `<p class="brand">Tether test device</p>
<h1>${escapeHtml(name)}</h1>
<p class="who">${ids}</p>
<p class="intro">This page plays ${escapeHtml(first)}'s phone. When an agent needs approval for a risky action,
Tether asks here (OpenID CIBA). Read the message, check that the code matches the one your agent shows,
then approve or deny.</p>
<section aria-labelledby="pending-title">
<h2 id="pending-title">Waiting for you</h2>
<div id="pending" aria-live="polite"></div>
<p id="empty" class="empty">Nothing to approve right now. New requests appear here by themselves.</p>
</section>
<section aria-labelledby="decided-title">
<h2 id="decided-title" hidden>Answered</h2>
<div id="decided"></div>
</section>
<footer><span>Test IdP ${escapeHtml(issuer)} · <a href="/device">other users</a></span><span id="updated">Loading…</span></footer>
<script nonce="${nonce}">${SCRIPT}</script>`;
  return page({ nonce, title: `Tether test device: ${name}`, body, sub: user.sub });
}

/** The list of users to pick a device from (refreshes every 5 s). */
export function renderChooser({ nonce, users, pendingCounts, unknownUser }) {
  const notice = unknownUser === undefined ? ''
    : `<p class="notice">No test user <b>${escapeHtml(unknownUser)}</b>. Pick one below.</p>\n`;
  const items = users.map((u) => {
    const count = pendingCounts.get(u.sub) || 0;
    const badge = count ? `<span class="pill pending">${count} waiting</span>` : '<span class="pill none">nothing waiting</span>';
    return `<li><a href="/device?user=${escapeHtml(encodeURIComponent(u.sub))}"><span><b>${escapeHtml(u.name || u.sub)}</b><br><span class="who">${escapeHtml(u.sub)}${u.email ? ` · ${escapeHtml(u.email)}` : ''}</span></span>${badge}</a></li>`;
  }).join('\n');
  const body = `<p class="brand">Tether test device</p>
<h1>Whose phone is this?</h1>
<p class="intro">Pick the user whose approval requests you want to answer.</p>
${notice}<ul class="users">
${items}
</ul>`;
  return page({ nonce, title: 'Tether test device', body, refreshSecs: 5 });
}
