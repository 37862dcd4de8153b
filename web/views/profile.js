/** The user's profile: display name, avatar, password. */
import { api, describeError } from '../api.js';
import { avatar, errorLine, field, h } from '../dom.js';
import { shell } from './shell.js';

export async function profileView() {
  const user = await api.call('GET', '/users/profile');
  api.setUser(user);
  const main = h('main', { className: 'page narrow', id: 'main' });
  const render = (current) => {
    const picture = h('div', { className: 'profile-avatar' }, avatar(current, 'lg'));
    const nameError = errorLine();
    const nameForm = h(
      'form',
      { className: 'card', id: 'profile-form' },
      h('h1', {}, 'Profile'),
      picture,
      h('p', { className: 'muted' }, `@${current.username} · ${current.email ?? ''}`),
      field('Display name', h('input', { name: 'nickname', maxLength: 64, value: current.nickname ?? '', autocomplete: 'nickname' })),
      nameError,
      h('button', { type: 'submit', className: 'primary' }, 'Save'),
    );
    nameForm.onsubmit = async (event) => {
      event.preventDefault();
      try {
        const updated = await api.call('PUT', '/users/profile', { nickname: nameForm.elements.nickname.value });
        api.setUser(updated);
        render(updated);
        main.querySelector('#profile-saved')?.focus();
      } catch (failure) {
        nameError.textContent = describeError(failure);
      }
    };

    const avatarError = errorLine();
    const fileInput = h('input', { type: 'file', name: 'file', accept: 'image/png,image/jpeg,image/gif,image/webp' });
    const avatarForm = h(
      'form',
      { className: 'card', id: 'avatar-form' },
      h('h2', {}, 'Picture'),
      field('Image (PNG, JPEG, GIF or WebP, up to 5 MiB)', fileInput),
      avatarError,
      h('button', { type: 'submit' }, 'Upload picture'),
    );
    avatarForm.onsubmit = async (event) => {
      event.preventDefault();
      if (!fileInput.files.length) {
        avatarError.textContent = 'Choose an image first.';
        return;
      }
      const body = new FormData();
      body.append('file', fileInput.files[0]);
      try {
        const updated = await api.upload('/users/upload-avatar', body);
        api.setUser(updated);
        render(updated);
      } catch (failure) {
        avatarError.textContent = describeError(failure);
      }
    };

    const passwordError = errorLine();
    const passwordForm = h(
      'form',
      { className: 'card', id: 'password-form' },
      h('h2', {}, 'Password'),
      field('Current password', h('input', { name: 'old_password', type: 'password', required: true, autocomplete: 'current-password' })),
      field('New password', h('input', { name: 'new_password', type: 'password', required: true, minLength: 8, autocomplete: 'new-password' })),
      passwordError,
      h('button', { type: 'submit' }, 'Change password'),
    );
    passwordForm.onsubmit = async (event) => {
      event.preventDefault();
      const data = Object.fromEntries(new FormData(passwordForm));
      try {
        api.adoptTokens(await api.call('POST', '/users/change-password', data));
        passwordForm.reset();
        passwordError.textContent = 'Password changed. Other devices are signed out.';
      } catch (failure) {
        passwordError.textContent = failure.code === 1004 ? 'The current password is wrong.' : describeError(failure);
      }
    };
    main.replaceChildren(nameForm, avatarForm, passwordForm);
    shell(main, { title: 'Profile' });
  };
  render(user);
}
