// End-to-end smoke test of the test IdP. Starts server.js on a free port,
// runs every flow the Tether tests rely on, and exits 0 (all passed) or 1.
//
//   node smoke.mjs            (after `npm ci`)
//   IDP_SMOKE_VERBOSE=1 node smoke.mjs
//
// Uses only Node built-ins.

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const VERBOSE = process.env.IDP_SMOKE_VERBOSE === '1';
const API = 'https://tether.local/api';
const children = new Set();
const servers = new Set();

let failures = 0;
let passes = 0;

function ok(cond, what, extra) {
  if (cond) {
    passes += 1;
    if (VERBOSE) console.log(`  ok   ${what}`);
  } else {
    failures += 1;
    console.log(`  FAIL ${what}${extra === undefined ? '' : ` -- ${typeof extra === 'string' ? extra : JSON.stringify(extra)}`}`);
  }
  return cond;
}

function section(name) {
  console.log(`# ${name}`);
}

// ----------------------------------------------------------------- server --
function startIdp(env = {}, args = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(HERE, 'server.js'), ...args], {
      cwd: HERE,
      env: { ...process.env, IDP_PORT: '0', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(child);
    let out = '';
    let err = '';
    let ready = false;
    const timer = setTimeout(() => reject(new Error(`IdP did not become ready in 15 s; stderr: ${err}`)), 15000);
    child.stdout.on('data', (d) => {
      out += d;
      if (!ready && out.includes('\n')) {
        ready = true;
        clearTimeout(timer);
        const first = out.slice(0, out.indexOf('\n'));
        try {
          resolve({ child, info: JSON.parse(first), stdout: () => out, stderr: () => err });
        } catch (e) {
          reject(new Error(`first stdout line is not JSON: ${first}`));
        }
      }
    });
    child.stderr.on('data', (d) => {
      err += d;
      if (VERBOSE) process.stderr.write(d);
    });
    child.on('exit', (code) => {
      children.delete(child);
      if (!ready) {
        clearTimeout(timer);
        reject(new Error(`IdP exited with ${code}; stderr: ${err}`));
      }
    });
  });
}

function stopIdp(idp) {
  return new Promise((resolve) => {
    if (idp.child.exitCode !== null) return resolve(idp.child.exitCode);
    idp.child.on('exit', (code) => resolve(code));
    idp.child.kill('SIGTERM');
  });
}

// ------------------------------------------------------------------- http --
function basic(id, secret) {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

async function form(url, params, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(params),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text };
}

async function postJson(url, body) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body ?? {}),
  });
  return { status: res.status, json: await res.json().catch(() => undefined) };
}

async function getJson(url) {
  const res = await fetch(url);
  return { status: res.status, json: await res.json().catch(() => undefined) };
}

// A minimal cookie jar: enough for oidc-provider's cookies on one host.
class CookieJar {
  constructor() { this.cookies = new Map(); }

  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const i = pair.indexOf('=');
      const name = pair.slice(0, i).trim();
      const value = pair.slice(i + 1).trim();
      const expired = /expires=Thu, 01 Jan 1970/i.test(line) || /max-age=0/i.test(line);
      if (expired || value === '') this.cookies.delete(name); else this.cookies.set(name, value);
    }
  }

  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

// Follow redirects by hand (keeping cookies) until one leaves the IdP.
async function authorize(issuer, params, jar = new CookieJar()) {
  let url = `${issuer}/auth?${new URLSearchParams(params)}`;
  for (let hops = 0; hops < 15; hops += 1) {
    // eslint-disable-next-line no-await-in-loop
    const res = await fetch(url, { redirect: 'manual', headers: { cookie: jar.header() } });
    jar.store(res);
    await res.arrayBuffer();
    const location = res.headers.get('location');
    if (res.status < 300 || res.status >= 400 || !location) {
      return { status: res.status, hops, final: url };
    }
    const next = new URL(location, url);
    if (next.origin !== issuer) return { status: res.status, hops: hops + 1, redirect: next };
    url = next.href;
  }
  throw new Error('too many redirects');
}

// -------------------------------------------------------------------- jwt --
function decodeJwt(token) {
  const [h, p, s] = token.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url')),
    payload: JSON.parse(Buffer.from(p, 'base64url')),
    signingInput: `${h}.${p}`,
    signature: Buffer.from(s, 'base64url'),
  };
}

function verifyJwt(token, jwks) {
  const jwt = decodeJwt(token);
  const jwk = jwks.keys.find((k) => k.kid === jwt.header.kid);
  if (!jwk) return { ...jwt, valid: false, reason: 'unknown kid' };
  if (jwt.header.alg !== 'ES256') return { ...jwt, valid: false, reason: `alg ${jwt.header.alg}` };
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const valid = crypto.verify('sha256', Buffer.from(jwt.signingInput), { key, dsaEncoding: 'ieee-p1363' }, jwt.signature);
  return { ...jwt, valid };
}

function pkce() {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

// ---------------------------------------------------------- notify server --
function startNotifyListener() {
  return new Promise((resolve) => {
    const received = [];
    const waiters = [];
    const server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => { body += d; });
      req.on('end', () => {
        received.push({ method: req.method, url: req.url, headers: req.headers, body });
        res.statusCode = 204;
        res.end();
        waiters.splice(0).forEach((w) => w());
      });
    });
    servers.add(server);
    server.listen(0, '127.0.0.1', () => {
      resolve({
        server,
        url: `http://127.0.0.1:${server.address().port}/ciba/notify`,
        received,
        async next(timeoutMs = 5000) {
          if (received.length) return received.shift();
          await Promise.race([new Promise((r) => waiters.push(r)), sleep(timeoutMs)]);
          return received.shift();
        },
      });
    });
  });
}

// ------------------------------------------------------------------ flows --
async function checkDiscovery(issuer) {
  section('discovery and JWKS');
  const health = await fetch(`${issuer}/test/health`);
  ok(health.status === 200, 'GET /test/health is 200');

  const { status, json: d } = await getJson(`${issuer}/.well-known/openid-configuration`);
  ok(status === 200, 'discovery is 200');
  ok(d.issuer === issuer, 'discovery issuer equals the ready line issuer', d.issuer);
  for (const k of ['authorization_endpoint', 'token_endpoint', 'jwks_uri', 'userinfo_endpoint', 'backchannel_authentication_endpoint', 'introspection_endpoint', 'revocation_endpoint']) {
    ok(typeof d[k] === 'string' && d[k].startsWith(issuer), `discovery has ${k}`, d[k]);
  }
  ok(JSON.stringify(d.code_challenge_methods_supported) === '["S256"]', 'PKCE S256 only', d.code_challenge_methods_supported);
  ok(d.id_token_signing_alg_values_supported?.includes('ES256'), 'ES256 ID tokens supported');
  ok(['poll', 'ping'].every((m) => d.backchannel_token_delivery_modes_supported?.includes(m)), 'CIBA poll and ping advertised', d.backchannel_token_delivery_modes_supported);
  ok(d.grant_types_supported?.includes('urn:openid:params:grant-type:ciba') && d.grant_types_supported?.includes('client_credentials'), 'ciba and client_credentials grant types advertised', d.grant_types_supported);

  const jw = await getJson(d.jwks_uri);
  ok(jw.status === 200 && jw.json.keys.length >= 1, 'JWKS has a key');
  const k = jw.json.keys[0];
  ok(k.kty === 'EC' && k.crv === 'P-256' && k.alg === 'ES256' && k.use === 'sig' && typeof k.kid === 'string', 'JWKS key is an ES256 P-256 signing key with kid', k);
  ok(jw.json.keys.every((key) => key.d === undefined), 'JWKS publishes no private parts');
  return { discovery: d, jwks: jw.json };
}

async function checkClientCredentials(issuer, d, jwks) {
  section('client_credentials -> JWT access token (RFC 9068)');
  const auth = { authorization: basic('tether-agent-backend', 'tether-agent-backend-secret') };
  for (const withResource of [true, false]) {
    const label = withResource ? 'with resource' : 'default resource';
    const params = { grant_type: 'client_credentials', scope: 'hr:read agents:register' };
    if (withResource) params.resource = API;
    const r = await form(d.token_endpoint, params, auth);
    if (!ok(r.status === 200 && r.json?.access_token, `token endpoint 200 (${label})`, r.text)) continue;
    ok(r.json.token_type === 'Bearer', 'token_type Bearer', r.json.token_type);
    const at = verifyJwt(r.json.access_token, jwks);
    ok(at.header.typ === 'at+jwt', `header typ at+jwt (${label})`, at.header);
    ok(at.header.alg === 'ES256' && at.valid, 'ES256 signature verifies against JWKS', at.reason);
    ok(at.payload.iss === issuer, 'iss', at.payload.iss);
    ok(at.payload.aud === API, 'aud is the resource', at.payload.aud);
    ok(at.payload.sub === 'tether-agent-backend' && at.payload.client_id === 'tether-agent-backend', 'sub = client_id = tether-agent-backend', at.payload);
    ok(at.payload.scope === 'hr:read agents:register', 'scope', at.payload.scope);
    ok(typeof at.payload.jti === 'string' && at.payload.exp > at.payload.iat, 'jti, iat, exp');
  }
  const bad = await form(d.token_endpoint, { grant_type: 'client_credentials' }, { authorization: basic('tether-agent-backend', 'wrong') });
  ok(bad.status === 401 && bad.json?.error === 'invalid_client', 'wrong secret -> invalid_client', bad.text);
  const badTarget = await form(d.token_endpoint, { grant_type: 'client_credentials', resource: 'https://unknown.example/' }, auth);
  ok(badTarget.json?.error === 'invalid_target', 'unknown resource -> invalid_target', badTarget.text);
}

async function codeFlow(issuer, d, { user, port = 49152 + Math.floor(Math.random() * 10000), host = '127.0.0.1', jar, extra = {} } = {}) {
  const { verifier, challenge } = pkce();
  const state = crypto.randomBytes(8).toString('hex');
  const nonce = crypto.randomBytes(8).toString('hex');
  const redirectUri = `http://${host}:${port}/callback`;
  const params = {
    client_id: 'tether-cli',
    response_type: 'code',
    redirect_uri: redirectUri,
    scope: 'openid profile email hr:read hr:write',
    resource: API,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    state,
    nonce,
    ...(user ? { login_hint: user } : {}),
    ...extra,
  };
  const result = await authorize(issuer, params, jar);
  return { ...result, verifier, state, nonce, redirectUri };
}

async function checkAuthorizationCode(issuer, d, jwks) {
  section('authorization code + PKCE (non-interactive login)');
  const jar = new CookieJar();
  const flow = await codeFlow(issuer, d, { user: 'alice', jar });
  const redirect = flow.redirect;
  ok(redirect && redirect.href.startsWith(flow.redirectUri), 'ends at the loopback redirect_uri (any port)', flow);
  if (!redirect) return;
  ok(redirect.searchParams.get('state') === flow.state, 'state echoed');
  ok(redirect.searchParams.get('iss') === issuer, 'iss in the authorization response (RFC 9207)', redirect.searchParams.get('iss'));
  const code = redirect.searchParams.get('code');
  ok(!!code, 'code returned', redirect.href.replace(/code=[^&]+/, 'code=...'));

  const wrong = await form(d.token_endpoint, {
    grant_type: 'authorization_code', code, redirect_uri: flow.redirectUri, client_id: 'tether-cli', code_verifier: pkce().verifier,
  });
  ok(wrong.json?.error === 'invalid_grant', 'wrong code_verifier -> invalid_grant', wrong.text);

  // the failed attempt above does not consume the code... or does it? request a fresh one
  const flow2 = await codeFlow(issuer, d, { user: 'alice', jar });
  const code2 = flow2.redirect?.searchParams.get('code');
  ok(flow2.hops === 3, 'second login with the same cookie jar skips the login (consent stays: native client)', flow2.hops);
  const r = await form(d.token_endpoint, {
    grant_type: 'authorization_code', code: code2, redirect_uri: flow2.redirectUri, client_id: 'tether-cli', code_verifier: flow2.verifier,
  });
  if (!ok(r.status === 200 && r.json?.access_token && r.json?.id_token, 'code exchanged for access + ID token', r.text)) return;
  const at = verifyJwt(r.json.access_token, jwks);
  ok(at.header.typ === 'at+jwt' && at.valid, 'access token is a signed at+jwt', at.header);
  ok(at.payload.sub === 'alice' && at.payload.aud === API && at.payload.client_id === 'tether-cli', 'access token sub/aud/client_id', at.payload);
  ok(JSON.stringify(at.payload.groups) === '["hr"]' && at.payload.department === 'people', 'access token carries groups and department', at.payload);
  ok(at.payload.email === 'alice@tether.local', 'access token carries email', at.payload.email);
  const scopes = new Set((at.payload.scope || '').split(' '));
  ok(['openid', 'profile', 'email', 'hr:read', 'hr:write'].every((s) => scopes.has(s)), 'access token scope', at.payload.scope);
  ok(r.json.scope === at.payload.scope, 'token response scope matches', r.json.scope);

  const idt = verifyJwt(r.json.id_token, jwks);
  ok(idt.valid && idt.header.alg === 'ES256', 'ID token signature verifies (ES256)');
  ok(idt.payload.iss === issuer && idt.payload.aud === 'tether-cli' && idt.payload.sub === 'alice', 'ID token iss/aud/sub', idt.payload);
  ok(idt.payload.nonce === flow2.nonce, 'ID token nonce');
  ok(idt.payload.email === 'alice@tether.local' && idt.payload.name === 'Alice Anders'
    && JSON.stringify(idt.payload.groups) === '["hr"]' && idt.payload.department === 'people', 'ID token carries email/name/groups/department', idt.payload);

  const replay = await form(d.token_endpoint, {
    grant_type: 'authorization_code', code: code2, redirect_uri: flow2.redirectUri, client_id: 'tether-cli', code_verifier: flow2.verifier,
  });
  ok(replay.json?.error === 'invalid_grant', 'code reuse -> invalid_grant', replay.text);

  // switching users in the same cookie jar follows login_hint
  const bobFlow = await codeFlow(issuer, d, { user: 'bob', jar, host: 'localhost' });
  const bobCode = bobFlow.redirect?.searchParams.get('code');
  const rb = await form(d.token_endpoint, {
    grant_type: 'authorization_code', code: bobCode, redirect_uri: bobFlow.redirectUri, client_id: 'tether-cli', code_verifier: bobFlow.verifier,
  });
  const bobAt = rb.json?.access_token ? decodeJwt(rb.json.access_token).payload : {};
  ok(bobAt.sub === 'bob' && JSON.stringify(bobAt.groups) === '["engineering"]' && bobAt.department === 'engineering', 'login_hint=bob in the same cookie jar, localhost redirect -> bob', rb.text);

  // default user when there is no login_hint
  const def = await codeFlow(issuer, d, {});
  const defCode = def.redirect?.searchParams.get('code');
  const rd = await form(d.token_endpoint, {
    grant_type: 'authorization_code', code: defCode, redirect_uri: def.redirectUri, client_id: 'tether-cli', code_verifier: def.verifier,
  });
  ok(rd.json?.access_token && decodeJwt(rd.json.access_token).payload.sub === 'alice', 'no login_hint -> default user alice', rd.text);

  // refresh tokens: offline_access needs prompt=consent
  const off = await codeFlow(issuer, d, { user: 'alice', extra: { scope: 'openid offline_access hr:read', prompt: 'consent' } });
  const ro = await form(d.token_endpoint, {
    grant_type: 'authorization_code', code: off.redirect?.searchParams.get('code'), redirect_uri: off.redirectUri, client_id: 'tether-cli', code_verifier: off.verifier,
  });
  ok(!!ro.json?.refresh_token, 'offline_access + prompt=consent -> refresh_token', ro.text);
  if (ro.json?.refresh_token) {
    const rr = await form(d.token_endpoint, { grant_type: 'refresh_token', refresh_token: ro.json.refresh_token, client_id: 'tether-cli' });
    const rat = rr.json?.access_token ? verifyJwt(rr.json.access_token, jwks) : {};
    ok(rat.valid && rat.header.typ === 'at+jwt' && rat.payload.sub === 'alice' && rat.payload.department === 'people', 'refresh_token grant -> new at+jwt with claims', rr.text);
  }

  // negative cases
  const unknown = await codeFlow(issuer, d, { user: 'mallory' });
  ok(unknown.redirect?.searchParams.get('error') === 'access_denied', 'unknown login_hint -> error=access_denied at redirect_uri', unknown.redirect?.href);

  const noPkce = await authorize(issuer, {
    client_id: 'tether-cli', response_type: 'code', redirect_uri: 'http://127.0.0.1:5555/callback', scope: 'openid', state: 's',
  });
  ok(noPkce.redirect?.searchParams.get('error') === 'invalid_request', 'missing PKCE -> invalid_request', noPkce.redirect?.href);

  const plain = await authorize(issuer, {
    client_id: 'tether-cli', response_type: 'code', redirect_uri: 'http://127.0.0.1:5555/callback', scope: 'openid', state: 's',
    code_challenge: 'a'.repeat(43), code_challenge_method: 'plain',
  });
  ok(plain.redirect?.searchParams.get('error') === 'invalid_request', 'PKCE plain -> invalid_request', plain.redirect?.href);

  const evil = await authorize(issuer, {
    client_id: 'tether-cli', response_type: 'code', redirect_uri: 'http://evil.example:5555/callback', scope: 'openid',
    code_challenge: pkce().challenge, code_challenge_method: 'S256',
  });
  ok(!evil.redirect && evil.status === 400, 'non-loopback redirect_uri refused without redirecting', evil);

  const wrongPath = await authorize(issuer, {
    client_id: 'tether-cli', response_type: 'code', redirect_uri: 'http://127.0.0.1:5555/other', scope: 'openid',
    code_challenge: pkce().challenge, code_challenge_method: 'S256',
  });
  ok(!wrongPath.redirect && wrongPath.status === 400, 'loopback redirect_uri with another path refused', wrongPath);
}

async function cibaStart(d, clientId, secret, params) {
  return form(d.backchannel_authentication_endpoint, { scope: 'openid', ...params }, { authorization: basic(clientId, secret) });
}

async function cibaToken(d, clientId, secret, authReqId) {
  return form(d.token_endpoint, { grant_type: 'urn:openid:params:grant-type:ciba', auth_req_id: authReqId }, { authorization: basic(clientId, secret) });
}

async function pendingFor(issuer, authReqId, query = '') {
  const r = await getJson(`${issuer}/test/ciba/pending${query}`);
  return r.json?.find((p) => p.auth_req_id === authReqId);
}

async function checkCibaPoll(issuer, d, jwks) {
  section('CIBA poll');
  const C = ['tether-ciba', 'tether-ciba-secret'];
  const message = 'Offboard employee 1042?';
  const start = await cibaStart(d, ...C, { login_hint: 'alice', binding_message: message, scope: 'openid hr:offboard' });
  if (!ok(start.status === 200 && start.json?.auth_req_id, 'POST /backchannel -> auth_req_id', start.text)) return;
  const { auth_req_id: id, expires_in: expiresIn } = start.json;
  ok(expiresIn > 0, 'expires_in', expiresIn);
  ok(start.json.interval === undefined, 'no interval in the response (known quirk)', start.json);

  const pendingTok = await cibaToken(d, ...C, id);
  ok(pendingTok.status === 400 && pendingTok.json?.error === 'authorization_pending', 'token before approval -> authorization_pending', pendingTok.text);

  const pending = await pendingFor(issuer, id, '?sub=alice');
  ok(pending && pending.binding_message === message && pending.client_id === 'tether-ciba' && pending.sub === 'alice'
    && pending.login_hint === 'alice' && pending.scope.includes('hr:offboard') && pending.status === 'pending', 'pending request listed with binding_message, client, sub, scope', pending);
  const single = await getJson(`${issuer}/test/ciba/${pending?.id}`);
  ok(single.status === 200 && single.json.auth_req_id === id, 'GET /test/ciba/:id');

  const approve = await postJson(`${issuer}/test/ciba/${pending?.id}/approve`);
  ok(approve.status === 200 && approve.json?.status === 'approved', 'approve -> 200', approve.json);
  ok(!(await pendingFor(issuer, id)), 'approved request no longer pending');
  const again = await postJson(`${issuer}/test/ciba/${pending?.id}/approve`);
  ok(again.status === 409, 'second decision -> 409', again);

  const tok = await cibaToken(d, ...C, id);
  if (ok(tok.status === 200 && tok.json?.id_token && tok.json?.access_token, 'token after approval -> tokens', tok.text)) {
    const idt = verifyJwt(tok.json.id_token, jwks);
    ok(idt.valid && idt.payload.sub === 'alice' && idt.payload.aud === 'tether-ciba' && idt.payload.iss === issuer, 'CIBA ID token: valid, sub=alice, aud=client', idt.payload);
    ok(typeof idt.payload.urn_openid_params_jwt_claim_auth_req_id === 'string' || idt.payload.urn_openid_params_jwt_claim_auth_req_id === undefined, 'ID token shape');
    const at = verifyJwt(tok.json.access_token, jwks);
    ok(at.header.typ === 'at+jwt' && at.valid && at.payload.sub === 'alice' && at.payload.aud === API, 'CIBA access token is an at+jwt for the default resource', at.payload);
    ok((at.payload.scope || '').split(' ').includes('hr:offboard'), 'CIBA access token scope has hr:offboard', at.payload.scope);
  }
  const reuse = await cibaToken(d, ...C, id);
  ok(reuse.json?.error === 'invalid_grant', 'auth_req_id reuse -> invalid_grant', reuse.text);

  // long-poll for the next pending request
  const waiting = getJson(`${issuer}/test/ciba/pending?sub=carol&wait_ms=5000`);
  await sleep(100);
  const sc = await cibaStart(d, ...C, { login_hint: 'carol', binding_message: 'Grant Bob access to payroll?' });
  const waited = await waiting;
  ok(waited.json?.length === 1 && waited.json[0].auth_req_id === sc.json?.auth_req_id, 'GET /test/ciba/pending?wait_ms long-polls for a new request', waited.json);
  await postJson(`${issuer}/test/ciba/${waited.json?.[0]?.id}/deny`);

  // approve by auth_req_id (instead of the internal id) also works
  const s2 = await cibaStart(d, ...C, { login_hint: 'bob@tether.local' });
  const ap2 = await postJson(`${issuer}/test/ciba/${encodeURIComponent(s2.json?.auth_req_id)}/approve`);
  const t2 = await cibaToken(d, ...C, s2.json?.auth_req_id);
  ok(ap2.status === 200 && t2.json?.id_token && decodeJwt(t2.json.id_token).payload.sub === 'bob', 'login_hint by email, approve by auth_req_id -> sub=bob', t2.text);

  section('CIBA deny');
  const s3 = await cibaStart(d, ...C, { login_hint: 'alice', binding_message: 'Delete payroll for March 2025?' });
  const p3 = await pendingFor(issuer, s3.json?.auth_req_id);
  const deny = await postJson(`${issuer}/test/ciba/${p3?.id}/deny`, { error_description: 'Alice said no' });
  ok(deny.status === 200 && deny.json?.status === 'denied', 'deny -> 200', deny.json);
  const t3 = await cibaToken(d, ...C, s3.json?.auth_req_id);
  ok(t3.status === 400 && t3.json?.error === 'access_denied' && t3.json?.error_description === 'Alice said no', 'token after deny -> access_denied with description', t3.text);
  const s3b = await cibaStart(d, ...C, { login_hint: 'alice' });
  const p3b = await pendingFor(issuer, s3b.json?.auth_req_id);
  await postJson(`${issuer}/test/ciba/${p3b?.id}/deny`);
  const t3b = await cibaToken(d, ...C, s3b.json?.auth_req_id);
  ok(t3b.json?.error === 'access_denied' && !!t3b.json?.error_description, 'deny without body -> default description', t3b.text);

  section('CIBA request validation');
  const long = await cibaStart(d, ...C, { login_hint: 'alice', binding_message: 'x'.repeat(101) });
  ok(long.json?.error === 'invalid_binding_message', '101-char binding_message -> invalid_binding_message', long.text);
  const ctl = await cibaStart(d, ...C, { login_hint: 'alice', binding_message: 'line\nbreak' });
  ok(ctl.json?.error === 'invalid_binding_message', 'control characters -> invalid_binding_message', ctl.text);
  const unknown = await cibaStart(d, ...C, { login_hint: 'mallory' });
  ok(unknown.json?.error === 'unknown_user_id', 'unknown login_hint -> unknown_user_id', unknown.text);
  const noOpenid = await cibaStart(d, ...C, { login_hint: 'alice', scope: 'hr:read' });
  ok(noOpenid.json?.error === 'invalid_request', 'scope without openid -> invalid_request', noOpenid.text);
  const noHint = await cibaStart(d, ...C, {});
  ok(noHint.json?.error === 'invalid_request', 'no hint -> invalid_request', noHint.text);
  const badClient = await cibaStart(d, 'tether-ciba', 'nope', { login_hint: 'alice' });
  ok(badClient.status === 401 && badClient.json?.error === 'invalid_client', 'wrong secret -> invalid_client', badClient.text);

  section('CIBA expiry');
  const s4 = await cibaStart(d, ...C, { login_hint: 'alice', requested_expiry: '1' });
  ok(s4.json?.expires_in === 1, 'requested_expiry honoured', s4.json);
  await sleep(2100);
  ok(!(await pendingFor(issuer, s4.json?.auth_req_id)), 'expired request not listed as pending');
  const t4 = await cibaToken(d, ...C, s4.json?.auth_req_id);
  ok(t4.json?.error === 'expired_token', 'expired -> expired_token', t4.text);
  const late = await postJson(`${issuer}/test/ciba/${encodeURIComponent(s4.json?.auth_req_id)}/approve`);
  ok(late.status === 410, 'approving an expired request -> 410', late);
}

async function checkCibaPing(issuer, d, jwks) {
  section('CIBA ping (runtime notification endpoint)');
  const listener = await startNotifyListener();
  const set = await postJson(`${issuer}/test/clients/tether-ciba-ping/notification-endpoint`, { url: listener.url });
  ok(set.status === 200, 'set notification endpoint', set.json);
  const C = ['tether-ciba-ping', 'tether-ciba-ping-secret'];
  const noToken = await cibaStart(d, ...C, { login_hint: 'alice' });
  ok(noToken.json?.error === 'invalid_request', 'ping without client_notification_token -> invalid_request', noToken.text);
  const notifyToken = crypto.randomBytes(16).toString('base64url');
  const s = await cibaStart(d, ...C, { login_hint: 'carol', binding_message: 'Approve HR export for Q3?', client_notification_token: notifyToken });
  if (!ok(s.status === 200 && s.json?.auth_req_id, 'ping client POST /backchannel', s.text)) return;
  const p = await pendingFor(issuer, s.json.auth_req_id, '?client_id=tether-ciba-ping');
  const ap = await postJson(`${issuer}/test/ciba/${p?.id}/approve`);
  ok(ap.status === 200 && ap.json?.notify === 'sent', 'approve -> ping sent', ap.json);
  const note = await listener.next();
  ok(note && note.method === 'POST' && note.headers.authorization === `Bearer ${notifyToken}`, 'listener got POST with Bearer client_notification_token', note?.headers);
  ok(note && JSON.parse(note.body).auth_req_id === s.json.auth_req_id, 'notification body carries auth_req_id', note?.body);
  const tok = await cibaToken(d, ...C, s.json.auth_req_id);
  ok(tok.status === 200 && tok.json?.id_token && verifyJwt(tok.json.id_token, jwks).payload.sub === 'carol', 'token after ping -> ID token sub=carol', tok.text);

  // a denial is pinged too
  const s2 = await cibaStart(d, ...C, { login_hint: 'alice', client_notification_token: notifyToken });
  const p2 = await pendingFor(issuer, s2.json?.auth_req_id);
  await postJson(`${issuer}/test/ciba/${p2?.id}/deny`, { error_description: 'not me' });
  const note2 = await listener.next();
  ok(note2 && JSON.parse(note2.body).auth_req_id === s2.json?.auth_req_id, 'deny -> ping sent');
  const t2 = await cibaToken(d, ...C, s2.json?.auth_req_id);
  ok(t2.json?.error === 'access_denied' && t2.json?.error_description === 'not me', 'token after denied ping -> access_denied', t2.text);

  // listener gone: the decision still stands, the failure is reported
  await new Promise((r) => { listener.server.close(r); listener.server.closeAllConnections(); });
  servers.delete(listener.server);
  const s3 = await cibaStart(d, ...C, { login_hint: 'alice', client_notification_token: notifyToken });
  const p3 = await pendingFor(issuer, s3.json?.auth_req_id);
  const ap3 = await postJson(`${issuer}/test/ciba/${p3?.id}/approve`);
  ok(ap3.status === 200 && String(ap3.json?.notify).startsWith('failed'), 'ping to a closed port reported as failed', ap3.json);
  const t3 = await cibaToken(d, ...C, s3.json?.auth_req_id);
  ok(t3.status === 200, 'tokens still available by polling after a failed ping', t3.text);
}

async function checkCibaTestSwitches(issuer, d, jwks) {
  section('CIBA test switches: slow_down, poll record, approval with another account');
  const C = ['tether-ciba', 'tether-ciba-secret'];
  const s = await cibaStart(d, ...C, { login_hint: 'alice', binding_message: 'Slow down test' });
  const id = s.json?.auth_req_id;
  if (!ok(s.status === 200 && id, 'start', s.text)) return;
  const unknown = await postJson(`${issuer}/test/ciba/nope/slow-down`, { count: 1 });
  ok(unknown.status === 404, 'slow-down for an unknown request -> 404', unknown);
  const badCount = await postJson(`${issuer}/test/ciba/${encodeURIComponent(id)}/slow-down`, { count: -1 });
  ok(badCount.status === 400, 'slow-down with a bad count -> 400', badCount);
  const sw = await postJson(`${issuer}/test/ciba/${encodeURIComponent(id)}/slow-down`, { count: 2 });
  ok(sw.status === 200 && sw.json?.slow_down_remaining === 2, 'slow-down switch set for 2 polls', sw.json);
  const p1 = await cibaToken(d, ...C, id);
  const p2 = await cibaToken(d, ...C, id);
  const p3 = await cibaToken(d, ...C, id);
  ok(p1.status === 400 && p1.json?.error === 'slow_down' && p2.json?.error === 'slow_down', 'the next two polls -> slow_down', [p1.text, p2.text]);
  ok(p3.json?.error === 'authorization_pending', 'then authorization_pending again', p3.text);
  const rec = (await getJson(`${issuer}/test/ciba/${encodeURIComponent(id)}`)).json;
  ok(rec?.polls?.map((x) => x.result).join(',') === 'slow_down,slow_down,authorization_pending'
    && rec.polls.every((x) => Number.isInteger(x.at_ms)) && rec.slow_down_remaining === 0, 'GET /test/ciba/:id records every poll with its time and answer', rec);
  await postJson(`${issuer}/test/ciba/${encodeURIComponent(id)}/slow-down`, { count: 5 });
  await postJson(`${issuer}/test/ciba/${encodeURIComponent(id)}/approve`);
  const p4 = await cibaToken(d, ...C, id);
  ok(p4.status === 200 && p4.json?.id_token, 'slow-down never hides a decision: tokens once approved', p4.text);

  const s2 = await cibaStart(d, ...C, { login_hint: 'alice' });
  const id2 = s2.json?.auth_req_id;
  const badAccount = await postJson(`${issuer}/test/ciba/${encodeURIComponent(id2)}/approve`, { account: 'mallory' });
  ok(badAccount.status === 400, 'approve as an unknown account -> 400', badAccount);
  const asBob = await postJson(`${issuer}/test/ciba/${encodeURIComponent(id2)}/approve`, { account: 'bob' });
  ok(asBob.status === 200 && asBob.json?.approved_by === 'bob' && asBob.json?.sub === 'alice', 'approve with another account -> approved_by', asBob.json);
  const t2 = await cibaToken(d, ...C, id2);
  const idt = t2.json?.id_token ? verifyJwt(t2.json.id_token, jwks) : {};
  ok(idt.valid && idt.payload.sub === 'bob' && idt.payload.aud === 'tether-ciba', 'ID token of an approval with another account names that account', t2.text);
}

async function checkCibaIntervalAndPrivateKeyJwt() {
  section('config file: CIBA interval and a private_key_jwt client');
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const pub = { ...publicKey.export({ format: 'jwk' }), kid: 'client-key', alg: 'ES256', use: 'sig' };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-idp-'));
  const cfgPath = path.join(tmp, 'idp.json');
  const defaults = JSON.parse(fs.readFileSync(path.join(HERE, 'default-config.json'), 'utf8'));
  fs.writeFileSync(cfgPath, JSON.stringify({
    cibaInterval: 2,
    clients: [...defaults.clients, {
      client_id: 'ciba-jwt',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [pub] },
      grant_types: ['urn:openid:params:grant-type:ciba'],
      response_types: [],
      redirect_uris: [],
      backchannel_token_delivery_mode: 'poll',
    }],
  }));
  const idp = await startIdp({ IDP_CONFIG: cfgPath });
  try {
    const { issuer } = idp.info;
    const d = (await getJson(`${issuer}/.well-known/openid-configuration`)).json;
    const assertion = () => {
      const now = Math.floor(Date.now() / 1000);
      const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
      const input = `${enc({ alg: 'ES256', typ: 'JWT', kid: 'client-key' })}.${enc({
        iss: 'ciba-jwt', sub: 'ciba-jwt', aud: issuer, jti: crypto.randomUUID(), iat: now, exp: now + 60,
      })}`;
      const sig = crypto.sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
      return { client_id: 'ciba-jwt', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: `${input}.${sig.toString('base64url')}` };
    };
    const s = await form(d.backchannel_authentication_endpoint, { scope: 'openid', login_hint: 'alice', ...assertion() });
    ok(s.status === 200 && s.json?.interval === 2, 'cibaInterval -> interval in the backchannel response; private_key_jwt accepted', s.text);
    const poll = await form(d.token_endpoint, { grant_type: 'urn:openid:params:grant-type:ciba', auth_req_id: s.json?.auth_req_id, ...assertion() });
    ok(poll.json?.error === 'authorization_pending', 'token request with a private_key_jwt assertion', poll.text);
    const once = assertion();
    await form(d.token_endpoint, { grant_type: 'urn:openid:params:grant-type:ciba', auth_req_id: s.json?.auth_req_id, ...once });
    const replay = await form(d.token_endpoint, { grant_type: 'urn:openid:params:grant-type:ciba', auth_req_id: s.json?.auth_req_id, ...once });
    ok(replay.status === 401 && replay.json?.error === 'invalid_client', 'a replayed assertion -> invalid_client', replay.text);
  } finally {
    await stopIdp(idp);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  const tmp2 = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-idp-'));
  const bad = path.join(tmp2, 'bad.json');
  fs.writeFileSync(bad, JSON.stringify({ cibaInterval: 0 }));
  const failed = await startIdp({}, [bad]).then((i) => { stopIdp(i); return undefined; }, (e) => e);
  ok(failed && /invalid cibaInterval/.test(failed.message), 'cibaInterval 0 -> exit 1 before the ready line', failed?.message);
  fs.rmSync(tmp2, { recursive: true, force: true });
}

async function checkConfigFileAndPing() {
  section('config file (IDP_CONFIG) with a ping endpoint, custom user and key file');
  const listener = await startNotifyListener();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-idp-'));
  const cfgPath = path.join(tmp, 'idp.json');
  fs.writeFileSync(cfgPath, JSON.stringify({
    users: [{ sub: 'dave', email: 'dave@tether.local', name: 'Dave', groups: ['ops'], department: 'it' }],
    defaultUser: 'dave',
    clients: [{
      client_id: 'ping-only',
      client_secret: 'ping-only-secret',
      grant_types: ['urn:openid:params:grant-type:ciba'],
      response_types: [],
      redirect_uris: [],
      backchannel_token_delivery_mode: 'ping',
      backchannel_client_notification_endpoint: listener.url,
    }],
  }));
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'fixed-test-key', alg: 'ES256', use: 'sig' };
  const keysPath = path.join(tmp, 'keys.json');
  fs.writeFileSync(keysPath, JSON.stringify({ keys: [jwk] }));

  const idp = await startIdp({ IDP_CONFIG: cfgPath, IDP_KEYS_FILE: keysPath });
  try {
    const issuer = idp.info.issuer;
    const d = (await getJson(`${issuer}/.well-known/openid-configuration`)).json;
    const jwks = (await getJson(d.jwks_uri)).json;
    ok(jwks.keys.length === 1 && jwks.keys[0].kid === 'fixed-test-key' && jwks.keys[0].d === undefined, 'IDP_KEYS_FILE key published (public part only)', jwks);
    const s = await cibaStart(d, 'ping-only', 'ping-only-secret', { login_hint: 'dave', client_notification_token: 'tok123' });
    const p = await pendingFor(issuer, s.json?.auth_req_id);
    await postJson(`${issuer}/test/ciba/${p?.id}/approve`);
    const note = await listener.next();
    ok(note && note.headers.authorization === 'Bearer tok123', 'ping to the http loopback endpoint from the config file', note?.headers);
    const t = await cibaToken(d, 'ping-only', 'ping-only-secret', s.json?.auth_req_id);
    const idt = t.json?.id_token ? verifyJwt(t.json.id_token, jwks) : {};
    ok(idt.valid && idt.header.kid === 'fixed-test-key' && idt.payload.sub === 'dave', 'ID token signed by the loaded key, sub=dave', t.text);
    const cli = await form(d.token_endpoint, { grant_type: 'client_credentials' }, { authorization: basic('tether-agent-backend', 'tether-agent-backend-secret') });
    ok(cli.json?.error === 'invalid_client', 'clients from the file replace the defaults', cli.text);
  } finally {
    await stopIdp(idp);
    listener.server.close();
    servers.delete(listener.server);
    fs.rmSync(tmp, { recursive: true, force: true });
  }

  section('bad configuration fails fast');
  const tmp2 = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-idp-'));
  const bad = path.join(tmp2, 'bad.json');
  fs.writeFileSync(bad, JSON.stringify({ clients: [{ client_id: 'x', grant_types: ['urn:openid:params:grant-type:ciba'], response_types: [], redirect_uris: [] }] }));
  const failed = await startIdp({}, [bad]).then((i) => { stopIdp(i); return undefined; }, (e) => e);
  ok(failed && /invalid client x/.test(failed.message), 'invalid client metadata -> exit 1 before the ready line', failed?.message);
  fs.rmSync(tmp2, { recursive: true, force: true });
}

async function checkDevicePage(issuer, d) {
  section('device page and cross-site protection of the test endpoints');
  const page = await fetch(`${issuer}/device?user=alice@tether.local`);
  const html = await page.text();
  const csp = page.headers.get('content-security-policy') || '';
  ok(page.status === 200 && page.headers.get('content-type') === 'text/html; charset=utf-8', 'GET /device?user=<email> -> 200 HTML', page.status);
  ok(html.includes('data-sub="alice"') && html.includes('Alice Anders'), 'the device page is alice\'s');
  const nonce = /script-src 'nonce-([^']+)'/.exec(csp)?.[1];
  ok(nonce && html.includes(`<script nonce="${nonce}">`) && csp.includes("default-src 'none'")
    && csp.includes("frame-ancestors 'none'") && !csp.includes('unsafe'), 'strict CSP with a nonce, no framing', csp);
  ok(page.headers.get('cache-control') === 'no-store' && page.headers.get('x-content-type-options') === 'nosniff', 'no-store, nosniff');
  const unknown = await fetch(`${issuer}/device?user=${encodeURIComponent('<img src=x>')}`);
  const unknownHtml = await unknown.text();
  ok(unknown.status === 404 && unknownHtml.includes('&lt;img src=x&gt;') && !unknownHtml.includes('<img src=x>'), 'unknown user -> 404 with the user list, the name escaped', unknown.status);
  const chooser = await fetch(`${issuer}/device`);
  ok(chooser.status === 200 && (await chooser.text()).includes('/device?user=carol'), 'GET /device lists the users');

  const C = ['tether-ciba', 'tether-ciba-secret'];
  const s = await cibaStart(d, ...C, { login_hint: 'alice', binding_message: 'Cross-site test' });
  const url = `${issuer}/test/ciba/${encodeURIComponent(s.json?.auth_req_id)}/approve`;
  const post = (headers, body) => fetch(url, { method: 'POST', headers, body }).then((r) => r.status);
  ok(await post({ 'content-type': 'application/x-www-form-urlencoded' }, 'account=bob') === 415, 'form-encoded approve -> 415');
  ok(await post({ 'content-type': 'text/plain' }, '{}') === 415, 'text/plain approve -> 415');
  ok(await post({}, undefined) === 415, 'approve without a content type -> 415');
  ok(await post({ 'content-type': 'application/json', origin: 'http://evil.example' }, '{}') === 403, 'JSON approve from another origin -> 403');
  ok(await post({ 'content-type': 'application/json', origin: 'null' }, '{}') === 403, 'JSON approve from an opaque origin -> 403');
  ok(await post({ 'content-type': 'application/json' }, 'null') === 400, 'a body that is not a JSON object -> 400');
  ok((await pendingFor(issuer, s.json?.auth_req_id))?.status === 'pending', 'refused calls decided nothing');
  ok(await post({ 'content-type': 'application/json', origin: new URL(issuer).origin }, '{}') === 200, 'JSON approve from the IdP\'s own origin -> 200');

  const off = await startIdp({}, [await writeTempConfig({ testEndpoints: false })]);
  try {
    const gone = await fetch(`${off.info.issuer}/device?user=alice`);
    const health = await fetch(`${off.info.issuer}/test/health`);
    ok(gone.status === 404 && health.status === 404, 'testEndpoints false -> no device page, no /test/', [gone.status, health.status]);
  } finally {
    await stopIdp(off);
  }
}

const tempDirs = new Set();
async function writeTempConfig(config) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-idp-'));
  tempDirs.add(tmp);
  const file = path.join(tmp, 'idp.json');
  fs.writeFileSync(file, JSON.stringify(config));
  return file;
}

async function main() {
  const t0 = Date.now();
  const idp = await startIdp();
  const { issuer, port } = idp.info;
  ok(idp.info.ready === true && Number.isInteger(port) && port > 0 && issuer === `http://127.0.0.1:${port}`, 'ready line', idp.info);
  console.log(`IdP ready at ${issuer} in ${Date.now() - t0} ms`);
  try {
    const { discovery, jwks } = await checkDiscovery(issuer);
    await checkClientCredentials(issuer, discovery, jwks);
    await checkAuthorizationCode(issuer, discovery, jwks);
    await checkCibaPoll(issuer, discovery, jwks);
    await checkCibaPing(issuer, discovery, jwks);
    await checkCibaTestSwitches(issuer, discovery, jwks);
    await checkDevicePage(issuer, discovery);
    await checkConfigFileAndPing();
    await checkCibaIntervalAndPrivateKeyJwt();
  } finally {
    const code = await stopIdp(idp);
    section('shutdown and stdout');
    ok(code === 0, 'SIGTERM -> exit 0', code);
    const lines = idp.stdout().split('\n').filter(Boolean);
    ok(lines.length === 1, 'stdout carried only the ready line', lines);
  }
}

function cleanup() {
  for (const c of children) c.kill('SIGKILL');
  for (const s of servers) { s.close(); s.closeAllConnections?.(); }
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
}

try {
  await main();
} catch (err) {
  failures += 1;
  console.log(`FAIL: ${err.stack || err}`);
} finally {
  cleanup();
}
console.log(`${passes} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
