// The official @supabase/auth-js client against a live Velro /auth/v1, one scenario per run.
//
//   node run.mjs <scenario> '<json args>'
//
// args: {url, apikey, ...the scenario's own}; with `origin` set every request goes through
// browserFetch (below), which enforces CORS the way a browser does. Prints exactly one JSON
// line on stdout, the scenario's result; an AuthError the client returns is data in that
// result ({name, status, code, message}), not a failure. Anything unexpected (a thrown
// exception, a bad scenario name) exits 1 with the reason on stderr.
// accounts/gotrue/tests/test_authjs.py drives it (accounts/tests/support.py run_authjs).
//
// A new scenario is one more async function in SCENARIOS: (args, ctx) -> JSON-able object.

import { AuthClient, isAuthError } from '@supabase/auth-js'

// The client logs through console.log when debugging; keep stdout for the result line.
console.log = (...parts) => console.error(...parts)

// --- what a scenario returns ---------------------------------------------------------------

function errorOf(error) {
  if (!error) return null
  return {
    name: error.name,
    status: error.status ?? null,
    code: error.code ?? null,
    message: error.message,
    reasons: error.reasons ?? undefined,
  }
}

function userOf(user) {
  if (!user) return null
  const { id, aud, role, email, email_confirmed_at, user_metadata, app_metadata, is_anonymous } = user
  return {
    id,
    aud,
    role,
    email,
    email_confirmed_at,
    user_metadata,
    app_metadata,
    is_anonymous,
    identities: (user.identities ?? []).map((identity) => identity.provider),
  }
}

function sessionOf(session) {
  if (!session) return null
  const { access_token, refresh_token, token_type, expires_in, expires_at } = session
  return { access_token, refresh_token, token_type, expires_in, expires_at, user: userOf(session.user) }
}

// {data: {user, session}, error} -> the same, summarised.
function answerOf({ data, error }) {
  const out = { error: errorOf(error) }
  if (data && 'user' in data) out.user = userOf(data.user)
  if (data && 'session' in data) out.session = sessionOf(data.session)
  return out
}

// --- fetch: every exchange recorded; in browser mode, CORS enforced ------------------------

const SAFELISTED_RESPONSE_HEADERS = new Set([
  'cache-control',
  'content-language',
  'content-length',
  'content-type',
  'expires',
  'last-modified',
  'pragma',
])
const SIMPLE_METHODS = new Set(['GET', 'HEAD', 'POST'])
const SIMPLE_CONTENT_TYPES = new Set(['application/x-www-form-urlencoded', 'multipart/form-data', 'text/plain'])

function tokens(value) {
  return (value ?? '')
    .split(',')
    .map((part) => part.trim().toLowerCase())
    .filter(Boolean)
}

// The request headers a browser names in Access-Control-Request-Headers (Fetch: "CORS-unsafe
// request-header names"; simplified to the headers auth-js sends).
function unsafeHeaderNames(headers) {
  const names = []
  for (const [name, value] of headers) {
    if (['accept', 'accept-language', 'content-language'].includes(name)) continue
    if (name === 'content-type' && SIMPLE_CONTENT_TYPES.has(value.split(';')[0].trim().toLowerCase())) continue
    names.push(name)
  }
  return names.sort()
}

function originAllowed(response, origin) {
  const allowed = response.headers.get('access-control-allow-origin')
  return allowed === '*' || allowed === origin
}

// fetch for the client: records {method, path, status, code, retryAfter?} of every exchange in
// ctx.requests (retryAfter: the Retry-After header, when the page can read it);
// with an origin, behaves as a browser's fetch from that origin would (a preflight for what is
// not a simple request, the allow-origin check on the answer, only the exposed headers
// readable) and records each CORS failure in ctx.corsViolations, failing the request the way
// a browser does (a TypeError, which auth-js reports as AuthRetryableFetchError status 0).
function makeFetch(ctx, origin) {
  return async (input, init = {}) => {
    const url = new URL(typeof input === 'string' ? input : input.url)
    const method = (init.method ?? 'GET').toUpperCase()
    const headers = new Headers(init.headers)
    const entry = { method, path: url.pathname + url.search, status: null, code: null }
    ctx.requests.push(entry)
    const violation = (reason) => {
      ctx.corsViolations.push({ method, path: entry.path, reason })
      return new TypeError(`Failed to fetch (CORS: ${reason})`)
    }
    if (origin) {
      headers.set('origin', origin)
      const unsafe = unsafeHeaderNames(headers).filter((name) => name !== 'origin')
      if (!SIMPLE_METHODS.has(method) || unsafe.length) {
        const preflight = await fetch(url, {
          method: 'OPTIONS',
          headers: {
            origin,
            'access-control-request-method': method,
            ...(unsafe.length ? { 'access-control-request-headers': unsafe.join(',') } : {}),
          },
        })
        await preflight.arrayBuffer()
        if (preflight.status < 200 || preflight.status > 299) throw violation(`preflight answered ${preflight.status}`)
        if (!originAllowed(preflight, origin)) throw violation('preflight without a matching allow-origin')
        const methods = tokens(preflight.headers.get('access-control-allow-methods'))
        if (!SIMPLE_METHODS.has(method) && !methods.includes('*') && !methods.includes(method.toLowerCase())) {
          throw violation(`method ${method} not allowed`)
        }
        const allowedHeaders = tokens(preflight.headers.get('access-control-allow-headers'))
        for (const name of unsafe) {
          // "*" never covers Authorization (Fetch standard).
          const wildcard = allowedHeaders.includes('*') && name !== 'authorization'
          if (!wildcard && !allowedHeaders.includes(name)) throw violation(`request header ${name} not allowed`)
        }
      }
    }
    const response = await fetch(url, { ...init, method, headers })
    entry.status = response.status
    const body = [101, 204, 205, 304].includes(response.status) ? null : await response.arrayBuffer()
    if (body && response.headers.get('content-type')?.includes('json')) {
      try {
        const parsed = JSON.parse(new TextDecoder().decode(body))
        entry.code = typeof parsed?.code === 'string' ? parsed.code : (parsed?.error_code ?? null)
      } catch {
        entry.code = 'unparsable-json'
      }
    }
    let visible = response.headers
    if (origin) {
      if (!originAllowed(response, origin)) throw violation(`${response.status} answer without a matching allow-origin`)
      const exposed = tokens(response.headers.get('access-control-expose-headers'))
      visible = new Headers()
      for (const [name, value] of response.headers) {
        if (SAFELISTED_RESPONSE_HEADERS.has(name) || exposed.includes(name) || exposed.includes('*')) {
          visible.append(name, value)
        }
      }
    }
    if (visible.has('retry-after')) entry.retryAfter = visible.get('retry-after')
    return new Response(body, { status: response.status, statusText: response.statusText, headers: visible })
  }
}

// args.headers: extra headers on every request (e.g. an older X-Supabase-Api-Version).
function makeClient(args, ctx) {
  if (!args.url) throw new Error("args.url (the server's /auth/v1 URL) is required")
  return new AuthClient({
    url: args.url,
    headers: { ...(args.apikey ? { apikey: args.apikey } : {}), ...(args.headers ?? {}) },
    autoRefreshToken: false, // no timers: the scenarios refresh by hand
    detectSessionInUrl: false,
    fetch: makeFetch(ctx, args.origin),
    // args.flowType 'pkce': the code verifier lives in a storage the scenario hands back
    // (ctx.storage) and the next run is given again (args.storage), as a browser's
    // localStorage outlives the redirect. Otherwise the session lives in memory only.
    ...(args.flowType === 'pkce'
      ? { flowType: 'pkce', persistSession: true, storage: handedStorage(args, ctx) }
      : { persistSession: false }),
  })
}

function handedStorage(args, ctx) {
  ctx.storage = { ...(args.storage ?? {}) }
  return {
    getItem: (key) => (key in ctx.storage ? ctx.storage[key] : null),
    setItem: (key, value) => {
      ctx.storage[key] = value
    },
    removeItem: (key) => {
      delete ctx.storage[key]
    },
  }
}

async function signedIn(client, email, password) {
  const answer = await client.signInWithPassword({ email, password })
  if (answer.error) throw new Error(`signInWithPassword(${email}) failed: ${JSON.stringify(errorOf(answer.error))}`)
  return answer.data.session
}

// --- scenarios -----------------------------------------------------------------------------

const SCENARIOS = {
  // Ask for an email with a code and a link: args.action 'recover' (resetPasswordForEmail)
  // or 'otp' (signInWithOtp; args.createUser). Returns the answer and, for PKCE, the storage.
  async requestEmail(args, ctx) {
    const client = makeClient(args, ctx)
    const answer =
      args.action === 'recover'
        ? await client.resetPasswordForEmail(args.email, { redirectTo: args.redirectTo })
        : await client.signInWithOtp({
            email: args.email,
            options: { emailRedirectTo: args.redirectTo, shouldCreateUser: args.createUser ?? true },
          })
    return { error: errorOf(answer.error), storage: ctx.storage ?? null }
  },

  // verifyOtp({email, token, type}) (or {token_hash, type}), then each of args.updates with
  // updateUser (a recovery session setting a new password), then getUser().
  async verifyOtp(args, ctx) {
    const client = makeClient(args, ctx)
    const params = args.tokenHash
      ? { token_hash: args.tokenHash, type: args.type }
      : { email: args.email, token: args.token, type: args.type }
    const verify = answerOf(await client.verifyOtp(params))
    const updates = []
    for (const attributes of args.updates ?? []) updates.push(answerOf(await client.updateUser(attributes)))
    const getUser = verify.error ? null : answerOf(await client.getUser())
    return { verify, updates, getUser }
  },

  // exchangeCodeForSession(args.authCode) with the storage a requestEmail run handed back.
  async exchangeCode(args, ctx) {
    const client = makeClient({ ...args, flowType: 'pkce' }, ctx)
    const exchange = answerOf(await client.exchangeCodeForSession(args.authCode))
    const getUser = exchange.error ? null : answerOf(await client.getUser())
    return { exchange, redirectType: null, getUser }
  },

  // signUp, then getUser() and getSession() from the client's own state.
  async signUp(args, ctx) {
    const client = makeClient(args, ctx)
    const signUp = answerOf(
      await client.signUp({ email: args.email, password: args.password, options: { data: args.data ?? {} } }),
    )
    const getUser = answerOf(await client.getUser())
    const { data } = await client.getSession()
    return { signUp, getUser, storedSession: sessionOf(data.session) }
  },

  // signInWithPassword, then getUser() with the stored session (or the error and no session).
  async signInWithPassword(args, ctx) {
    const client = makeClient(args, ctx)
    const signIn = answerOf(await client.signInWithPassword({ email: args.email, password: args.password }))
    const getUser = signIn.error ? null : answerOf(await client.getUser())
    const { data } = await client.getSession()
    return { signIn, getUser, storedSession: sessionOf(data.session) }
  },

  // refreshSession() rotates the refresh token; the client carries on with the new session.
  async refreshSession(args, ctx) {
    const client = makeClient(args, ctx)
    const first = await signedIn(client, args.email, args.password)
    const refresh = answerOf(await client.refreshSession())
    const { data } = await client.getSession()
    const getUser = answerOf(await client.getUser())
    return { first: sessionOf(first), refresh, storedSession: sessionOf(data.session), getUser }
  },

  // A session handed over from elsewhere (a server-rendered page, another process):
  // setSession({access_token, refresh_token}) in a fresh client, then getUser and a refresh.
  async setSession(args, ctx) {
    const session = await signedIn(makeClient(args, ctx), args.email, args.password)
    const client = makeClient(args, ctx)
    const setSession = answerOf(
      await client.setSession({ access_token: session.access_token, refresh_token: session.refresh_token }),
    )
    const getUser = answerOf(await client.getUser())
    const refresh = answerOf(await client.refreshSession())
    return { original: sessionOf(session), setSession, getUser, refresh }
  },

  // getClaims() on the signed-in session: HS256 tokens are checked by the server (getUser),
  // tokens with a kid against the JWKS; either way the claims come back.
  async getClaims(args, ctx) {
    const client = makeClient(args, ctx)
    await signedIn(client, args.email, args.password)
    const { data, error } = await client.getClaims()
    return { claims: data?.claims ?? null, header: data?.header ?? null, error: errorOf(error) }
  },

  async signInAnonymously(args, ctx) {
    return answerOf(await makeClient(args, ctx).signInAnonymously())
  },

  // Sign in (and on another device), apply each of args.updates with updateUser (one answer
  // each), then getUser() here and getUser(jwt) with the other device's token.
  async updateUser(args, ctx) {
    const client = makeClient(args, ctx)
    const otherSession = await signedIn(makeClient(args, ctx), args.email, args.password)
    const session = await signedIn(client, args.email, args.password)
    const updates = []
    for (const attributes of args.updates ?? []) updates.push(answerOf(await client.updateUser(attributes)))
    const getUser = answerOf(await client.getUser())
    const otherToken = answerOf(await makeClient(args, ctx).getUser(otherSession.access_token))
    return { session: sessionOf(session), updates, getUser, otherToken }
  },

  // Two sessions of one user (this client and another device); this client signs out with
  // args.scope; then each old access token on getUser(jwt), and this session's refresh token.
  async signOut(args, ctx) {
    const client = makeClient(args, ctx)
    const device = makeClient(args, ctx)
    const otherSession = await signedIn(device, args.email, args.password)
    const session = await signedIn(client, args.email, args.password)
    const signOut = { error: errorOf((await client.signOut(args.scope ? { scope: args.scope } : undefined)).error) }
    const stored = (await client.getSession()).data.session
    const probe = makeClient(args, ctx)
    const thisToken = answerOf(await probe.getUser(session.access_token))
    const otherToken = answerOf(await probe.getUser(otherSession.access_token))
    const thisRefresh = answerOf(await probe.refreshSession({ refresh_token: session.refresh_token }))
    return { signOut, storedSession: sessionOf(stored), thisToken, otherToken, thisRefresh }
  },

  // Server code with the service-role key (args.apikey, also sent as the bearer, as supabase-js
  // does with its key) through auth.admin.*, over one user's life: create, list a page, get,
  // update, the user signs in and is signed out with their token, ban (sign-in refused), lift
  // the ban, delete. args.anonKey: the user's own client, and a call with it (not_admin).
  async admin(args, ctx) {
    const bearer = { ...(args.headers ?? {}), Authorization: `Bearer ${args.apikey}` }
    const server = makeClient({ ...args, headers: bearer }, ctx)
    const userArgs = { ...args, apikey: args.anonKey }
    const out = {}
    const created = await server.admin.createUser({
      email: args.email,
      password: args.password,
      email_confirm: true,
      user_metadata: { full_name: 'Ada Lovelace' },
      app_metadata: { plan: 'pro' },
    })
    out.create = answerOf(created)
    const id = created.data.user?.id
    const page = await server.admin.listUsers({ page: 1, perPage: args.perPage ?? 1 })
    out.list = {
      ids: (page.data.users ?? []).map((user) => user.id),
      aud: page.data.aud ?? null,
      nextPage: page.data.nextPage ?? null,
      lastPage: page.data.lastPage ?? null,
      total: page.data.total ?? null,
      error: errorOf(page.error),
    }
    out.get = answerOf(await server.admin.getUserById(id))
    out.update = answerOf(await server.admin.updateUserById(id, { user_metadata: { theme: 'dark' } }))
    const session = await signedIn(makeClient(userArgs, ctx), args.email, args.password)
    out.signOut = { error: errorOf((await server.admin.signOut(session.access_token, 'global')).error) }
    out.afterSignOut = answerOf(await makeClient(userArgs, ctx).getUser(session.access_token))
    const banned = await server.admin.updateUserById(id, { ban_duration: '24h' })
    out.ban = { ...answerOf(banned), banned_until: banned.data.user?.banned_until ?? null }
    out.bannedSignIn = answerOf(
      await makeClient(userArgs, ctx).signInWithPassword({ email: args.email, password: args.password }),
    )
    out.unban = answerOf(await server.admin.updateUserById(id, { ban_duration: 'none' }))
    out.signInAfterUnban = answerOf(
      await makeClient(userArgs, ctx).signInWithPassword({ email: args.email, password: args.password }),
    )
    out.delete = { error: errorOf((await server.admin.deleteUser(id)).error) }
    out.afterDelete = answerOf(await server.admin.getUserById(id))
    out.anonKey = { error: errorOf((await makeClient(userArgs, ctx).admin.listUsers()).error) }
    return out
  },

  // One raw request through auth-js's own request helper and error parser (what every client
  // method uses), for endpoints no public method covers: {method, path, body?, jwt?, headers?}.
  async request(args, ctx) {
    const { _request } = await import('@supabase/auth-js/dist/main/lib/fetch.js')
    const client = makeClient(args, ctx)
    try {
      const { data } = await _request(client.fetch, args.method ?? 'GET', `${args.url}${args.path}`, {
        headers: client.headers,
        body: args.body,
        jwt: args.jwt,
      })
      return { data, error: null }
    } catch (error) {
      if (isAuthError(error)) return { data: null, error: errorOf(error) }
      throw error
    }
  },

  // What a browser app does on one page load and after, from args.origin (CORS enforced by
  // makeFetch): sign up, a wrong password, sign in, read and update the user, refresh, an
  // endpoint this server lacks, sign out. The answers, and the CORS violations (none expected).
  async browserSession(args, ctx) {
    if (!args.origin) throw new Error('browserSession needs args.origin')
    const client = makeClient(args, ctx)
    const out = {}
    out.signUp = answerOf(await client.signUp({ email: args.email, password: args.password }))
    await client.signOut({ scope: 'local' })
    out.wrongPassword = answerOf(await client.signInWithPassword({ email: args.email, password: `${args.password}x` }))
    out.signIn = answerOf(await client.signInWithPassword({ email: args.email, password: args.password }))
    out.getUser = answerOf(await client.getUser())
    out.updateUser = answerOf(await client.updateUser({ data: { theme: 'dark' } }))
    out.refresh = answerOf(await client.refreshSession())
    out.unknownEndpoint = (await SCENARIOS.request({ ...args, method: 'GET', path: '/no-such-endpoint' }, ctx)).error
    const session = (await client.getSession()).data.session
    out.signOut = { error: errorOf((await client.signOut()).error) }
    out.afterSignOut = answerOf(await client.getUser(session.access_token))
    return out
  },

  ...mfaScenarios(), // --- MFA (TOTP): defined at the end of this file
}

// --- OAuth / OIDC (sign in with a provider; accounts/gotrue/tests/test_external_authjs.py) -----
// Added to SCENARIOS before main runs (kept apart from the scenarios above).
Object.assign(SCENARIOS, {
  // signInWithOAuth({provider, options: {skipBrowserRedirect, redirectTo}}): the /authorize URL
  // the browser would be sent to (and, for PKCE, the storage holding the code verifier).
  async signInWithOAuth(args, ctx) {
    const client = makeClient(args, ctx)
    const { data, error } = await client.signInWithOAuth({
      provider: args.provider,
      options: { redirectTo: args.redirectTo, skipBrowserRedirect: true, scopes: args.scopes },
    })
    return { url: data?.url ?? null, error: errorOf(error), storage: ctx.storage ?? null }
  },

  // signInWithIdToken({provider, token, nonce, access_token}), then the identities getUserIdentities lists.
  async signInWithIdToken(args, ctx) {
    const client = makeClient(args, ctx)
    const signIn = answerOf(
      await client.signInWithIdToken({
        provider: args.provider,
        token: args.idToken,
        nonce: args.nonce,
        access_token: args.accessToken,
      }),
    )
    const identities = signIn.error ? null : await client.getUserIdentities()
    return { signIn, identities: identities?.data?.identities ?? null }
  },

  // Signed in with a password: linkIdentity's URL (skipBrowserRedirect), getUserIdentities,
  // and, with args.unlinkProvider, unlinkIdentity of that provider's identity.
  async identities(args, ctx) {
    const client = makeClient(args, ctx)
    await signedIn(client, args.email, args.password)
    const out = {}
    if (args.linkProvider) {
      const link = await client.linkIdentity({
        provider: args.linkProvider,
        options: { redirectTo: args.redirectTo, skipBrowserRedirect: true },
      })
      out.link = { url: link.data?.url ?? null, error: errorOf(link.error) }
    }
    const listed = await client.getUserIdentities()
    out.identities = listed.data?.identities ?? null
    if (args.unlinkProvider) {
      const identity = out.identities.find((item) => item.provider === args.unlinkProvider)
      out.unlink = { error: errorOf((await client.unlinkIdentity(identity)).error) }
      out.after = (await client.getUserIdentities()).data?.identities ?? null
    }
    return out
  },
})

// --- main ------------------------------------------------------------------------------------

// Run once the whole module was evaluated: the blocks after this one add their scenarios to SCENARIOS.
async function main() {
  const [scenarioName, rawArgs = '{}'] = process.argv.slice(2)
  const scenario = Object.hasOwn(SCENARIOS, scenarioName) ? SCENARIOS[scenarioName] : null
  if (!scenario) {
    console.error(`unknown scenario ${JSON.stringify(scenarioName)}; known: ${Object.keys(SCENARIOS).join(', ')}`)
    process.exit(2)
  }
  const ctx = { requests: [], corsViolations: [] }
  try {
    const result = await scenario(JSON.parse(rawArgs), ctx)
    process.stdout.write(`${JSON.stringify({ ...result, requests: ctx.requests, corsViolations: ctx.corsViolations })}\n`)
  } catch (error) {
    console.error(`scenario ${scenarioName} failed:`, error)
    process.exitCode = 1
  }
}
setImmediate(main)

// --- passkeys --------------------------------------------------------------------------------
// auth-js's passkey calls that need no browser (the WebAuthn ceremonies themselves run in
// Chromium: test_passkeys_browser.py): registration and sign-in options, list, update, delete.
// They need `experimental: {passkey: true}` (helpers.assertPasskeyExperimentalEnabled throws
// without it). args: email, password, passkeyId, friendlyName, aal2Session ({access_token,
// refresh_token} of an aal2 session of the same user, for the delete).

function passkeyClient(args, ctx, experimental) {
  return new AuthClient({
    url: args.url,
    headers: args.apikey ? { apikey: args.apikey } : {},
    autoRefreshToken: false,
    detectSessionInUrl: false,
    persistSession: false,
    fetch: makeFetch(ctx, args.origin),
    experimental,
  })
}

function dataOf({ data, error }) {
  return { data: data ?? null, error: errorOf(error) }
}

SCENARIOS.passkeys = async (args, ctx) => {
  const out = {}
  try {
    await passkeyClient(args, ctx, {})._listPasskeys()
    out.withoutFlag = null
  } catch (error) {
    out.withoutFlag = error.message
  }
  const client = passkeyClient(args, ctx, { passkey: true })
  await signedIn(client, args.email, args.password)
  out.registrationOptions = dataOf(await client._startPasskeyRegistration())
  out.authenticationOptions = dataOf(await client._startPasskeyAuthentication())
  out.list = dataOf(await client._listPasskeys())
  out.update = dataOf(await client._updatePasskey({ passkeyId: args.passkeyId, friendlyName: args.friendlyName }))
  out.updateUnknown = dataOf(
    await client._updatePasskey({ passkeyId: '00000000-0000-0000-0000-000000000000', friendlyName: 'x' }),
  )
  out.deleteAtAal1 = dataOf(await client._deletePasskey({ passkeyId: args.passkeyId }))
  out.setSession = answerOf(await client.setSession(args.aal2Session))
  out.deleteAtAal2 = dataOf(await client._deletePasskey({ passkeyId: args.passkeyId }))
  out.listAfterDelete = dataOf(await client._listPasskeys())
  return out
}

// --- MFA (TOTP) ------------------------------------------------------------------------------
// The codes come from the test (computed in Python from the secret enrolled in an earlier run):
// a scenario hands its session back (`session`) and the next run resumes it (args.session).

function claimsOf(accessToken) {
  const payload = JSON.parse(Buffer.from(accessToken.split('.')[1], 'base64url').toString())
  return { aal: payload.aal, amr: (payload.amr ?? []).map((entry) => entry.method).sort() }
}

async function resumed(args, ctx) {
  const client = makeClient(args, ctx)
  const { error } = await client.setSession(args.session)
  if (error) throw new Error(`setSession failed: ${JSON.stringify(errorOf(error))}`)
  return client
}

function handedSession(session) {
  return { access_token: session.access_token, refresh_token: session.refresh_token }
}

function mfaScenarios() {
  return {
    // Sign in, read the levels, enroll a TOTP factor: its id and secret, and the session.
    async mfaEnroll(args, ctx) {
      const client = makeClient(args, ctx)
      const session = await signedIn(client, args.email, args.password)
      const out = { before: (await client.mfa.getAuthenticatorAssuranceLevel()).data }
      const { data, error } = await client.mfa.enroll({ factorType: 'totp', friendlyName: args.friendlyName })
      out.enroll = { error: errorOf(error), id: data?.id, type: data?.type, friendlyName: data?.friendly_name }
      out.qrCode = data?.totp?.qr_code
      out.secret = data?.totp?.secret
      out.listed = (await client.mfa.listFactors()).data
      out.session = handedSession(session)
      return out
    },

    // challengeAndVerify with args.code; the same code again (a replay); args.wrongCode; the
    // levels, the factors; a refresh; a new sign-in's levels; what it may change at aal1.
    async mfaVerify(args, ctx) {
      const client = await resumed(args, ctx)
      const out = {}
      const verified = await client.mfa.challengeAndVerify({ factorId: args.factorId, code: args.code })
      out.verify = { error: errorOf(verified.error), recoveryCodes: verified.data?.recovery_codes ?? null }
      out.verifiedClaims = verified.data ? claimsOf(verified.data.access_token) : null
      out.replay = errorOf((await client.mfa.challengeAndVerify({ factorId: args.factorId, code: args.code })).error)
      out.wrong = errorOf((await client.mfa.challengeAndVerify({ factorId: args.factorId, code: args.wrongCode })).error)
      out.level = (await client.mfa.getAuthenticatorAssuranceLevel()).data
      const jwt = (await client.getSession()).data.session.access_token
      out.levelFromJwt = (await client.mfa.getAuthenticatorAssuranceLevel(jwt)).data
      out.verifiedTotp = (await client.mfa.listFactors()).data.totp.map((factor) => factor.id)
      const refreshed = await client.refreshSession()
      out.refreshedClaims = claimsOf(refreshed.data.session.access_token)
      const other = makeClient(args, ctx)
      await signedIn(other, args.email, args.password)
      out.otherLevel = (await other.mfa.getAuthenticatorAssuranceLevel()).data
      out.otherPassword = errorOf((await other.updateUser({ password: args.newPassword, current_password: args.password })).error)
      out.otherEmail = errorOf((await other.updateUser({ email: args.newEmail })).error)
      out.otherUnenroll = errorOf((await other.mfa.unenroll({ factorId: args.factorId })).error)
      out.session = handedSession((await client.getSession()).data.session)
      return out
    },

    // At aal2: change the password, unenroll the factor; the levels after a refresh.
    async mfaUnenroll(args, ctx) {
      const client = await resumed(args, ctx)
      const out = {}
      out.password = errorOf((await client.updateUser({ password: args.newPassword, current_password: args.password })).error)
      const removed = await client.mfa.unenroll({ factorId: args.factorId })
      out.unenroll = { error: errorOf(removed.error), id: removed.data?.id }
      await client.refreshSession()
      out.level = (await client.mfa.getAuthenticatorAssuranceLevel()).data
      out.factors = (await client.mfa.listFactors()).data.all
      return out
    },

    // challengeAndVerify once per args.codes item: each answer's error.
    async mfaVerifyAttempts(args, ctx) {
      const client = await resumed(args, ctx)
      const errors = []
      for (const code of args.codes) {
        errors.push(errorOf((await client.mfa.challengeAndVerify({ factorId: args.factorId, code })).error))
      }
      return { errors }
    },
  }
}
