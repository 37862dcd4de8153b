/** The frame of every screen but the meeting itself: the header with the user's menu, and the
 * screen's content in #app. */
import { api } from '../api.js';
import { $, avatar, displayName, h, mount } from '../dom.js';
import { go } from '../router.js';

export function signOut() {
  api.signOut();
  go('/login');
}

/** Shows `content` as the page; `title` goes into the document title. */
export function shell(content, { title } = {}) {
  document.title = title ? `${title} · huiyi` : 'huiyi';
  document.body.classList.remove('in-meeting');
  const nav = $('#nav');
  const user = api.user;
  mount(
    nav,
    user
      ? [
          h('a', { href: '#/home' }, 'Meetings'),
          h('a', { href: '#/new', className: 'button primary' }, 'New meeting'),
          h('a', { href: '#/profile', className: 'who', 'aria-label': `Profile of ${displayName(user)}` }, avatar(user, 'sm'), h('span', {}, displayName(user))),
          h('button', { type: 'button', className: 'link', onclick: signOut }, 'Sign out'),
        ]
      : [h('a', { href: '#/login' }, 'Sign in'), h('a', { href: '#/signup', className: 'button' }, 'Sign up')],
  );
  mount($('#app'), content);
  content.querySelector('[autofocus]')?.focus();
}
