/**
 * The meeting screen: the stage of tiles, the toolbar, the side panel (chat, people, devices,
 * connection details) and notices, wired to one HuiyiClient. It knows nothing of routes: the
 * caller says what happens when the meeting is over for this user (`onClosed`).
 */
import { describeError } from '../api.js';
import { $, displayName, h, mount } from '../dom.js';
import { inviteLink } from '../invite.js';
import { Chat } from './chat.js';
import { DebugPanel } from './debug.js';
import { Captions } from './captions.js';
import { clearServerState, showServerState } from './mediastate.js';
import { Moderation } from './moderation.js';
import { NoiseSuppression } from './noise.js';
import { Notices } from './notices.js';
import { People } from './people.js';
import { QualityMonitor } from './quality.js';
import { DeviceSettings } from './settings.js';
import { Stage } from './stage.js';
import { Tile } from './tile.js';

function toolButton({ id, label, icon, pressed, onclick, badge }) {
  const button = h(
    'button',
    { type: 'button', id, className: 'tool', 'aria-label': label, title: label, onclick },
    h('span', { className: `glyph ${icon}`, 'aria-hidden': 'true' }),
    h('span', { className: 'tool-label' }, label),
    badge ?? null,
  );
  if (pressed !== undefined) button.setAttribute('aria-pressed', String(pressed));
  return button;
}

function setLabel(button, label) {
  button.setAttribute('aria-label', label);
  button.title = label;
  button.querySelector('.tool-label').textContent = label;
}

/**
 * @param {object} options
 * @param {HTMLElement} options.root where the screen goes
 * @param {import('../huiyi.js').HuiyiClient} options.client
 * @param {import('../api.js').Api} options.api
 * @param {object|null} options.meeting the meeting as the join answered it (null: unknown)
 * @param {object} options.me the user (user_id, username, nickname, avatar_url)
 * @param {Promise<object>} options.connected the socket's join reply
 * @param {(client) => Promise<MediaStream|null>} options.publish starts publishing; the local stream
 * @param {{audio?: boolean, video?: boolean}} [options.startMuted] kinds to start muted
 * @param {boolean} [options.audible] play the others' sound (after a user gesture only)
 * @param {(how: {code: number, reason: string}) => void} options.onClosed
 * @param {(on: {audio: boolean, video: boolean}) => void} [options.onMediaChoice] the user turned
 *   their microphone or camera on or off (to be kept for a reload)
 * @returns {{ready: Promise<void>, destroy: () => void}}
 */
export function openRoom({ root, client, api, meeting, me, connected, publish, startMuted = {}, audible = true, onClosed, onMediaChoice }) {
  const meetingId = client.meetingId;
  const notices = new Notices();
  const moderation = new Moderation(api, meetingId);
  const stageElement = h('section', { className: 'stage grid-view', id: 'stage', 'aria-label': 'Videos' });
  const stage = new Stage(stageElement);
  const connState = h('span', { className: 'conn-state', id: 'conn-state', role: 'status', hidden: true });
  const settings = meeting?.settings ?? {};
  const names = new Map([[me.user_id, me]]);
  const nameOf = (userId, fallback) => displayName(names.get(userId) ?? client.participants.get(userId) ?? { username: fallback, user_id: userId });
  const captions = new Captions({ moderation, nameOf, onError: (error) => notices.show(describeError(error)) });
  const noise = new NoiseSuppression({
    client,
    moderation,
    myId: me.user_id,
    onChange: () => {
      for (const tile of stage.tiles.values()) tile.setNoiseSuppressed(noise.isOn(tile.local ? me.user_id : tile.person.user_id));
    },
    onError: (error) => notices.show(describeError(error)),
  });

  document.body.classList.add('in-meeting');
  document.title = `${meeting?.title ?? `Meeting ${meetingId}`} · huiyi`;

  // --- tiles ---------------------------------------------------------------------------------
  const ownTile = stage.add(new Tile('me', { ...me, role: client.self?.role }, { local: true }));
  ownTile.element.id = 'local-tile';
  ownTile.video.id = 'local-video';

  function personTile(person) {
    const key = `user:${person.user_id}`;
    names.set(person.user_id, { ...names.get(person.user_id), ...person });
    const tile = stage.get(key);
    if (tile) {
      tile.setPerson(person);
      return tile;
    }
    const added = stage.add(new Tile(key, person));
    added.setNoiseSuppressed(noise.isOn(person.user_id));
    return added;
  }

  function syncParticipants() {
    const present = new Set();
    for (const person of client.participants.values()) {
      if (person.user_id === me.user_id) continue;
      present.add(`user:${person.user_id}`);
      personTile(person);
    }
    for (const key of [...stage.tiles.keys()]) {
      if (key.startsWith('user:') && !present.has(key)) stage.remove(key);
    }
  }

  client.addEventListener('joined', ({ detail }) => {
    ownTile.setPerson({ role: detail.self?.role, media_state: detail.self?.media_state });
    captions.allowSwitch(['host', 'moderator'].includes(detail.self?.role));
    ownTile.element.dataset.peerId = detail.session_id;
    syncParticipants();
    noise.joined();
  });
  client.addEventListener('participant-joined', ({ detail }) => {
    if (detail.user_id === me.user_id) return;
    const isNew = !stage.get(`user:${detail.user_id}`);
    personTile(detail);
    if (isNew) notices.show(`${displayName(detail)} joined.`);
  });
  client.addEventListener('participant-left', ({ detail }) => {
    if (detail.user_id === me.user_id) return;
    const tile = stage.get(`user:${detail.user_id}`);
    if (tile) notices.show(`${displayName(tile.person)} left${detail.reason === 'removed' ? ' (removed)' : ''}.`);
    stage.remove(`user:${detail.user_id}`);
    stage.remove(`screen:${detail.user_id}`);
    captions.drop(detail.user_id);
    noise.drop(detail.user_id);
  });
  client.addEventListener('caption', ({ detail }) => captions.add(detail));
  client.addEventListener('remotestream', ({ detail }) => {
    const person = client.participants.get(detail.user_id) ?? names.get(detail.user_id) ?? { user_id: detail.user_id };
    let tile;
    if (detail.source === 'screen') {
      tile = stage.get(`screen:${detail.user_id}`) ?? stage.add(new Tile(`screen:${detail.user_id}`, person, { screen: true }));
      notices.show(`${displayName(person)} is sharing their screen.`);
    } else {
      tile = personTile(person);
    }
    tile.element.dataset.peerId = detail.peer_id;
    tile.element.dataset.streamId = detail.stream_id;
    tile.setStream(detail.stream, { audible: audible && detail.source !== 'screen' });
    stage.layout();
  });
  client.addEventListener('remotestreamended', ({ detail }) => {
    if (detail.source === 'screen') stage.remove(`screen:${detail.user_id}`);
    else stage.get(`user:${detail.user_id}`)?.setStream(null);
  });
  for (const type of ['remotetrack', 'remotetrackended']) {
    client.addEventListener(type, ({ detail }) => {
      stage.get(`${detail.source === 'screen' ? 'screen' : 'user'}:${detail.user_id}`)?.refreshVideo();
    });
  }
  const showSpeaker = (speaker) => {
    const key = speaker.user_id === me.user_id ? 'me' : `user:${speaker.user_id}`;
    for (const tile of stage.tiles.values()) tile.setSpeaking(tile.key === key);
    stage.setSpeaker(key);
  };
  client.addEventListener('activespeaker', ({ detail }) => showSpeaker(detail));
  if (client.activeSpeaker) showSpeaker(client.activeSpeaker); // named before this view was listening
  client.addEventListener('mediastate', ({ detail }) => {
    if (detail.user_id === undefined || !detail.media_state) {
      showServerState(detail, { notices, captions, noise, nameOf });
      return;
    }
    if (detail.user_id === me.user_id) {
      ownTile.setPerson({ media_state: detail.media_state });
      return;
    }
    const tile = stage.get(`user:${detail.user_id}`);
    tile?.setPerson({ media_state: detail.media_state });
    tile?.refreshVideo();
  });
  client.addEventListener('mutedby', ({ detail }) => {
    const who = detail.by === 0 ? 'The server' : nameOf(detail.by);
    notices.show(`${who} turned your ${detail.kind === 'audio' ? 'microphone' : 'camera'} off.`);
    syncToolbar();
  });

  // --- side panel: chat, people, devices, details -------------------------------------------------
  const chatBadge = h('span', { className: 'count', hidden: true, 'aria-hidden': 'true' });
  const peopleBadge = h('span', { className: 'count', hidden: true, 'aria-hidden': 'true' });
  const chat = new Chat({
    client,
    api,
    meetingId,
    myId: me.user_id,
    nameOf,
    onUnread: (count) => {
      chatBadge.hidden = count === 0;
      chatBadge.textContent = String(count);
      setLabel(chatButton, count ? `Chat (${count} unread)` : 'Chat');
    },
  });
  const people = new People({ api, client, meetingId, myId: me.user_id, moderation, notices });
  const devices = new DeviceSettings(client);
  const debug = new DebugPanel(client);
  const panels = { chat: ['Chat', chat.element], people: ['People', people.element], devices: ['Devices', devices.element], details: ['Details', debug.element] };
  const panelTitle = h('h2', { className: 'panel-title', id: 'panel-title' });
  const panelBody = h('div', { className: 'panel-content' });
  const sidePanel = h(
    'aside',
    { className: 'side-panel', id: 'side-panel', hidden: true, 'aria-labelledby': 'panel-title' },
    h('div', { className: 'panel-head' }, panelTitle, h('button', { type: 'button', className: 'small ghost', 'aria-label': 'Close panel', onclick: () => openPanel(null) }, '×')),
    panelBody,
  );
  let openName = null;
  function openPanel(name) {
    openName = openName === name ? null : name;
    sidePanel.hidden = !openName;
    chat.setOpen(openName === 'chat');
    for (const [panel, button] of [['chat', chatButton], ['people', peopleButton]]) button.setAttribute('aria-expanded', String(openName === panel));
    if (openName) {
      panelTitle.textContent = panels[openName][0];
      mount(panelBody, panels[openName][1]);
      if (openName === 'people') people.refresh();
      if (openName === 'devices') devices.render();
      if (openName === 'chat') chat.input.focus();
    }
    stage.layout();
  }
  people.addEventListener('waiting', ({ detail }) => {
    const count = detail.people.length;
    peopleBadge.hidden = count === 0;
    peopleBadge.textContent = String(count);
    setLabel(peopleButton, count ? `People (${count} waiting)` : 'People');
  });
  people.addEventListener('roles', ({ detail }) => {
    ownTile.setPerson({ role: detail.role });
    captions.allowSwitch(people.canModerate);
    notices.show(`You are now ${detail.role === 'participant' ? 'a participant' : `the ${detail.role}`}.`);
    renderMenu();
  });
  people.addEventListener('list', ({ detail }) => {
    for (const person of detail.list) {
      names.set(person.user_id, person);
      stage.get(`user:${person.user_id}`)?.setPerson(person);
    }
  });

  // --- toolbar --------------------------------------------------------------------------------
  const tracksOf = (kind) => client.localStream?.getTracks().filter((track) => track.kind === kind) ?? [];
  const isOn = (kind) => tracksOf(kind).some((track) => track.enabled);
  async function toggle(kind) {
    const muted = isOn(kind);
    try {
      await client.setMuted(kind, muted);
    } catch (error) {
      notices.show(describeError(error));
    }
    syncToolbar();
  }
  const micButton = toolButton({ id: 'mute-audio', label: 'Mute microphone', icon: 'mic', pressed: false, onclick: () => toggle('audio') });
  const camButton = toolButton({ id: 'mute-video', label: 'Turn camera off', icon: 'cam', pressed: false, onclick: () => toggle('video') });
  micButton.setAttribute('aria-keyshortcuts', 'M');
  camButton.setAttribute('aria-keyshortcuts', 'V');
  micButton.dataset.kind = 'audio';
  camButton.dataset.kind = 'video';
  const shareButton = toolButton({
    id: 'share-screen',
    label: 'Share screen',
    icon: 'share',
    pressed: false,
    onclick: async () => {
      try {
        if (client.screenStream) await client.stopScreenShare();
        else await client.startScreenShare();
      } catch (error) {
        if (error.name !== 'NotAllowedError') notices.show(describeError(error));
      }
    },
  });
  shareButton.hidden = settings.enable_screen_share === false || !navigator.mediaDevices?.getDisplayMedia;
  const chatButton = toolButton({ id: 'toggle-chat', label: 'Chat', icon: 'chat', badge: chatBadge, onclick: () => openPanel('chat') });
  chatButton.setAttribute('aria-controls', 'side-panel');
  chatButton.hidden = settings.enable_chat === false;
  const peopleButton = toolButton({ id: 'toggle-people', label: 'People', icon: 'people', badge: peopleBadge, onclick: () => openPanel('people') });
  peopleButton.setAttribute('aria-controls', 'side-panel');
  const layoutButton = toolButton({
    id: 'toggle-layout',
    label: 'Speaker view',
    icon: 'layout',
    onclick: () => {
      stage.setMode(stage.mode === 'grid' ? 'speaker' : 'grid');
      setLabel(layoutButton, stage.mode === 'grid' ? 'Speaker view' : 'Grid view');
    },
  });
  const menu = h('div', { className: 'menu', id: 'more-menu', role: 'menu', hidden: true });
  const moreButton = toolButton({ id: 'more', label: 'More', icon: 'more', onclick: () => toggleMenu() });
  moreButton.setAttribute('aria-haspopup', 'menu');
  moreButton.setAttribute('aria-expanded', 'false');
  moreButton.setAttribute('aria-controls', 'more-menu');
  const leaveButton = h('button', { type: 'button', id: 'leave', className: 'tool leave', onclick: () => leave() }, h('span', { className: 'tool-label' }, 'Leave'));

  function toggleMenu(open = menu.hidden) {
    if (open) renderMenu();
    menu.hidden = !open;
    moreButton.setAttribute('aria-expanded', String(open));
    if (open) menu.querySelector('button')?.focus();
  }
  menu.addEventListener('keydown', (event) => {
    const items = [...menu.querySelectorAll('button')];
    const index = items.indexOf(document.activeElement);
    if (event.key === 'Escape') {
      toggleMenu(false);
      moreButton.focus();
    } else if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
      event.preventDefault();
      items[(index + (event.key === 'ArrowDown' ? 1 : items.length - 1)) % items.length]?.focus();
    }
  });
  const item = (id, label, run) =>
    h('button', { type: 'button', role: 'menuitem', id, onclick: async () => {
      toggleMenu(false);
      try {
        await run();
      } catch (error) {
        notices.show(describeError(error));
      }
    } }, label);
  function renderMenu() {
    const moderator = people.canModerate;
    const host = people.myRole === 'host';
    const recording = !$('#recording').hidden;
    const locked = Boolean(settings.enable_waiting_room);
    mount(
      menu,
      item('menu-devices', 'Devices', () => openPanel('devices')),
      item('menu-details', 'Connection details', () => openPanel('details')),
      meeting?.invite_code &&
        item('menu-invite', 'Copy invite link', async () => {
          await navigator.clipboard.writeText(inviteLink(meeting));
          notices.show('Invite link copied.');
        }),
      moderator &&
        item('menu-lock', locked ? 'Unlock meeting' : 'Lock meeting', async () => {
          const updated = await moderation.setLocked(!locked);
          Object.assign(settings, updated.settings);
          notices.show(updated.settings.enable_waiting_room ? 'Meeting locked: new people wait until admitted.' : 'Meeting unlocked.');
        }),
      moderator &&
        item('menu-record', recording ? 'Stop recording' : 'Start recording', () =>
          recording ? moderation.stopRecording() : moderation.startRecording(meeting ?? { settings }),
        ),
      moderator &&
        item('menu-noise', noise.room ? 'Noise suppression off for everyone' : 'Noise suppression for everyone', () => noise.setForEveryone(!noise.room)),
      host &&
        item('menu-end', 'End meeting for all', async () => {
          if (confirm('End the meeting for everyone?')) await moderation.endForAll();
        }),
    );
  }

  function syncToolbar() {
    const micOn = isOn('audio');
    const camOn = isOn('video');
    micButton.hidden = tracksOf('audio').length === 0;
    noise.toggle.hidden = micButton.hidden;
    camButton.hidden = tracksOf('video').length === 0;
    micButton.setAttribute('aria-pressed', String(!micOn));
    camButton.setAttribute('aria-pressed', String(!camOn));
    micButton.classList.toggle('off', !micOn);
    camButton.classList.toggle('off', !camOn);
    setLabelKeep(micButton, micOn ? 'Mute microphone' : 'Unmute microphone', 'mic');
    setLabelKeep(camButton, camOn ? 'Turn camera off' : 'Turn camera on', 'cam');
    onMediaChoice?.({ audio: micOn, video: camOn });
    ownTile.setAudioOn(micOn || tracksOf('audio').length === 0);
    ownTile.refreshVideo();
    const sharing = Boolean(client.screenStream);
    shareButton.setAttribute('aria-pressed', String(sharing));
    setLabel(shareButton, sharing ? 'Stop sharing' : 'Share screen');
  }
  function setLabelKeep(button, label, icon) {
    button.replaceChildren(h('span', { className: `glyph ${icon}`, 'aria-hidden': 'true' }), h('span', { className: 'tool-label' }, label));
    button.setAttribute('aria-label', label);
    button.title = label;
  }
  client.addEventListener('screenshare', ({ detail }) => {
    if (detail.active) stage.add(new Tile('screen:me', me, { local: true, screen: true })).setStream(detail.stream);
    else stage.remove('screen:me');
    syncToolbar();
  });

  const toolbar = h(
    'div',
    { className: 'toolbar', role: 'toolbar', 'aria-label': 'Meeting controls' },
    h('div', { className: 'tool-group' }, micButton, noise.toggle, camButton, shareButton),
    h('div', { className: 'tool-group' }, chatButton, peopleButton, captions.toggle, layoutButton, h('div', { className: 'menu-anchor' }, moreButton, menu)),
    h('div', { className: 'tool-group' }, leaveButton),
  );

  const screen = h(
    'div',
    { className: 'room', id: 'meeting' },
    h('div', { className: 'room-top' }, h('h1', { className: 'room-title' }, meeting?.title ?? `Meeting ${meetingId}`), connState),
    h('div', { className: 'room-body' }, stageElement, sidePanel),
    captions.element,
    toolbar,
    notices.element,
  );
  mount(root, screen);
  stage.layout();
  document.addEventListener('keydown', onKey);
  // Shortcuts, as in other meeting apps: M the microphone, V the camera (not while typing).
  function onKey(event) {
    if (event.key === 'Escape' && !menu.hidden) toggleMenu(false);
    const typing = event.target.closest?.('input, textarea, select, [contenteditable]');
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const kind = { m: 'audio', v: 'video' }[event.key.toLowerCase()];
    if (kind && tracksOf(kind).length) {
      event.preventDefault();
      toggle(kind);
    }
  }
  document.addEventListener('click', onOutside);
  function onOutside(event) {
    if (!menu.hidden && !event.target.closest?.('.menu-anchor')) toggleMenu(false);
  }

  // --- connection life ------------------------------------------------------------------------
  const showConn = (text) => {
    connState.hidden = !text;
    connState.textContent = text ?? '';
    screen.classList.toggle('reconnecting', Boolean(text));
    const status = $('#status');
    if (status) status.textContent = text ?? 'In the meeting';
  };
  client.addEventListener('reconnecting', () => showConn('Reconnecting…'));
  client.addEventListener('reconnected', () => {
    showConn(null);
    syncToolbar();
  });
  const tokensListener = ({ detail }) => client.renewToken(detail.access_token);
  api.addEventListener('tokens', tokensListener);

  const quality = new QualityMonitor(client, ({ users, own, lines }) => {
    for (const [userId, level] of users) stage.get(`user:${userId}`)?.setQuality(level);
    ownTile.setQuality(own);
    debug.show(lines);
  });

  let destroyed = false;
  function destroy() {
    if (destroyed) return;
    destroyed = true;
    quality.stop();
    people.stop();
    stage.destroy();
    clearServerState();
    api.removeEventListener('tokens', tokensListener);
    document.removeEventListener('keydown', onKey);
    document.removeEventListener('click', onOutside);
    document.body.classList.remove('in-meeting');
  }
  client.addEventListener('close', ({ detail }) => {
    destroy();
    onClosed(detail);
  });
  function leave() {
    client.close();
  }

  showConn('Connecting…');
  const ready = (async () => {
    await connected;
    showConn(null);
    ownTile.setPerson({ role: client.self?.role });
    const stream = await publish(client);
    if (stream) ownTile.setStream(stream);
    for (const kind of ['audio', 'video']) {
      if (startMuted[kind] && tracksOf(kind).length) await client.setMuted(kind, true);
    }
    syncToolbar();
    quality.start();
    people.start();
    if (settings.enable_chat !== false) chat.loadHistory();
  })();
  return { ready, destroy, leave };
}
