/**
 * The REST client of the app: the envelope, the signed-in session and its tokens.
 *
 * Tokens live in sessionStorage, so a reload keeps the user signed in and closing the tab forgets
 * them; "keep me signed in" also keeps them in localStorage, for the next visit. The access token
 * is refreshed a minute before it expires and once more when the server says it has (401), so a
 * signed-in page never asks for the password again. Refresh tokens are single use (using one twice
 * revokes the whole login), so tabs sharing one take turns through a Web Lock and re-read the
 * stored pair before refreshing: a tab that waited uses the pair the other tab got.
 */
import { HuiyiError } from './huiyi.js';

const KEY = 'huiyi.session';
const RENEW_BEFORE_MS = 60_000;

function tokenExpiry(token) {
  try {
    const payload = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return typeof payload.exp === 'number' ? payload.exp * 1000 : null;
  } catch {
    return null;
  }
}

function readStored() {
  for (const storage of [sessionStorage, localStorage]) {
    try {
      const value = JSON.parse(storage.getItem(KEY) ?? 'null');
      if (value?.access_token && value?.refresh_token) return { ...value, remember: storage === localStorage };
    } catch {
      storage.removeItem(KEY);
    }
  }
  return null;
}

async function withRefreshLock(work) {
  if (navigator.locks?.request) return navigator.locks.request('huiyi-token-refresh', work);
  return work();
}

/** Events: `tokens` (a new access token: hand it to a live meeting client), `signedout`. */
export class Api extends EventTarget {
  #session = null;
  #timer = null;
  #refreshing = null;

  /** @param {{token?: string}} [fixed] a fixed access token (browser tests): no session kept. */
  constructor(fixed) {
    super();
    if (fixed?.token) {
      this.#session = { access_token: fixed.token, refresh_token: null, user: null, fixed: true };
    } else {
      this.#session = readStored();
      this.#schedule();
    }
  }

  get signedIn() {
    return Boolean(this.#session);
  }

  get user() {
    return this.#session?.user ?? null;
  }

  get token() {
    return this.#session?.access_token ?? null;
  }

  #store() {
    const session = this.#session;
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
    if (!session || session.fixed) return;
    const { remember, ...kept } = session;
    sessionStorage.setItem(KEY, JSON.stringify(kept));
    if (remember) localStorage.setItem(KEY, JSON.stringify(kept));
  }

  #schedule() {
    clearTimeout(this.#timer);
    const expiry = this.#session && !this.#session.fixed ? tokenExpiry(this.#session.access_token) : null;
    if (expiry === null) return;
    const delay = Math.max(0, expiry - Date.now() - RENEW_BEFORE_MS);
    this.#timer = setTimeout(() => this.refresh().catch(() => {}), delay);
  }

  async login(username, password, remember = false) {
    const session = await this.call('POST', '/auth/login', { username, password }, { auth: false });
    this.#session = { ...session, remember };
    this.#store();
    this.#schedule();
    return session.user;
  }

  register(fields) {
    return this.call('POST', '/auth/register', fields, { auth: false });
  }

  /** Forgets the session here (and in other tabs, through the stores). */
  signOut() {
    clearTimeout(this.#timer);
    this.#session = null;
    this.#store();
    this.dispatchEvent(new CustomEvent('signedout'));
  }

  /** A pair the server answered outside a refresh (a password change revokes the old one). */
  adoptTokens(pair) {
    if (!this.#session) return;
    this.#session = { ...this.#session, access_token: pair.access_token, refresh_token: pair.refresh_token };
    this.#store();
    this.#schedule();
    this.dispatchEvent(new CustomEvent('tokens', { detail: { access_token: pair.access_token } }));
  }

  setUser(user) {
    if (!this.#session) return;
    this.#session.user = user;
    this.#store();
  }

  /** A new token pair, one tab at a time; a pair another tab got meanwhile is used as it is. */
  refresh() {
    if (!this.#session?.refresh_token) return Promise.reject(new HuiyiError('Not signed in', 401));
    this.#refreshing ??= withRefreshLock(async () => {
      const used = this.#session?.refresh_token;
      const stored = readStored();
      if (stored && stored.refresh_token !== used && tokenExpiry(stored.access_token) > Date.now() + RENEW_BEFORE_MS) {
        this.#session = { ...stored, remember: this.#session?.remember ?? stored.remember };
      } else {
        try {
          const pair = await this.#raw('POST', '/auth/refresh', {}, used);
          this.#session = { ...this.#session, ...pair };
        } catch (error) {
          if (error.code === 401 || error.code === 1005 || error.code === 403) this.signOut();
          throw error;
        }
      }
      this.#store();
      this.#schedule();
      this.dispatchEvent(new CustomEvent('tokens', { detail: { access_token: this.#session.access_token } }));
      return this.#session.access_token;
    }).finally(() => {
      this.#refreshing = null;
    });
    return this.#refreshing;
  }

  /**
   * One API call; answers the envelope's `data`, throws HuiyiError with its code. An expired
   * access token is refreshed and the call made once more.
   */
  async call(method, path, body, { auth = true } = {}) {
    if (!auth) return this.#raw(method, path, body, null);
    try {
      return await this.#raw(method, path, body, this.token);
    } catch (error) {
      const expired = error.code === 1005 || (error.code === 401 && !this.#session?.fixed);
      if (!expired || !this.#session?.refresh_token) throw error;
      await this.refresh();
      return this.#raw(method, path, body, this.token);
    }
  }

  async upload(path, formData) {
    const send = () =>
      fetch(`/api/v1${path}`, { method: 'POST', body: formData, headers: { Authorization: `Bearer ${this.token}` } });
    let response = await send();
    if (response.status === 401 && this.#session?.refresh_token) {
      await this.refresh();
      response = await send();
    }
    return unwrap(response);
  }

  async #raw(method, path, body, token) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return unwrap(response);
  }
}

async function unwrap(response) {
  const envelope = await response.json().catch(() => null);
  if (!response.ok || !envelope || (envelope.code >= 1000 && envelope.code < 10000)) {
    const error = new HuiyiError(
      envelope?.message ?? `${response.status} ${response.statusText}`,
      envelope?.code ?? response.status,
      envelope?.data,
    );
    error.status = response.status;
    throw error;
  }
  return envelope.data;
}

/** A readable sentence for an API error, with the field errors of a 400 if there are any. */
export function describeError(error) {
  const fields = error?.data?.errors;
  if (Array.isArray(fields) && fields.length) {
    return fields.map((entry) => `${entry.field ?? entry.loc?.join('.') ?? ''}: ${entry.message ?? entry.msg}`).join('; ');
  }
  if (error?.code === 429 || error?.status === 429) return 'Too many attempts; wait a moment and try again.';
  if (error instanceof TypeError) return 'The server cannot be reached. Check your connection.';
  return error?.message ?? String(error);
}

export const api = new Api();
