// Tether test IdP: an OpenID Provider built on oidc-provider, for integration
// tests and the local stack. NOT for production use: it has test-only
// endpoints that log users in and approve CIBA requests without a human, and
// a device page (/device?user=<sub>) where a person plays the user's phone.
//
//   node server.js [config.json]
//
// Environment:
//   IDP_PORT             port to listen on (default 0 = a free port)
//   IDP_HOST             address to bind (default 127.0.0.1)
//   IDP_ISSUER           issuer URL (default http://127.0.0.1:<port>)
//   IDP_CONFIG           JSON config path (the first CLI argument wins)
//   IDP_KEYS_FILE        JWKS with private keys to sign with (default: a fresh
//                        ES256 key generated at startup)
//   IDP_LOG              silent | error | warn (default) | info | debug  (stderr)
//   IDP_EXIT_WITH_PARENT 1 = exit when the parent process goes away
//
// Stdout carries exactly one line, once listening:
//   {"ready":true,"issuer":"http://127.0.0.1:PORT","port":PORT}
// Everything else goes to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { pageHeaders, renderChooser, renderDevicePage } from './device-page.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------- logging --
// stdout is reserved for the ready line. oidc-provider prints its notices with
// console.info (stdout), so every console method is routed to stderr before
// the library is loaded.
const LEVELS = { silent: 0, error: 1, warn: 2, info: 3, debug: 4 };
const logLevel = LEVELS[(process.env.IDP_LOG || 'warn').toLowerCase()] ?? LEVELS.warn;

function log(level, ...args) {
  if (LEVELS[level] <= logLevel) {
    const line = args.map((a) => (typeof a === 'string' ? a : (a instanceof Error ? (a.stack || String(a)) : JSON.stringify(a)))).join(' ');
    process.stderr.write(`[idp] ${level}: ${line}\n`);
  }
}

console.log = (...args) => log('debug', ...args);
console.info = (...args) => log('debug', ...args);
console.debug = (...args) => log('debug', ...args);
console.warn = (...args) => {
  // Node 20 is below oidc-provider's supported LTS (22); the library works but
  // says so on every start. Not worth a warning on every test run.
  if (typeof args[0] === 'string' && args[0].includes('Unsupported runtime')) {
    log('debug', ...args);
  } else {
    log('warn', ...args);
  }
};
console.error = (...args) => log('error', ...args);

function fatal(message, err) {
  process.stderr.write(`[idp] fatal: ${message}${err ? `: ${err.stack || err}` : ''}\n`);
  process.exit(1);
}

let Provider;
let errors;
let interactionPolicy;
try {
  ({ default: Provider, errors, interactionPolicy } = await import('oidc-provider'));
} catch (err) {
  fatal(`cannot load oidc-provider (run "npm ci" in ${HERE})`, err);
}

// ----------------------------------------------------------- configuration --
function readJson(file, what) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    fatal(`cannot read ${what} ${file}`, err);
  }
  return undefined;
}

const defaultConfig = readJson(path.join(HERE, 'default-config.json'), 'built-in config');
const configPath = process.argv[2] || process.env.IDP_CONFIG;
// Top-level keys of the given file replace the defaults' keys (a file with
// "users" replaces all users; "ttl" is merged key by key).
const fileConfig = configPath ? readJson(configPath, 'config') : {};
const config = {
  ...defaultConfig,
  ...fileConfig,
  ttl: { ...defaultConfig.ttl, ...(fileConfig.ttl || {}) },
};

const port = Number(process.env.IDP_PORT ?? config.port ?? 0);
const host = process.env.IDP_HOST || config.host || '127.0.0.1';
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  fatal(`invalid IDP_PORT ${process.env.IDP_PORT}`);
}

// Test switch: an `interval` for CIBA backchannel responses (oidc-provider
// never sends one). Absent by default, as in the library.
const cibaInterval = config.cibaInterval === undefined ? undefined : Number(config.cibaInterval);
if (cibaInterval !== undefined && !(Number.isInteger(cibaInterval) && cibaInterval >= 1 && cibaInterval <= 3600)) {
  fatal(`invalid cibaInterval ${JSON.stringify(config.cibaInterval)}: whole seconds, 1 - 3600`);
}

// ------------------------------------------------------------------ users --
const users = new Map();
for (const u of config.users || []) {
  if (!u.sub) fatal('every user needs a "sub"');
  users.set(u.sub, u);
}

function findUser(hint) {
  if (typeof hint !== 'string' || !hint) return undefined;
  if (users.has(hint)) return users.get(hint);
  const lower = hint.toLowerCase();
  for (const u of users.values()) {
    if ((u.email && u.email.toLowerCase() === lower) || (u.username && u.username.toLowerCase() === lower)) {
      return u;
    }
  }
  return undefined;
}

const STANDARD_CLAIMS = ['name', 'given_name', 'family_name', 'preferred_username', 'email', 'email_verified', 'groups', 'department'];

function userClaims(u) {
  const out = { sub: u.sub };
  for (const c of STANDARD_CLAIMS) {
    if (u[c] !== undefined) out[c] = u[c];
  }
  if (out.preferred_username === undefined && u.username) out.preferred_username = u.username;
  if (out.email !== undefined && out.email_verified === undefined) out.email_verified = true;
  for (const [k, v] of Object.entries(u.claims || {})) out[k] = v;
  return out;
}

// ------------------------------------------------------------------- keys --
function jwkThumbprint(jwk) {
  const members = {
    EC: ['crv', 'kty', 'x', 'y'],
    RSA: ['e', 'kty', 'n'],
    OKP: ['crv', 'kty', 'x'],
  }[jwk.kty];
  const json = JSON.stringify(Object.fromEntries(members.map((m) => [m, jwk[m]])));
  return crypto.createHash('sha256').update(json).digest('base64url');
}

function loadKeys() {
  if (process.env.IDP_KEYS_FILE) {
    const jwks = readJson(process.env.IDP_KEYS_FILE, 'keys file');
    if (!Array.isArray(jwks?.keys) || !jwks.keys.length || !jwks.keys.every((k) => k.d)) {
      fatal('IDP_KEYS_FILE must be a JWKS ({"keys":[...]}) of private keys');
    }
    return jwks;
  }
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  jwk.kid = jwkThumbprint(jwk);
  jwk.alg = 'ES256';
  jwk.use = 'sig';
  return { keys: [jwk] };
}

function algFor(jwk) {
  if (jwk.alg) return jwk.alg;
  if (jwk.kty === 'EC') return { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' }[jwk.crv];
  if (jwk.kty === 'OKP') return 'EdDSA';
  return 'RS256';
}

const jwks = loadKeys();
const signingAlg = algFor(jwks.keys[0]);

// ---------------------------------------------------------------- clients --
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);
function isLoopback(hostname) {
  return LOOPBACK_HOSTS.has(hostname) || /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

// oidc-provider only accepts https backchannel_client_notification_endpoint
// values, and its fetch refuses loopback/private addresses (SSRF protection).
// Tests run plain-http listeners on 127.0.0.1, so an http loopback endpoint in
// the config is registered under its https spelling, and the `fetch` option
// below sends the notification to the real http target instead.
const pingTargets = new Map(); // registered (https) URL -> actual URL
const pingClientEndpoint = new Map(); // client_id -> registered URL

function registeredPingUrl(clientId, url) {
  const u = new URL(url);
  if (u.protocol === 'http:' && isLoopback(u.hostname)) {
    // a per-client marker keeps two clients' runtime overrides apart
    const registered = new URL(url);
    registered.protocol = 'https:';
    registered.searchParams.set('tether_test_idp_client', clientId);
    return registered.href;
  }
  return u.href;
}

const clients = (config.clients || []).map((c) => {
  const meta = { ...c };
  if (meta.backchannel_client_notification_endpoint) {
    const registered = registeredPingUrl(meta.client_id, meta.backchannel_client_notification_endpoint);
    pingTargets.set(registered, new URL(meta.backchannel_client_notification_endpoint).href);
    pingClientEndpoint.set(meta.client_id, registered);
    meta.backchannel_client_notification_endpoint = registered;
  }
  return meta;
});

async function providerFetch(url, options) {
  const href = String(url);
  const target = new URL(pingTargets.get(href) ?? href);
  if (isLoopback(target.hostname)) {
    // allow loopback: drop oidc-provider's SSRF-protecting dispatcher
    const { dispatcher, ...rest } = options;
    log('debug', `fetch ${target.href} (loopback)`);
    return globalThis.fetch(target.href, rest);
  }
  return globalThis.fetch(target.href, options);
}

// ------------------------------------------------------------ CIBA device --
const CIBA_GRANT = 'urn:openid:params:grant-type:ciba';

// Pending CIBA requests, as seen by the "authentication device".
const cibaRequests = new Map(); // internal id -> record
let cibaCounter = 0;
const cibaWaiters = new Set();

function notifyCibaWaiters() {
  for (const w of cibaWaiters) w();
}

function cibaView(r) {
  return {
    id: r.id,
    auth_req_id: r.authReqId,
    status: r.status,
    client_id: r.clientId,
    ...(r.clientName ? { client_name: r.clientName } : {}),
    sub: r.sub,
    login_hint: r.loginHint,
    binding_message: r.bindingMessage,
    scope: r.scope,
    resource: r.resource,
    acr_values: r.acrValues,
    requested_expiry: r.requestedExpiry,
    created_at: r.createdAt,
    expires_at: r.expiresAt,
    ...(r.error ? { error: r.error, error_description: r.errorDescription } : {}),
    ...(r.notify ? { notify: r.notify } : {}),
    ...(r.approvedBy ? { approved_by: r.approvedBy } : {}),
    ...(r.decidedAt ? { decided_at: r.decidedAt } : {}),
    slow_down_remaining: r.slowDown,
    polls: r.polls,
  };
}

function findCibaRecord(id) {
  if (cibaRequests.has(id)) return cibaRequests.get(id);
  for (const r of cibaRequests.values()) {
    if (r.authReqId === id) return r;
  }
  return undefined;
}

function pruneCiba() {
  // keep the map bounded: drop decided/expired entries older than 10 min
  const cutoff = Math.floor(Date.now() / 1000) - 600;
  for (const [id, r] of cibaRequests) {
    if (r.expiresAt < cutoff) cibaRequests.delete(id);
  }
}

// ---------------------------------------------------------------- adapter --
// The default in-memory adapter keeps at most 1000 entries (then forgets the
// oldest, e.g. pending CIBA requests). Same adapter, larger store.
let adapter;
try {
  const { default: MemoryAdapter } = await import('oidc-provider/lib/adapters/memory_adapter.js');
  const { default: LRU } = await import('oidc-provider/lib/helpers/lru.js');
  const store = new LRU({ maxSize: Number(config.storeMaxEntries) || 100000 });
  const clockTolerance = 15;
  adapter = (model) => new MemoryAdapter(model, store, clockTolerance);
} catch (err) {
  log('warn', 'using the default memory adapter (1000 entries)', err.message);
}

// --------------------------------------------------------------- provider --
const resources = config.resources || {};
const ttl = config.ttl;

function resourceFor(indicator) {
  return resources[indicator];
}

const policy = interactionPolicy.base();
// A session for alice must not answer an authorization request that names
// bob in login_hint: ask the (automatic) login again.
policy.get('login').checks.add(new interactionPolicy.Check(
  'login_hint_mismatch',
  'login_hint names a different user than the session',
  (ctx) => {
    const { oidc } = ctx;
    const hint = oidc.params.login_hint;
    if (!hint || !oidc.session.accountId) return interactionPolicy.Check.NO_NEED_TO_PROMPT;
    const u = findUser(hint);
    return u && u.sub !== oidc.session.accountId
      ? interactionPolicy.Check.REQUEST_PROMPT
      : interactionPolicy.Check.NO_NEED_TO_PROMPT;
  },
));

let issuer; // set once listening

function buildProvider() {
  const maxBinding = Number(config.bindingMessageMaxLength) || 100;
  const accessTokenClaims = config.accessTokenClaims || [];

  const provider = new Provider(issuer, {
    ...(adapter ? { adapter } : {}),
    clients,
    jwks,
    findAccount(ctx, sub) {
      const u = users.get(sub);
      if (!u) return undefined;
      return {
        accountId: sub,
        claims() {
          return userClaims(u);
        },
      };
    },
    claims: {
      openid: ['sub'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username', 'groups', 'department'],
      email: ['email', 'email_verified'],
    },
    // put the scope's claims into ID tokens too (not only userinfo): tests use
    // ID tokens as subject tokens and check their claims
    conformIdTokenClaims: false,
    clientDefaults: {
      grant_types: ['authorization_code'],
      id_token_signed_response_alg: signingAlg,
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    cookies: {
      keys: [crypto.randomBytes(32).toString('base64url')],
    },
    clientBasedCORS: () => false,
    interactions: {
      policy,
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    pkce: {
      required: () => true,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      userinfo: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client, oneOf) => {
          if (oneOf) return oneOf;
          return config.defaultResource || undefined;
        },
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => {
          const rs = resourceFor(indicator);
          if (!rs) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
          return {
            audience: rs.audience || indicator,
            scope: rs.scope || '',
            accessTokenTTL: rs.accessTokenTTL || ttl.AccessToken,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: signingAlg } },
          };
        },
      },
      ciba: {
        enabled: true,
        deliveryModes: ['poll', 'ping'],
        processLoginHint: (ctx, loginHint) => findUser(loginHint)?.sub,
        processLoginHintToken: () => {
          throw new errors.InvalidRequest('login_hint_token is not supported by the test IdP; use login_hint or id_token_hint');
        },
        validateBindingMessage: (ctx, bindingMessage) => {
          if (bindingMessage === undefined) return;
          // a short human sentence: printable, no control characters
          if (typeof bindingMessage !== 'string' || bindingMessage.length < 1
            || bindingMessage.length > maxBinding || /\p{Cc}/u.test(bindingMessage)) {
            throw new errors.InvalidBindingMessage(`binding_message must be 1 - ${maxBinding} printable characters`);
          }
        },
        validateRequestContext: () => {},
        verifyUserCode: () => {},
        triggerAuthenticationDevice: (ctx, request, account, client) => {
          pruneCiba();
          cibaCounter += 1;
          const id = `ciba-${cibaCounter}`;
          const now = Math.floor(Date.now() / 1000);
          const { params } = request;
          cibaRequests.set(id, {
            id,
            authReqId: request.jti,
            status: 'pending',
            clientId: client.clientId,
            clientName: client.clientName,
            sub: account.accountId,
            loginHint: params.login_hint,
            bindingMessage: params.binding_message,
            scope: request.scope,
            resource: request.resource,
            acrValues: params.acr_values,
            requestedExpiry: params.requested_expiry === undefined ? undefined : Number(params.requested_expiry),
            // ping clients: shown only by GET /test/ciba/:id, so a test can
            // send a genuine ping before the user decides
            notificationToken: params.client_notification_token,
            createdAt: now,
            expiresAt: request.exp ?? now + request.expiration,
            slowDown: 0,
            polls: [],
          });
          log('info', `ciba request ${id} for ${account.accountId} from ${client.clientId}`);
          notifyCibaWaiters();
        },
      },
    },
    extraTokenClaims: (ctx, token) => {
      if (!token.accountId) return undefined;
      const u = users.get(token.accountId);
      if (!u) return undefined;
      const claims = userClaims(u);
      const out = {};
      for (const c of accessTokenClaims) {
        if (claims[c] !== undefined) out[c] = claims[c];
      }
      return out;
    },
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || ttl.AccessToken,
      AuthorizationCode: ttl.AuthorizationCode,
      BackchannelAuthenticationRequest: (ctx) => {
        const requested = ctx?.oidc?.params.requested_expiry;
        if (requested) return Math.min(ttl.BackchannelAuthenticationRequest, Number(requested));
        return ttl.BackchannelAuthenticationRequest;
      },
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || ttl.ClientCredentials,
      DeviceCode: 600,
      Grant: ttl.Grant,
      IdToken: ttl.IdToken,
      Interaction: ttl.Interaction,
      RefreshToken: ttl.RefreshToken,
      Session: ttl.Session,
    },
    renderError: (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
    fetch: providerFetch,
  });

  // Test switches on the provider's own CIBA endpoints (README "Test
  // switches"): the configured `interval` in backchannel responses, `slow_down`
  // on demand, and a record of every token request per CIBA request. They act
  // after the provider has answered, so they never change a decision: only an
  // `authorization_pending` answer (nothing consumed) is turned into
  // `slow_down`.
  provider.use(async (ctx, next) => {
    const at = Date.now();
    await next();
    if (ctx.method !== 'POST') return;
    if (ctx.path === '/backchannel') {
      if (cibaInterval !== undefined && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
        ctx.body = { ...ctx.body, interval: cibaInterval };
      }
      return;
    }
    if (ctx.path !== '/token') return;
    const params = ctx.oidc?.params;
    if (params?.grant_type !== CIBA_GRANT || typeof params.auth_req_id !== 'string') return;
    const record = findCibaRecord(params.auth_req_id);
    if (!record) return;
    let result = ctx.status === 200 ? 'tokens' : (ctx.body?.error ?? `http ${ctx.status}`);
    if (result === 'authorization_pending' && record.slowDown > 0) {
      record.slowDown -= 1;
      ctx.body = { error: 'slow_down', error_description: 'polling too often (test IdP switch)' };
      result = 'slow_down';
    }
    if (record.polls.length < 1000) record.polls.push({ at_ms: at, result });
  });

  provider.on('server_error', (ctx, err) => log('error', 'server_error', err));
  provider.on('grant.error', (ctx, err) => log('debug', 'grant.error', `${err.error}: ${err.error_description}`));
  provider.on('authorization.error', (ctx, err) => log('debug', 'authorization.error', `${err.error}: ${err.error_description}`));
  provider.on('backchannel_authentication.error', (ctx, err) => log('debug', 'backchannel_authentication.error', `${err.error}: ${err.error_description}`));
  return provider;
}

// ------------------------------------------------------------------- http --
function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(data),
    'cache-control': 'no-store',
  });
  res.end(data);
}

// A JSON object body (empty means {}). Callers have already checked the
// content type (see crossSiteRefusal).
async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks).toString('utf8');
  if (!raw) return {};
  let body;
  try {
    body = JSON.parse(raw);
  } catch {
    throw Object.assign(new Error('body must be JSON'), { status: 400 });
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw Object.assign(new Error('body must be a JSON object'), { status: 400 });
  }
  return body;
}

// The test endpoints that change state (approve, deny...) are called by tests
// and by the device page's script, both with JSON. A page on another origin
// can make a browser send a "simple" cross-site POST (an HTML form:
// urlencoded, multipart or text/plain) without asking first, but not one
// with Content-Type application/json: that needs a CORS preflight, which
// this server never grants. So such a call must be JSON, and an Origin
// header, which browsers send on every POST, must be this IdP's own (DNS
// rebinding gives an attacker's page a foreign Origin too). Returns the
// refusal, or undefined.
function crossSiteRefusal(req) {
  const type = (req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') {
    return [415, { error: 'invalid_request', error_description: 'test endpoints that change state take Content-Type: application/json' }];
  }
  const origin = req.headers.origin;
  if (origin !== undefined && !ownOrigins(req).has(origin)) {
    return [403, { error: 'access_denied', error_description: 'cross-origin request refused' }];
  }
  return undefined;
}

// The issuer's origin, and the origin the request was addressed to when that
// is a loopback name (http://localhost:PORT for an issuer on 127.0.0.1). A
// Host header naming anything else is not trusted: it is what a DNS
// rebinding attack controls.
function ownOrigins(req) {
  const origins = new Set([new URL(issuer).origin]);
  const host = URL.parse(`http://${req.headers.host || ''}`);
  if (host && isLoopback(host.hostname)) origins.add(host.origin);
  return origins;
}

async function handleInteraction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session, grantId } = details;

  if (prompt.name === 'login') {
    const hint = params.login_hint || config.defaultUser;
    const user = findUser(hint);
    if (!user) {
      log('info', `interaction: unknown test user ${hint}`);
      return provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'unknown test user',
      }, { mergeWithLastSubmission: false });
    }
    log('debug', `interaction: log in ${user.sub}`);
    if (session?.accountId && session.accountId !== user.sub) {
      // The browser session belongs to someone else. oidc-provider would
      // answer with an auto-submitting logout form (needs JavaScript-free
      // form posting, which HTTP clients in tests do not do). Detach the
      // interaction from that session and drop the session cookie instead, so
      // the resumed request starts a fresh session for the hinted user.
      delete details.session;
      await details.save(details.exp - Math.floor(Date.now() / 1000));
      const name = provider.cookieName('session');
      const gone = 'path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly; samesite=lax';
      res.setHeader('set-cookie', [`${name}=; ${gone}`, `${name}.sig=; ${gone}`]);
    }
    return provider.interactionFinished(req, res, {
      login: { accountId: user.sub, amr: ['pwd'] },
    }, { mergeWithLastSubmission: false });
  }

  if (prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details || {};
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const savedId = await grant.save();
    const consent = grantId ? {} : { grantId: savedId };
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }

  return provider.interactionFinished(req, res, {
    error: 'access_denied',
    error_description: `the test IdP cannot handle prompt ${prompt.name}`,
  }, { mergeWithLastSubmission: false });
}

function matchesFilter(r, q) {
  for (const key of ['sub', 'client_id', 'login_hint', 'status']) {
    const want = q.get(key);
    if (want !== null && cibaView(r)[key] !== want) return false;
  }
  return true;
}

function listCiba(q) {
  const all = q.get('all') === '1' || q.get('all') === 'true' || q.has('status');
  const now = Math.floor(Date.now() / 1000);
  return [...cibaRequests.values()]
    .filter((r) => all || (r.status === 'pending' && r.expiresAt > now))
    .filter((r) => matchesFilter(r, q))
    .map(cibaView);
}

async function waitForCiba(q, waitMs) {
  let list = listCiba(q);
  if (list.length || !waitMs) return list;
  return new Promise((resolve) => {
    let timer;
    const waiter = () => {
      list = listCiba(q);
      if (list.length) {
        clearTimeout(timer);
        cibaWaiters.delete(waiter);
        resolve(list);
      }
    };
    timer = setTimeout(() => {
      cibaWaiters.delete(waiter);
      resolve(listCiba(q));
    }, waitMs);
    cibaWaiters.add(waiter);
  });
}

async function decideCiba(provider, record, approve, body) {
  const request = await provider.BackchannelAuthenticationRequest.find(record.authReqId, { ignoreExpiration: true });
  if (!request) {
    return [404, { error: 'not_found', error_description: 'the IdP no longer holds this request (expired and evicted)' }];
  }
  if (request.isExpired) {
    return [410, { error: 'expired', error_description: 'the request expired before a decision', request: cibaView(record) }];
  }
  if (request.grantId || request.error) {
    return [409, { error: 'conflict', error_description: 'request already decided', request: cibaView(record) }];
  }

  let approver;
  if (approve && body.account !== undefined) {
    // Test switch: the person on the device approves with another account
    // (the ID token's `sub` is then that account, not the requested user).
    approver = findUser(body.account);
    if (!approver) {
      return [400, { error: 'invalid_request', error_description: '"account" names no configured user' }];
    }
  }

  let result;
  if (approve) {
    if (approver) {
      request.accountId = approver.sub;
      record.approvedBy = approver.sub;
    }
    const grant = new provider.Grant({ accountId: request.accountId, clientId: request.clientId });
    grant.addOIDCScope(request.scope);
    if (request.claims && Object.keys(request.claims).length) {
      const names = new Set();
      for (const part of Object.values(request.claims)) {
        if (part && typeof part === 'object') Object.keys(part).forEach((n) => names.add(n));
      }
      if (names.size) grant.addOIDCClaims([...names]);
    }
    const indicators = request.resource === undefined ? [] : [].concat(request.resource);
    for (const indicator of indicators) {
      const rs = resourceFor(indicator);
      const allowed = new Set((rs?.scope || '').split(' ').filter(Boolean));
      const scopes = request.scope.split(' ').filter((s) => allowed.has(s));
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    await grant.save();
    result = grant;
  } else {
    const description = typeof body.error_description === 'string' && body.error_description
      ? body.error_description
      : 'the end-user denied the request';
    result = new errors.AccessDenied(description);
    // backchannelResult() copies error_description to a field the token
    // endpoint does not read; errorDescription is the one that is returned.
    request.errorDescription = description;
    record.error = 'access_denied';
    record.errorDescription = description;
  }

  record.status = approve ? 'approved' : 'denied';
  record.decidedAt = Math.floor(Date.now() / 1000);
  try {
    await provider.backchannelResult(request, result, approve
      ? { authTime: Math.floor(Date.now() / 1000), amr: ['pwd'] }
      : {});
    if (pingClientEndpoint.has(record.clientId)) record.notify = 'sent';
  } catch (err) {
    // the decision is saved before the ping; only the notification failed
    record.notify = `failed: ${err.message}`;
    log('warn', `ciba ping for ${record.id} failed: ${err.message}`);
  }
  return [200, cibaView(record)];
}

async function handleTest(provider, req, res, url) {
  const p = url.pathname;
  const parts = p.split('/').filter(Boolean); // ['test', ...]

  if (!['GET', 'HEAD', 'OPTIONS'].includes(req.method)) {
    const refusal = crossSiteRefusal(req);
    if (refusal) {
      log('info', `refused ${req.method} ${p}: ${refusal[1].error_description}`);
      return sendJson(res, ...refusal);
    }
  }

  if (p === '/test/health' && (req.method === 'GET' || req.method === 'HEAD')) {
    return sendJson(res, 200, { status: 'ok', issuer });
  }

  if (p === '/test/users' && req.method === 'GET') {
    return sendJson(res, 200, [...users.values()].map(userClaims));
  }

  if (p === '/test/ciba/pending' && req.method === 'GET') {
    const waitMs = Math.min(Number(url.searchParams.get('wait_ms')) || 0, 30000);
    return sendJson(res, 200, await waitForCiba(url.searchParams, waitMs));
  }

  if (parts[0] === 'test' && parts[1] === 'ciba' && parts.length === 3 && req.method === 'GET') {
    const record = findCibaRecord(decodeURIComponent(parts[2]));
    if (!record) return sendJson(res, 404, { error: 'not_found' });
    const token = record.notificationToken ? { client_notification_token: record.notificationToken } : {};
    return sendJson(res, 200, { ...cibaView(record), ...token });
  }

  if (parts[0] === 'test' && parts[1] === 'ciba' && parts.length === 4
    && parts[3] === 'slow-down' && req.method === 'POST') {
    const body = await readBody(req);
    const record = findCibaRecord(decodeURIComponent(parts[2]));
    if (!record) return sendJson(res, 404, { error: 'not_found' });
    const count = body.count === undefined ? 1 : Number(body.count);
    if (!Number.isInteger(count) || count < 0 || count > 100) {
      return sendJson(res, 400, { error: 'invalid_request', error_description: '"count" must be a whole number, 0 - 100' });
    }
    record.slowDown = count;
    return sendJson(res, 200, cibaView(record));
  }

  if (parts[0] === 'test' && parts[1] === 'ciba' && parts.length === 4
    && (parts[3] === 'approve' || parts[3] === 'deny') && req.method === 'POST') {
    const body = await readBody(req);
    const record = findCibaRecord(decodeURIComponent(parts[2]));
    if (!record) return sendJson(res, 404, { error: 'not_found' });
    const [status, out] = await decideCiba(provider, record, parts[3] === 'approve', body);
    return sendJson(res, status, out);
  }

  if (parts[0] === 'test' && parts[1] === 'clients' && parts.length === 4
    && parts[3] === 'notification-endpoint' && (req.method === 'PUT' || req.method === 'POST')) {
    const clientId = decodeURIComponent(parts[2]);
    const registered = pingClientEndpoint.get(clientId);
    if (!registered) return sendJson(res, 404, { error: 'not_found', error_description: 'no such ping client' });
    const body = await readBody(req);
    const target = URL.parse(body.url || '');
    if (!target || !['http:', 'https:'].includes(target.protocol)) {
      return sendJson(res, 400, { error: 'invalid_request', error_description: 'body needs "url": an http(s) URL' });
    }
    pingTargets.set(registered, target.href);
    return sendJson(res, 200, { client_id: clientId, url: target.href });
  }

  return sendJson(res, 404, { error: 'not_found' });
}

// The device page (device-page.js): GET /device?user=<sub, username or
// email> is that user's phone; GET /device lists the users.
function handleDevice(req, res, url) {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' });
    res.end();
    return;
  }
  const nonce = crypto.randomBytes(16).toString('base64');
  const wanted = url.searchParams.get('user');
  const user = wanted ? findUser(wanted) : undefined;
  let status = 200;
  let body;
  if (user) {
    body = renderDevicePage({ nonce, user, issuer });
  } else {
    if (wanted) status = 404;
    const pendingCounts = new Map();
    for (const r of listCiba(new URLSearchParams())) {
      pendingCounts.set(r.sub, (pendingCounts.get(r.sub) || 0) + 1);
    }
    body = renderChooser({
      nonce, users: [...users.values()], pendingCounts, unknownUser: wanted || undefined,
    });
  }
  res.writeHead(status, pageHeaders(nonce, body));
  res.end(req.method === 'HEAD' ? undefined : body);
}

// ------------------------------------------------------------------- main --
let provider;
let providerCallback;

const server = http.createServer(async (req, res) => {
  if (!providerCallback) {
    sendJson(res, 503, { error: 'starting' });
    return;
  }
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname.startsWith('/interaction/')) {
      await handleInteraction(provider, req, res);
      return;
    }
    if (url.pathname.startsWith('/test/') && config.testEndpoints !== false) {
      await handleTest(provider, req, res, url);
      return;
    }
    if (url.pathname === '/device' && config.testEndpoints !== false) {
      handleDevice(req, res, url);
      return;
    }
    providerCallback(req, res);
  } catch (err) {
    if (res.headersSent) {
      res.destroy(err);
      return;
    }
    if (err instanceof errors.OIDCProviderError) {
      sendJson(res, err.statusCode || 400, { error: err.error, error_description: err.error_description });
      return;
    }
    const status = err.status || 500;
    if (status >= 500) log('error', 'request failed', err);
    sendJson(res, status, { error: status >= 500 ? 'server_error' : 'invalid_request', error_description: err.message });
  }
});

server.on('error', (err) => fatal('server error', err));

server.listen(port, host, async () => {
  const actualPort = server.address().port;
  issuer = process.env.IDP_ISSUER || config.issuer || `http://127.0.0.1:${actualPort}`;
  try {
    provider = buildProvider();
  } catch (err) {
    fatal('invalid provider configuration', err);
  }
  // static clients are only validated on first use: fail fast instead
  for (const c of clients) {
    try {
      // eslint-disable-next-line no-await-in-loop
      if (!await provider.Client.find(c.client_id)) throw new Error('not found');
    } catch (err) {
      fatal(`invalid client ${c.client_id}: ${err.error_description || err.message}`);
    }
  }
  providerCallback = provider.callback();
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, port: actualPort })}\n`);
  log('info', `listening on ${host}:${actualPort}, issuer ${issuer}`);
});

function shutdown(signal) {
  log('info', `${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

if (process.env.IDP_EXIT_WITH_PARENT === '1') {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) {
      log('info', 'parent process exited: shutting down');
      process.exit(0);
    }
  }, 500).unref();
}
