/**
 * A meeting's route, `#/m/ID`: the pre-join screen (camera preview, microphone level, device
 * pickers, join muted), the meeting password only when the server asks for it, the waiting room,
 * the meeting itself, and the screen after it (left, ended, removed).
 *
 * While the user is in a meeting, sessionStorage remembers which one and with what devices (never
 * a password: the invite code the join answers to members is kept instead), so a reload goes
 * straight back in. Leaving forgets it.
 */
import { api, describeError } from '../api.js';
import { $, avatar, displayName, errorLine, field, h } from '../dom.js';
import { HuiyiClient } from '../huiyi.js';
import { codeFor, forgetCode, rememberCode } from '../invite.js';
import { levelMeter, listDevices, openDevices, stopStream } from '../meeting/devices.js';
import { openRoom } from '../meeting/room.js';
import { markReady } from '../ready.js';
import { go } from '../router.js';
import { rememberNext } from './auth.js';
import { shell } from './shell.js';

const ACTIVE_KEY = 'huiyi.active';

function activeFor(meetingId) {
  try {
    const active = JSON.parse(sessionStorage.getItem(ACTIVE_KEY) ?? 'null');
    return active?.meeting_id === meetingId ? active : null;
  } catch {
    return null;
  }
}

function relayWanted() {
  return new URLSearchParams(location.search).get('relay') === '1';
}

export async function meetingView({ id }) {
  const meetingId = Number(id);
  if (!Number.isSafeInteger(meetingId) || meetingId <= 0) return go('/home', { replace: true });
  if (!api.signedIn) {
    rememberNext(`/m/${meetingId}`);
    return go('/login', { replace: true });
  }
  const flow = new MeetingFlow(meetingId);
  await flow.start();
  return () => flow.cleanup();
}

class MeetingFlow {
  constructor(meetingId) {
    this.meetingId = meetingId;
    this.meeting = null;
    this.stream = null;
    this.stopMeter = () => {};
    this.room = null;
    this.client = null;
    this.choices = { audio: true, video: true, micId: null, cameraId: null };
    this.lastCode = codeFor(meetingId);
  }

  cleanup() {
    this.stopMeter();
    if (this.client && this.client.state !== 'closed') this.client.close();
    this.room?.destroy();
    stopStream(this.stream);
  }

  async start() {
    try {
      this.meeting = await api.call('GET', `/meetings/${this.meetingId}`);
    } catch (error) {
      // Not a member yet (403): the join decides. Unknown: say so.
      if (error.code === 2001 || error.status === 404) return this.message('Meeting not found', 'Check the link you were given.');
      if (error.status !== 403) return this.message('Cannot open the meeting', describeError(error));
    }
    if (this.meeting && (this.meeting.status === 'ended' || this.meeting.status === 'cancelled')) {
      return this.message(`This meeting has ${this.meeting.status === 'ended' ? 'ended' : 'been cancelled'}`, this.meeting.title);
    }
    const active = activeFor(this.meetingId);
    if (active) {
      // A reload while in the meeting: back in at once, with the same devices and microphone state.
      this.choices = active.choices;
      await this.openPreview();
      return this.join({ rejoining: true });
    }
    return this.prejoin();
  }

  message(title, text, actions = []) {
    shell(
      h(
        'main',
        { className: 'page narrow', id: 'main' },
        h('section', { className: 'card', id: 'meeting-message' }, h('h1', {}, title), text ? h('p', {}, text) : null, h('div', { className: 'actions' }, actions, h('a', { className: 'button', href: '#/home' }, 'Back to meetings'))),
      ),
      { title },
    );
  }

  async openPreview() {
    this.stopMeter();
    stopStream(this.stream);
    const { stream, problems } = await openDevices({ ...this.choices, audio: true, video: this.meeting?.meeting_type !== 'audio' });
    this.stream = stream;
    for (const track of stream.getAudioTracks()) track.enabled = this.choices.audio;
    for (const track of stream.getVideoTracks()) track.enabled = this.choices.video;
    return problems;
  }

  async prejoin(problemText = '', needPassword = false) {
    this.stopMeter();
    const problems = this.stream ? [] : await this.openPreview();
    const devices = await listDevices().catch(() => ({ audioinput: [], videoinput: [] }));
    const me = api.user ?? {};
    const video = h('video', { autoplay: true, playsInline: true, muted: true, id: 'preview-video', 'aria-label': 'Your camera preview' });
    video.muted = true;
    video.srcObject = this.stream;
    const cameraOff = h('div', { className: 'preview-off' }, avatar(me, 'lg'), h('p', {}, 'Camera is off'));
    const meter = h('meter', { id: 'mic-level', min: 0, max: 1, low: 0.3, high: 0.8, optimum: 0.5, value: 0, 'aria-label': 'Microphone level' });
    this.stopMeter = levelMeter(this.stream, meter);
    const preview = h('div', { className: 'preview' }, video, cameraOff);
    const refresh = () => {
      const videoOn = this.choices.video && this.stream.getVideoTracks().length > 0;
      preview.classList.toggle('video-off', !videoOn);
      micToggle.setAttribute('aria-pressed', String(!this.choices.audio));
      micToggle.textContent = this.choices.audio ? 'Microphone on' : 'Microphone off';
      camToggle.setAttribute('aria-pressed', String(!this.choices.video));
      camToggle.textContent = this.choices.video ? 'Camera on' : 'Camera off';
      for (const track of this.stream.getAudioTracks()) track.enabled = this.choices.audio;
      for (const track of this.stream.getVideoTracks()) track.enabled = this.choices.video;
    };
    const micToggle = h('button', { type: 'button', id: 'prejoin-mic', className: 'toggle', onclick: () => { this.choices.audio = !this.choices.audio; refresh(); } });
    const camToggle = h('button', { type: 'button', id: 'prejoin-cam', className: 'toggle', onclick: () => { this.choices.video = !this.choices.video; refresh(); } });
    camToggle.hidden = this.meeting?.meeting_type === 'audio';
    const picker = (kind, label, key) => {
      const inputs = devices[kind];
      const current = this.stream.getTracks().find((track) => track.kind === (kind === 'audioinput' ? 'audio' : 'video'))?.getSettings().deviceId;
      const select = h(
        'select',
        { name: key, disabled: !inputs.length },
        inputs.length ? inputs.map((device, index) => h('option', { value: device.deviceId, selected: device.deviceId === current }, device.label || `${label} ${index + 1}`)) : h('option', {}, `No ${label.toLowerCase()} found`),
      );
      select.onchange = async () => {
        this.choices[key] = select.value;
        await this.openPreview();
        video.srcObject = this.stream;
        this.stopMeter = levelMeter(this.stream, meter);
        refresh();
      };
      return field(label, select);
    };
    const password = h('input', { name: 'password', type: 'password', autocomplete: 'off', maxLength: 64 });
    const passwordField = field('Meeting password', password, 'This meeting asks for a password');
    passwordField.hidden = !needPassword;
    const error = errorLine();
    error.textContent = problemText || (problems.length ? `Some devices could not be opened: ${problems.map((p) => p.message || p.name).join('; ')}` : '');
    const joinButton = h('button', { type: 'submit', className: 'primary', id: 'join-button' }, 'Join meeting');
    const form = h(
      'form',
      { className: 'card prejoin-form', id: 'prejoin-form' },
      h('h1', {}, this.meeting?.title ?? 'Join the meeting'),
      h('p', { className: 'muted' }, 'Joining as ', h('strong', {}, displayName(me))),
      picker('audioinput', 'Microphone', 'micId'),
      h('div', { className: 'meter-row' }, h('span', { 'aria-hidden': 'true' }, 'Level'), meter),
      this.meeting?.meeting_type === 'audio' ? null : picker('videoinput', 'Camera', 'cameraId'),
      passwordField,
      error,
      joinButton,
    );
    form.onsubmit = (event) => {
      event.preventDefault();
      joinButton.disabled = true;
      this.join({ password: password.value || undefined }).finally(() => {
        joinButton.disabled = false;
      });
    };
    shell(
      h('main', { className: 'page prejoin', id: 'main' }, h('section', { className: 'preview-box', 'aria-label': 'Preview' }, preview, h('div', { className: 'preview-controls' }, micToggle, camToggle)), form),
      { title: this.meeting?.title ?? 'Join' },
    );
    refresh();
    if (needPassword) password.focus();
    else joinButton.focus();
  }

  /** The REST join (with the invite code, or the password typed), then the socket. */
  async join({ password, rejoining = false } = {}) {
    const code = codeFor(this.meetingId) ?? this.lastCode;
    let joined;
    try {
      joined = await api.call('POST', `/meetings/${this.meetingId}/join`, { password, invite_code: code ?? undefined });
    } catch (error) {
      sessionStorage.removeItem(ACTIVE_KEY);
      if (error.code === 2004) return this.prejoin(password ? 'That password is not right.' : '', true);
      if (error.code === 2002) return this.message('This meeting is over', this.meeting?.title);
      if (error.code === 2003) return this.prejoin('The meeting is full.');
      if (error.status === 403) return this.message('You cannot join this meeting', error.message);
      return rejoining ? this.prejoin(describeError(error)) : this.prejoin(describeError(error), Boolean(password));
    }
    this.meeting = joined.meeting;
    // Members see the invite code: it is what joining again needs (a reload, a reconnect).
    if (joined.meeting.invite_code) {
      rememberCode(this.meetingId, joined.meeting.invite_code);
      this.lastCode = joined.meeting.invite_code;
    }
    sessionStorage.setItem(ACTIVE_KEY, JSON.stringify({ meeting_id: this.meetingId, choices: this.choices }));
    this.stopMeter();
    const client = new HuiyiClient({
      token: api.token,
      userId: api.user.user_id,
      meetingId: this.meetingId,
      iceTransportPolicy: relayWanted() ? 'relay' : 'all',
      rejoin: async () => {
        await api.call('POST', `/meetings/${this.meetingId}/join`, { invite_code: codeFor(this.meetingId) ?? this.lastCode ?? undefined });
        client.renewToken(api.token);
      },
    });
    this.client = client;
    window.huiyi = client;
    const connected = client.connect();
    if (joined.participant.status === 'waiting') this.waiting(client);
    try {
      await connected;
    } catch (error) {
      sessionStorage.removeItem(ACTIVE_KEY);
      if (error.code === 403 || error.code === 4003) return this.message('You were not let in', 'A host turned your request down.');
      return this.prejoin(describeError(error));
    }
    // The host's arrival starts a scheduled meeting, so ending it later says "ended".
    if (joined.participant.role === 'host' && this.meeting.status === 'scheduled') {
      this.meeting = await api.call('POST', `/meetings/${this.meetingId}/start`).catch(() => this.meeting);
    }
    this.enter(client, connected);
  }

  waiting(client) {
    const video = h('video', { autoplay: true, playsInline: true, muted: true, 'aria-label': 'Your camera preview' });
    video.muted = true;
    video.srcObject = this.stream;
    const cancel = h('button', { type: 'button', onclick: () => { client.close(); sessionStorage.removeItem(ACTIVE_KEY); go('/home'); } }, 'Leave');
    shell(
      h(
        'main',
        { className: 'page narrow', id: 'main' },
        h(
          'section',
          { className: 'card waiting', id: 'waiting-room', 'aria-live': 'polite' },
          h('div', { className: 'preview small-preview' }, video),
          h('h1', {}, 'Waiting for the host to let you in'),
          h('p', {}, this.meeting?.title ? `“${this.meeting.title}”` : `Meeting ${this.meetingId}`),
          h('p', { className: 'muted' }, 'You will join as soon as a host admits you. Keep this page open.'),
          h('div', { className: 'spinner', 'aria-hidden': 'true' }),
          cancel,
        ),
      ),
      { title: 'Waiting' },
    );
  }

  enter(client, connected) {
    const root = $('#app');
    const startMuted = { audio: !this.choices.audio, video: !this.choices.video };
    this.room = openRoom({
      root,
      client,
      api,
      meeting: this.meeting,
      me: api.user,
      connected,
      startMuted,
      publish: async (c) => {
        const tracks = this.stream?.getTracks().filter((track) => track.readyState === 'live') ?? [];
        if (!tracks.length) return null;
        return c.publish({ stream: this.stream });
      },
      onClosed: ({ code, reason }) => this.closed(code, reason),
      onMediaChoice: ({ audio, video }) => {
        if (!sessionStorage.getItem(ACTIVE_KEY)) return;
        this.choices = { ...this.choices, audio, video };
        sessionStorage.setItem(ACTIVE_KEY, JSON.stringify({ meeting_id: this.meetingId, choices: this.choices }));
      },
    });
    this.room.ready.then(
      () => markReady(client),
      (error) => {
        console.error(error);
        this.room?.leave();
      },
    );
  }

  /** After the meeting, for this user: the secrets kept for it are forgotten. */
  closed(code, reason) {
    this.room = null;
    this.client = null;
    this.stream = null;
    sessionStorage.removeItem(ACTIVE_KEY);
    forgetCode(this.meetingId);
    const rejoin = h('button', {
      type: 'button',
      className: 'primary',
      onclick: () => {
        rememberCode(this.meetingId, this.lastCode);
        this.start();
      },
    }, 'Join again');
    if (code === 4000) {
      const cancelled = /cancel/.test(reason);
      return this.message(cancelled ? 'The meeting was cancelled' : 'The meeting has ended', this.meeting?.title);
    }
    if (code === 4003) return this.message('You were removed from the meeting', 'A host removed you. Ask them to add you again.');
    if (code === 1000) return this.message('You left the meeting', this.meeting?.title, [rejoin]);
    return this.message('You were disconnected', reason || 'The connection to the meeting was lost.', [rejoin]);
  }
}
