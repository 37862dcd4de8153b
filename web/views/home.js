/** Home: the meetings happening now, coming up and past, each one click from joining. */
import { api, describeError } from '../api.js';
import { h, when } from '../dom.js';
import { inviteLink } from '../invite.js';
import { shell } from './shell.js';

function copyButton(link, label = 'Copy invite link') {
  const button = h('button', { type: 'button', className: 'small' }, label);
  button.onclick = async () => {
    try {
      await navigator.clipboard.writeText(link);
      button.textContent = 'Copied';
    } catch {
      prompt('Copy this invite link', link);
    }
    setTimeout(() => (button.textContent = label), 2000);
  };
  return button;
}

function meetingCard(meeting, { past = false } = {}) {
  const link = meeting.invite_code ? inviteLink(meeting) : null;
  const status = h('span', { className: `badge status-${meeting.status}` }, meeting.status === 'ongoing' ? 'Live' : meeting.status);
  return h(
    'li',
    { className: 'meeting-card', dataset: { meetingId: meeting.meeting_id } },
    h('div', { className: 'meeting-main' }, h('h3', {}, meeting.title), status),
    h(
      'p',
      { className: 'muted' },
      past ? `Ended ${when(meeting.end_time)}` : when(meeting.start_time),
      meeting.has_password ? ' · password' : '',
      meeting.settings?.enable_waiting_room ? ' · waiting room' : '',
    ),
    meeting.description ? h('p', {}, meeting.description) : null,
    past
      ? null
      : h(
          'div',
          { className: 'actions' },
          h('a', { className: 'button primary small', href: `#/m/${meeting.meeting_id}` }, meeting.status === 'ongoing' ? 'Join' : 'Open'),
          link && copyButton(link),
        ),
  );
}

function section(title, items, options, empty) {
  return h(
    'section',
    { className: 'meeting-list', 'aria-label': title },
    h('h2', {}, title),
    items.length ? h('ul', {}, items.map((meeting) => meetingCard(meeting, options))) : h('p', { className: 'muted' }, empty),
  );
}

export async function homeView() {
  const main = h('main', { className: 'page', id: 'main' }, h('p', { className: 'muted' }, 'Loading your meetings…'));
  shell(main, { title: 'Meetings' });
  try {
    const now = new Date().toISOString();
    const [ongoing, ready, upcoming, history] = await Promise.all([
      api.call('GET', '/meetings?status=ongoing&page_size=50'),
      api.call('GET', `/meetings?status=scheduled&start_to=${encodeURIComponent(now)}&page_size=50`),
      api.call('GET', '/my/meetings/upcoming?page_size=50'),
      api.call('GET', '/my/meetings/history?page_size=20'),
    ]);
    main.replaceChildren(
      h(
        'div',
        { className: 'home-head' },
        h('h1', {}, `Hello, ${api.user?.nickname || api.user?.username || ''}`),
        h('a', { className: 'button primary', href: '#/new' }, 'New meeting'),
      ),
      section('Now', [...ongoing.items, ...ready.items], {}, 'Nothing is happening right now.'),
      section('Upcoming', upcoming.items, {}, 'No meetings scheduled. Create one with “New meeting”.'),
      section('Past', history.items, { past: true }, 'No past meetings yet.'),
    );
  } catch (error) {
    main.replaceChildren(h('p', { className: 'form-error', role: 'alert' }, describeError(error)));
  }
}

export { copyButton };
