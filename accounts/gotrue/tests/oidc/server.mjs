// A real OpenID Connect provider for Velro's sign-in-with-provider tests: the certified
// `oidc-provider` (package.json), on 127.0.0.1 only, started by the pytest fixture
// `oidc_provider` (accounts/gotrue/tests/oidc_support.py).
//
// Config (JSON in OIDC_TEST_CONFIG): {port, clients: [{client_id, client_secret, redirect_uris}]}.
//
// Accounts: whoever signs in on the devInteractions login page with login L (any password)
// is the account L: sub = L, email = L when it holds an "@", email_verified = true unless L
// contains "+unverified", name = the part before "@". Tests pick fresh logins per case.
//
// GitHub mode: the same server answers GitHub's OAuth2 routes (/login/oauth/authorize,
// /login/oauth/access_token: oidc-provider's authorization and token endpoints under
// GitHub's paths) and GitHub's REST shapes for the access token it issued:
// GET /api/user and /api/user/emails (numeric id, login, name; the address list with
// primary/verified). So Velro's GitHub flow runs a real code exchange and real API calls.
import { createHash } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(process.env.OIDC_TEST_CONFIG || '{}');
const port = Number(config.port || 0);
const issuer = `http://127.0.0.1:${port}`;

function claimsFor(login) {
  const email = login.includes('@') ? login : '';
  const name = login.split('@')[0];
  return {
    sub: login,
    ...(email ? { email, email_verified: !login.includes('+unverified') } : {}),
    name,
    preferred_username: name,
  };
}

const provider = new Provider(issuer, {
  clients: (config.clients || []).map((client) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...client,
  })),
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return claimsFor(id); } };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  // GitHub's scopes, so the GitHub-mode authorize request is a valid OAuth 2.0 one.
  scopes: ['openid', 'offline_access', 'email', 'profile', 'user:email', 'read:user'],
  // Put the scope-granted claims into the ID token itself (as Google does), so a
  // signInWithIdToken test has the email in the token.
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  routes: { authorization: '/login/oauth/authorize', token: '/login/oauth/access_token' },
  cookies: { keys: ['velro-test-cookie-key-0123456789'] },
  ttl: { AccessToken: 600, AuthorizationCode: 120, IdToken: 600, Interaction: 600, Session: 600, Grant: 600 },
});
// Plain http on loopback: tell koa not to expect TLS for its secure cookies.
provider.proxy = true;

async function github(req, res) {
  const auth = req.headers.authorization || '';
  const value = auth.replace(/^(Bearer|token) /i, '');
  const token = value ? await provider.AccessToken.find(value) : undefined;
  if (!token) {
    res.writeHead(401, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ message: 'Bad credentials' }));
    return;
  }
  const claims = claimsFor(token.accountId);
  // GitHub's numeric user id: a stable number derived from the login.
  const id = parseInt(createHash('sha256').update(token.accountId).digest('hex').slice(0, 10), 16);
  let body;
  if (req.url === '/api/user') {
    body = { id, login: claims.preferred_username, name: claims.name, avatar_url: '', email: null };
  } else {
    body = claims.email
      ? [{ email: claims.email, primary: true, verified: claims.email_verified, visibility: 'private' }]
      : [];
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const callback = provider.callback();
const server = http.createServer((req, res) => {
  if (req.method === 'GET' && (req.url === '/api/user' || req.url === '/api/user/emails')) {
    github(req, res).catch((err) => {
      res.writeHead(500);
      res.end(String(err));
    });
    return;
  }
  callback(req, res);
});
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
