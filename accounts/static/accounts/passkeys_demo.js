// The passkeys demo page (accounts/demo_views.py): plain fetch against /auth/v1, sending the
// bodies @supabase/auth-js sends (GoTrueClient "Passkey Methods") and serializing credentials
// as its lib/webauthn.js does (PublicKeyCredential.toJSON() when the browser has it, else by
// hand). Results go to the DOM (ids and data-* attributes) for the browser test to read.
'use strict'

const app = document.getElementById('app')
const AUTH_URL = app.dataset.authUrl
const ANON_KEY = app.dataset.anonKey
const state = { session: null, passkeys: [] }

// --- base64url, as auth-js's lib/base64url.js -------------------------------------------------

function base64UrlToBytes(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4)
  return Uint8Array.from(atob(padded), (ch) => ch.charCodeAt(0))
}

function bytesToBase64Url(buffer) {
  const bytes = new Uint8Array(buffer)
  let binary = ''
  for (const byte of bytes) binary += String.fromCharCode(byte)
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

// --- lib/webauthn.js: options in, credentials out -------------------------------------------

function deserializeCreationOptions(options) {
  if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === 'function') {
    return PublicKeyCredential.parseCreationOptionsFromJSON(options)
  }
  const { challenge, user, excludeCredentials, ...rest } = options
  const result = { ...rest, challenge: base64UrlToBytes(challenge).buffer, user: { ...user, id: base64UrlToBytes(user.id).buffer } }
  if (excludeCredentials && excludeCredentials.length > 0) {
    result.excludeCredentials = excludeCredentials.map((cred) => ({
      ...cred,
      id: base64UrlToBytes(cred.id).buffer,
      type: cred.type || 'public-key',
    }))
  }
  return result
}

function deserializeRequestOptions(options) {
  if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === 'function') {
    return PublicKeyCredential.parseRequestOptionsFromJSON(options)
  }
  const { challenge, allowCredentials, ...rest } = options
  const result = { ...rest, challenge: base64UrlToBytes(challenge).buffer }
  if (allowCredentials && allowCredentials.length > 0) {
    result.allowCredentials = allowCredentials.map((cred) => ({
      ...cred,
      id: base64UrlToBytes(cred.id).buffer,
      type: cred.type || 'public-key',
    }))
  }
  return result
}

function serializeCreation(credential) {
  if (typeof credential.toJSON === 'function') return credential.toJSON()
  return {
    id: credential.id,
    rawId: credential.id,
    response: {
      attestationObject: bytesToBase64Url(credential.response.attestationObject),
      clientDataJSON: bytesToBase64Url(credential.response.clientDataJSON),
    },
    type: 'public-key',
    clientExtensionResults: credential.getClientExtensionResults(),
    authenticatorAttachment: credential.authenticatorAttachment ?? undefined,
  }
}

function serializeRequest(credential) {
  if (typeof credential.toJSON === 'function') return credential.toJSON()
  const response = credential.response
  return {
    id: credential.id,
    rawId: credential.id,
    response: {
      authenticatorData: bytesToBase64Url(response.authenticatorData),
      clientDataJSON: bytesToBase64Url(response.clientDataJSON),
      signature: bytesToBase64Url(response.signature),
      userHandle: response.userHandle ? bytesToBase64Url(response.userHandle) : undefined,
    },
    type: 'public-key',
    clientExtensionResults: credential.getClientExtensionResults(),
    authenticatorAttachment: credential.authenticatorAttachment ?? undefined,
  }
}

// --- /auth/v1 -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || body?.msg || `HTTP ${status}`)
    this.status = status
    this.code = body?.code || body?.error_code || `http_${status}`
  }
}

async function api(method, path, { body, token } = {}) {
  const headers = { apikey: ANON_KEY, 'X-Supabase-Api-Version': '2024-01-01' }
  if (body !== undefined) headers['Content-Type'] = 'application/json;charset=UTF-8'
  if (token) headers.Authorization = `Bearer ${token}`
  const response = await fetch(`${AUTH_URL}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await response.text()
  const parsed = text ? JSON.parse(text) : null
  if (!response.ok) throw new ApiError(response.status, parsed)
  return parsed
}

function bearer() {
  if (!state.session) throw new ApiError(401, { code: 'session_missing', message: 'Sign in first' })
  return state.session.access_token
}

// --- the DOM -------------------------------------------------------------------------------

function claimsOf(token) {
  return JSON.parse(new TextDecoder().decode(base64UrlToBytes(token.split('.')[1])))
}

function showSession(session) {
  state.session = session
  const el = document.getElementById('session')
  if (!session) {
    Object.assign(el.dataset, { signedIn: 'false', aal: '', amr: '', sessionId: '', userId: '' })
    document.getElementById('session-text').textContent = 'signed out'
    return
  }
  const claims = claimsOf(session.access_token)
  const amr = (claims.amr || []).map((entry) => entry.method).join(',')
  Object.assign(el.dataset, {
    signedIn: 'true',
    aal: claims.aal || '',
    amr,
    sessionId: claims.session_id || '',
    userId: claims.sub || '',
  })
  document.getElementById('session-text').textContent = `${claims.email} (${claims.aal}; amr ${amr})`
}

function showPasskeys(items) {
  state.passkeys = items
  const list = document.getElementById('passkeys')
  list.replaceChildren(
    ...items.map((item) => {
      const li = document.createElement('li')
      li.dataset.id = item.id
      li.dataset.name = item.friendly_name || ''
      li.dataset.lastUsed = item.last_used_at || ''
      li.textContent = `${item.friendly_name || '(unnamed)'} ${item.id}`
      return li
    }),
  )
  list.dataset.count = String(items.length)
}

function showRecoveryCodes(codes) {
  const list = document.getElementById('recovery-codes')
  list.replaceChildren(
    ...codes.map((code) => {
      const li = document.createElement('li')
      li.textContent = code
      return li
    }),
  )
  list.dataset.count = String(codes.length)
}

async function step(name, action) {
  const status = document.getElementById('status')
  const error = document.getElementById('error')
  Object.assign(status.dataset, { step: name, state: 'running' })
  status.textContent = `${name}: running`
  error.dataset.code = ''
  error.textContent = ''
  try {
    const result = await action()
    document.getElementById('log').textContent = JSON.stringify(result ?? null, null, 2)
    Object.assign(status.dataset, { state: 'ok' })
    status.textContent = `${name}: ok`
  } catch (exc) {
    Object.assign(status.dataset, { state: 'error' })
    status.textContent = `${name}: failed`
    error.dataset.code = exc.code || exc.name || 'error'
    error.textContent = `${exc.code || exc.name}: ${exc.message}`
  }
}

// --- the steps -----------------------------------------------------------------------------

async function signInWithPassword() {
  const session = await api('POST', '/token?grant_type=password', {
    body: {
      email: document.getElementById('email').value,
      password: document.getElementById('password').value,
      gotrue_meta_security: {},
    },
  })
  showSession(session)
  return { user: session.user.id }
}

async function registerPasskey() {
  const token = bearer()
  const options = await api('POST', '/passkeys/registration/options', { body: {}, token })
  const credential = await navigator.credentials.create({ publicKey: deserializeCreationOptions(options.options) })
  const created = await api('POST', '/passkeys/registration/verify', {
    body: { challenge_id: options.challenge_id, credential: serializeCreation(credential) },
    token,
  })
  showRecoveryCodes(created.recovery_codes || [])
  await listPasskeys()
  return created
}

async function listPasskeys() {
  const items = await api('GET', '/passkeys', { token: bearer() })
  showPasskeys(items)
  return items
}

function firstPasskey() {
  if (state.passkeys.length === 0) throw new ApiError(404, { code: 'no_passkey', message: 'List the passkeys first' })
  return state.passkeys[0]
}

async function renamePasskey() {
  const updated = await api('PATCH', `/passkeys/${firstPasskey().id}`, {
    body: { friendly_name: document.getElementById('friendly-name').value },
    token: bearer(),
  })
  await listPasskeys()
  return updated
}

async function deletePasskey() {
  await api('DELETE', `/passkeys/${firstPasskey().id}`, { token: bearer() })
  return listPasskeys()
}

async function signOut() {
  await api('POST', '/logout?scope=global', { token: bearer() })
  showSession(null)
  showPasskeys([])
  showRecoveryCodes([]) // shown once: not left on screen for the next person
  return null
}

async function assertion(options) {
  const credential = await navigator.credentials.get({ publicKey: deserializeRequestOptions(options.options) })
  return serializeRequest(credential)
}

async function signInWithPasskey() {
  // auth-js: {gotrue_meta_security: {captcha_token}}, the undefined token dropped by JSON.stringify.
  const options = await api('POST', '/passkeys/authentication/options', { body: { gotrue_meta_security: {} } })
  const credential = await assertion(options)
  const session = await api('POST', '/passkeys/authentication/verify', {
    body: { challenge_id: options.challenge_id, credential },
  })
  showSession(session)
  return { user: session.user.id }
}

async function secondFactor() {
  const token = bearer()
  const options = await api('POST', '/passkeys/mfa/options', { body: {}, token })
  const credential = await assertion(options)
  const session = await api('POST', '/passkeys/mfa/verify', {
    body: { challenge_id: options.challenge_id, credential },
    token,
  })
  showSession(session)
  return { user: session.user.id }
}

const STEPS = {
  'sign-in-password': signInWithPassword,
  register: registerPasskey,
  list: listPasskeys,
  rename: renamePasskey,
  delete: deletePasskey,
  'sign-out': signOut,
  'sign-in-passkey': signInWithPasskey,
  'second-factor': secondFactor,
}

for (const [id, action] of Object.entries(STEPS)) {
  document.getElementById(id).addEventListener('click', () => step(id, action))
}
document.getElementById('status').dataset.ready = 'true'
