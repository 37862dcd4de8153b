/** Create or schedule a meeting: title, time, type, limits, password and settings; then its invite
 * link to pass on, and a button to go in. */
import { api, describeError } from '../api.js';
import { errorLine, field, h, localInputValue, mount } from '../dom.js';
import { inviteLink } from '../invite.js';
import { copyButton } from './home.js';
import { shell } from './shell.js';

const SETTINGS = [
  ['enable_waiting_room', 'Waiting room: a host lets people in', false],
  ['mute_on_join', 'Microphones off when people join', false],
  ['enable_chat', 'Chat', true],
  ['enable_screen_share', 'Screen sharing', true],
  ['enable_recording', 'Recording allowed', false],
];

function checkbox(name, label, checked) {
  return h('label', { className: 'check' }, h('input', { type: 'checkbox', name, checked }), ` ${label}`);
}

export function scheduleView() {
  const error = errorLine();
  const start = new Date();
  const form = h(
    'form',
    { className: 'card', id: 'meeting-form' },
    h('h1', {}, 'New meeting'),
    field('Title', h('input', { name: 'title', required: true, maxLength: 200, autofocus: true, value: `${api.user?.nickname || api.user?.username || 'My'}’s meeting` })),
    field('Description', h('textarea', { name: 'description', maxLength: 2000, rows: 2 })),
    h(
      'div',
      { className: 'row' },
      field('Starts', h('input', { name: 'start_time', type: 'datetime-local', required: true, value: localInputValue(start) })),
      field('Ends (optional)', h('input', { name: 'end_time', type: 'datetime-local' })),
    ),
    h(
      'div',
      { className: 'row' },
      field('Kind', h('select', { name: 'meeting_type' }, h('option', { value: 'video' }, 'Video'), h('option', { value: 'audio' }, 'Audio only'))),
      field('At most', h('input', { name: 'max_participants', type: 'number', min: 2, max: 1000, value: 100 }), 'people at once'),
    ),
    field(
      'Password (optional)',
      h('input', { name: 'password', type: 'password', minLength: 4, maxLength: 64, autocomplete: 'new-password' }),
      'Asked of people who come without the invite link',
    ),
    h('fieldset', {}, h('legend', {}, 'Settings'), SETTINGS.map(([name, label, on]) => checkbox(name, label, on))),
    error,
    h('button', { type: 'submit', className: 'primary' }, 'Create meeting'),
  );
  const main = h('main', { className: 'page narrow', id: 'main' }, form);
  form.onsubmit = async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = {
      title: data.get('title').trim(),
      description: data.get('description').trim() || undefined,
      start_time: new Date(data.get('start_time')).toISOString(),
      end_time: data.get('end_time') ? new Date(data.get('end_time')).toISOString() : undefined,
      meeting_type: data.get('meeting_type'),
      max_participants: Number(data.get('max_participants')),
      password: data.get('password') || undefined,
      settings: Object.fromEntries(SETTINGS.map(([name]) => [name, data.get(name) === 'on'])),
    };
    error.textContent = '';
    form.querySelector('button[type=submit]').disabled = true;
    try {
      const meeting = await api.call('POST', '/meetings', body);
      mount(main, created(meeting));
    } catch (failure) {
      error.textContent = describeError(failure);
      form.querySelector('button[type=submit]').disabled = false;
    }
  };
  shell(main, { title: 'New meeting' });
}

function created(meeting) {
  const link = inviteLink(meeting);
  return h(
    'section',
    { className: 'card', id: 'meeting-created' },
    h('h1', {}, 'Meeting created'),
    h('p', {}, h('strong', {}, meeting.title)),
    field('Invite link', h('input', { id: 'invite-link', readOnly: true, value: link, onfocus: (event) => event.target.select() }), 'Anyone with this link can ask to join'),
    h(
      'div',
      { className: 'actions' },
      copyButton(link),
      h('a', { className: 'button primary', href: `#/m/${meeting.meeting_id}`, id: 'join-created' }, 'Join now'),
      h('a', { className: 'button', href: '#/home' }, 'Back to meetings'),
    ),
  );
}
