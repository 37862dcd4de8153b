/**
 * The meeting app's entry: routes to its screens (views/), or, for browser tests, straight into a
 * meeting.
 *
 * Browser tests skip signing in with
 * `?token=…&user_id=…&meeting_id=…&autostart=1[&audio=0][&video=0][&simulcast=0][&codec=vp9|av1[&svc=L3T3_KEY]][&width=…&height=…]`
 * (after joining the meeting over REST themselves) and drive the page through `window.huiyi` (the
 * client) and `window.huiyiReady`, which settles once the room is joined and the publish answer
 * applied, and rejects on the first error before that. `&relay=1` (also with the app) sends all
 * media through the TURN server, as on a network that allows nothing else. An invite link
 * `/?meeting=ID&code=CODE` opens that meeting's pre-join screen.
 */
import { Api, api } from './api.js';
import { $, h, mount } from './dom.js';
import { HuiyiClient } from './huiyi.js';
import { takeInviteFromAddress } from './invite.js';
import { openRoom } from './meeting/room.js';
import { armReady, markFailed, markReady } from './ready.js';
import { go, otherwise, route, start } from './router.js';
import { loginView, signupView } from './views/auth.js';
import { homeView } from './views/home.js';
import { meetingView } from './views/join.js';
import { profileView } from './views/profile.js';
import { scheduleView } from './views/schedule.js';
import { shell } from './views/shell.js';

const params = new URLSearchParams(location.search);

function flag(name, fallback) {
  const value = params.get(name);
  return value === null ? fallback : value !== '0' && value !== 'false';
}

function positiveNumber(name, fallback) {
  const value = Number(params.get(name));
  return value > 0 ? value : fallback;
}

/** Tests: a given token, user and meeting; no accounts screens, no sound (no user gesture). */
function autostart() {
  armReady();
  const userId = Number(params.get('user_id'));
  const client = new HuiyiClient({
    token: params.get('token'),
    userId,
    meetingId: Number(params.get('meeting_id')),
    iceTransportPolicy: flag('relay', false) ? 'relay' : 'all',
  });
  window.huiyi = client;
  const fail = (error) => {
    $('#status').textContent = `Error: ${error.message}`;
    markFailed(error);
  };
  client.addEventListener('error', ({ detail }) => fail(new Error(`${detail.message} (${detail.code})`)));
  client.addEventListener('close', ({ detail }) => fail(new Error(`signaling closed (${detail.code}) ${detail.reason}`)));
  const connected = client.connect();
  const media = { audio: flag('audio', true), video: flag('video', true) };
  const room = openRoom({
    root: $('#app'),
    client,
    api: new Api({ token: params.get('token') }),
    meeting: null,
    me: { user_id: userId },
    connected,
    audible: false,
    publish: (c) =>
      media.audio || media.video
        ? c.publish({
            ...media,
            simulcast: flag('simulcast', true),
            codec: params.get('codec') ?? 'vp8',
            scalabilityMode: params.get('svc') ?? 'L3T3_KEY',
            width: positiveNumber('width', 1280),
            height: positiveNumber('height', 720),
          })
        : null,
    onClosed: ({ code, reason }) => {
      $('#status').textContent = `Disconnected (${code}) ${reason ?? ''}`;
    },
  });
  connected.then(() => {
    // Names come with the join reply.
    room.ready.then(() => markReady(client), fail);
  }, fail);
}

function notFound() {
  shell(h('main', { className: 'page narrow', id: 'main' }, h('section', { className: 'card' }, h('h1', {}, 'Page not found'), h('a', { href: '#/home' }, 'Back to meetings'))), { title: 'Not found' });
}

function main() {
  if (params.get('autostart') === '1') {
    autostart();
    return;
  }
  armReady();
  const invited = takeInviteFromAddress(params);
  route('/', () => go(api.signedIn ? '/home' : '/login', { replace: true }));
  route('/login', loginView);
  route('/signup', signupView);
  route('/home', () => (api.signedIn ? homeView() : go('/login', { replace: true })));
  route('/new', () => (api.signedIn ? scheduleView() : go('/login', { replace: true })));
  route('/profile', () => (api.signedIn ? profileView() : go('/login', { replace: true })));
  route('/m/:id', meetingView);
  otherwise(notFound);
  api.addEventListener('signedout', () => {
    if (!location.hash.startsWith('#/login') && !location.hash.startsWith('#/signup')) go('/login');
  });
  // Another tab signed out: this one follows.
  addEventListener('storage', (event) => {
    if (event.key === 'huiyi.session' && event.newValue === null && api.signedIn && !sessionStorage.getItem('huiyi.session')) api.signOut();
  });
  if (invited && !location.hash) go(`/m/${invited}`, { replace: true });
  start().catch((error) => mount($('#app'), h('p', { className: 'form-error', role: 'alert' }, error.message)));
}

main();
