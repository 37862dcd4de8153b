/** Sign in and sign up. After either, the user goes where they were headed (an invite link's
 * meeting, say) or home. */
import { api, describeError } from '../api.js';
import { errorLine, field, h } from '../dom.js';
import { go } from '../router.js';
import { shell } from './shell.js';

/** Where to go once signed in: kept while the user signs in or signs up first. */
const NEXT_KEY = 'huiyi.next';

export function rememberNext(path) {
  sessionStorage.setItem(NEXT_KEY, path);
}

function goNext() {
  const next = sessionStorage.getItem(NEXT_KEY);
  sessionStorage.removeItem(NEXT_KEY);
  go(next && next.startsWith('/') ? next : '/home', { replace: true });
}

function submitting(form, busy) {
  for (const control of form.elements) control.disabled = busy;
  form.setAttribute('aria-busy', String(busy));
}

export function loginView() {
  if (api.signedIn) return goNext();
  const error = errorLine();
  const form = h(
    'form',
    { className: 'card auth', id: 'login-form', noValidate: false },
    h('h1', {}, 'Sign in'),
    field('Username or email', h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true })),
    field('Password', h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
    h('label', { className: 'check' }, h('input', { type: 'checkbox', name: 'remember' }), ' Keep me signed in on this device'),
    error,
    h('button', { type: 'submit', className: 'primary' }, 'Sign in'),
    h('p', {}, 'New here? ', h('a', { href: '#/signup' }, 'Create an account')),
  );
  form.onsubmit = async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    submitting(form, true);
    error.textContent = '';
    try {
      await api.login(data.get('username').trim(), data.get('password'), data.get('remember') === 'on');
      goNext();
    } catch (failure) {
      error.textContent = failure.code === 1003 || failure.code === 1004 ? 'Wrong username or password.' : describeError(failure);
      submitting(form, false);
      form.elements.password.select();
    }
  };
  shell(h('main', { className: 'page narrow', id: 'main' }, form), { title: 'Sign in' });
}

export function signupView() {
  if (api.signedIn) return goNext();
  const error = errorLine();
  const form = h(
    'form',
    { className: 'card auth', id: 'signup-form' },
    h('h1', {}, 'Create your account'),
    field(
      'Username',
      h('input', { name: 'username', autocomplete: 'username', required: true, minLength: 3, maxLength: 32, pattern: '[A-Za-z][A-Za-z0-9_.\\-]{2,31}' }),
      '3–32 characters: a letter first, then letters, digits, _ . or -',
    ),
    field('Display name', h('input', { name: 'nickname', autocomplete: 'nickname', maxLength: 64 }), 'Shown to the others in meetings'),
    field('Email', h('input', { name: 'email', type: 'email', autocomplete: 'email', required: true })),
    field(
      'Password',
      h('input', { name: 'password', type: 'password', autocomplete: 'new-password', required: true, minLength: 8, maxLength: 128 }),
      'At least 8 characters, with a letter and a digit',
    ),
    error,
    h('button', { type: 'submit', className: 'primary' }, 'Sign up'),
    h('p', {}, 'Have an account? ', h('a', { href: '#/login' }, 'Sign in')),
  );
  form.onsubmit = async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    if (!data.nickname.trim()) delete data.nickname;
    submitting(form, true);
    error.textContent = '';
    try {
      await api.register(data);
      await api.login(data.username, data.password);
      goNext();
    } catch (failure) {
      error.textContent =
        failure.code === 1001 ? 'That username is taken.' : failure.code === 1002 ? 'That email is already registered.' : describeError(failure);
      submitting(form, false);
    }
  };
  shell(h('main', { className: 'page narrow', id: 'main' }, form), { title: 'Sign up' });
}
