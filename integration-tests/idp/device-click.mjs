// Plays the user's phone in a real browser: opens the test IdP's device page
// in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core;
// no browser is ever downloaded), waits for one CIBA request to appear,
// clicks Approve or Deny, and waits for the page to show the outcome.
//
//   node device-click.mjs <page-url> <approve|deny> <request> [--screenshot FILE] [--timeout SECS]
//
//   <page-url>  the device page, e.g. http://127.0.0.1:PORT/device?user=alice
//   <request>   which request: its auth_req_id, its id on the IdP (ciba-N),
//               or a piece of its binding message (must match exactly one)
//   --screenshot FILE  a PNG of the whole page once the outcome shows
//   --timeout SECS     for everything (default 30)
//
// Prints one JSON line on stdout with what the page showed for the request
// ({id, auth_req_id, status, client, client_id, binding_message, scope,
// expires, result}) and exits 0; on any failure prints "device-click: ..."
// on stderr and exits 1. A JavaScript dialog, an uncaught page error or a
// Content-Security-Policy violation on the page is a failure too: the page
// shows agent-chosen text, and any of those means some of it ran as code.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  // playwright adds --headless (headless: true) and --user-data-dir (the
  // fresh directory below) itself
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const USAGE = 'usage: node device-click.mjs <page-url> <approve|deny> <request> [--screenshot FILE] [--timeout SECS]';

let context;
let userDataDir;

async function cleanup() {
  const closing = context?.close().catch(() => {});
  context = undefined;
  // never hang on a browser that does not close
  await Promise.race([closing, new Promise((r) => { setTimeout(r, 5000).unref(); })]);
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  userDataDir = undefined;
}

async function fail(message) {
  process.stderr.write(`device-click: ${message}\n`);
  await cleanup();
  process.exit(1);
}

function parseArgs(argv) {
  const positional = [];
  let screenshot;
  let timeoutSecs = 30;
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === '--screenshot') {
      screenshot = argv[i + 1];
      i += 1;
      if (!screenshot) return { error: '--screenshot needs a file' };
    } else if (a === '--timeout') {
      timeoutSecs = Number(argv[i + 1]);
      i += 1;
      if (!(Number.isFinite(timeoutSecs) && timeoutSecs > 0 && timeoutSecs <= 600)) {
        return { error: '--timeout must be 1 - 600 seconds' };
      }
    } else if (a.startsWith('--')) {
      return { error: `unknown option ${a}` };
    } else {
      positional.push(a);
    }
  }
  if (positional.length !== 3) return { error: 'expected three arguments' };
  const [pageUrl, action, request] = positional;
  const url = URL.parse(pageUrl);
  if (!url || !['http:', 'https:'].includes(url.protocol)) return { error: `not an http(s) URL: ${pageUrl}` };
  if (action !== 'approve' && action !== 'deny') return { error: `the action must be approve or deny, not ${action}` };
  if (!request.trim()) return { error: 'the request to click is empty' };
  return { url: url.href, action, request, screenshot, timeoutMs: timeoutSecs * 1000 };
}

const args = parseArgs(process.argv.slice(2));
if (args.error) {
  process.stderr.write(`device-click: ${args.error}\n${USAGE}\n`);
  process.exit(2);
}

try {
  fs.accessSync(CHROMIUM, fs.constants.X_OK);
} catch {
  await fail(`${CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium; integration-tests/run.sh test does it)`);
}

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (err) {
  await fail(`cannot load playwright-core (run "npm ci" in ${path.dirname(new URL(import.meta.url).pathname)}): ${err.message}`);
}

const deadline = Date.now() + args.timeoutMs;
const remaining = () => Math.max(1, deadline - Date.now());
const overall = setTimeout(() => { fail(`gave up after ${args.timeoutMs / 1000} s`); }, args.timeoutMs + 2000);

// What the page must never do: run text from a request as code.
const incidents = [];
function checkIncidents() {
  if (incidents.length) {
    return fail(`the page ran or tried to run injected code: ${incidents.join('; ')}`);
  }
  return undefined;
}

try {
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-device-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 440, height: 900 },
    deviceScaleFactor: 2,
    timeout: remaining(),
  });
} catch (err) {
  await fail(`cannot start ${CHROMIUM}: ${err.message}`);
}

const page = context.pages()[0] ?? await context.newPage();
page.on('dialog', (dialog) => {
  incidents.push(`a JavaScript ${dialog.type()} dialog (${JSON.stringify(dialog.message())})`);
  dialog.dismiss().catch(() => {});
});
page.on('pageerror', (err) => incidents.push(`an uncaught error (${err.message})`));
page.on('console', (msg) => {
  if (msg.type() === 'error' && /Content Security Policy/i.test(msg.text())) {
    incidents.push(`a Content-Security-Policy violation (${msg.text()})`);
  }
});

let response;
try {
  response = await page.goto(args.url, { waitUntil: 'load', timeout: remaining() });
} catch (err) {
  await fail(`cannot open ${args.url}: ${err.message}`);
}
if (!response || response.status() !== 200) {
  await fail(`${args.url} answered HTTP ${response?.status()} (a known user? test endpoints on?)`);
}

// Waits for the cards that match `request` (with their state) to appear.
let matches;
try {
  const handle = await page.waitForFunction(
    (request) => {
      const found = [...document.querySelectorAll('article.card')]
        .filter((c) => c.dataset.authReqId === request || c.dataset.id === request
          || (c.querySelector('[data-field="binding_message"]')?.textContent ?? '').includes(request))
        .map((c) => ({ id: c.dataset.id, status: c.dataset.status }));
      return found.length ? found : false;
    },
    args.request,
    { timeout: remaining(), polling: 100 },
  );
  matches = await handle.jsonValue();
} catch (err) {
  await checkIncidents();
  await fail(`no request matching ${JSON.stringify(args.request)} appeared on ${args.url} within ${args.timeoutMs / 1000} s`);
}
await checkIncidents();
if (matches.length > 1) {
  await fail(`${matches.length} requests match ${JSON.stringify(args.request)} (${matches.map((m) => m.id).join(', ')}): name one by its auth_req_id`);
}
const [{ id, status: before }] = matches;
if (before !== 'pending') {
  await fail(`request ${id} is ${before}, not waiting for an answer`);
}
if (!/^[\w-]+$/.test(id)) await fail(`unexpected request id ${JSON.stringify(id)}`);

const card = page.locator(`article.card[data-id="${id}"]`);
try {
  await card.locator(`button[data-action="${args.action}"]`).click({ timeout: remaining() });
} catch (err) {
  await fail(`cannot click ${args.action} on ${id}: ${err.message}`);
}

let outcome;
try {
  const handle = await page.waitForFunction(
    (cardId) => {
      const c = document.querySelector(`article.card[data-id="${cardId}"]`);
      const s = c?.dataset.status;
      return s && s !== 'pending' ? s : false;
    },
    id,
    { timeout: remaining(), polling: 100 },
  );
  outcome = await handle.jsonValue();
} catch (err) {
  await fail(`the page showed no outcome for ${id} after the click`);
}

const shown = await card.evaluate((c) => {
  const text = (name) => c.querySelector(`[data-field="${name}"]`)?.textContent ?? null;
  return {
    id: c.dataset.id,
    auth_req_id: c.dataset.authReqId,
    status: c.dataset.status,
    client: c.querySelector('.client')?.textContent ?? null,
    client_id: text('client'),
    binding_message: text('binding_message'),
    scope: text('scope'),
    expires: text('expiry'),
    result: text('result'),
  };
});

const expected = args.action === 'approve' ? 'approved' : 'denied';
if (outcome !== expected) {
  await fail(`after clicking ${args.action} on ${id} the page shows ${outcome}: ${shown.result}`);
}

if (args.screenshot) {
  try {
    await page.screenshot({ path: args.screenshot, fullPage: true, timeout: remaining() });
  } catch (err) {
    await fail(`cannot save the screenshot ${args.screenshot}: ${err.message}`);
  }
}
await checkIncidents();

clearTimeout(overall);
await cleanup();
process.stdout.write(`${JSON.stringify(shown)}\n`);
process.exit(0);
