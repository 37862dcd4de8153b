/**
 * The meeting page. Interactive use goes through the login form; an invite link
 * `/?meeting=ID&code=CODE` fills in the meeting and its invite code, so signing in joins it. Browser
 * tests skip the form with
 * `?token=…&user_id=…&meeting_id=…&autostart=1[&audio=0][&video=0][&simulcast=0][&width=…&height=…]`
 * and drive the page through `window.huiyi` (the client) and `window.huiyiReady`. `&relay=1` (also
 * with the form) sends all media through the TURN server, as on a network that allows nothing else.
 */
import { HuiyiClient } from './huiyi.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const autostart = params.get('autostart') === '1';

let resolveReady;
let rejectReady;
let readySettled = false;

/**
 * `window.huiyiReady` settles once the room is joined and the publish answer applied, and rejects on
 * the first error before that. A settled one is replaced when the form is tried again; a pending one
 * is kept, since a test may already be awaiting it.
 */
function armReady() {
  if (window.huiyiReady && !readySettled) return;
  readySettled = false;
  window.huiyiReady = new Promise((resolve, reject) => {
    resolveReady = (value) => {
      readySettled = true;
      resolve(value);
    };
    rejectReady = (error) => {
      readySettled = true;
      reject(error);
    };
  });
  // Only tests await it; a failed interactive session is reported on the page, not as an unhandled rejection.
  window.huiyiReady.catch(() => {});
}

armReady();

const STATS_INTERVAL_MS = 1000;
/** user_id → the caption line of that speaker. */
const captionLines = new Map();

function showCaptions(on) {
  $('captions').hidden = !on;
  $('captions-toggle').setAttribute('aria-pressed', String(on));
  if (on) return;
  for (const line of captionLines.values()) line.remove();
  captionLines.clear();
}

function flag(name, fallback) {
  const value = params.get(name);
  return value === null ? fallback : value !== '0' && value !== 'false';
}

function positiveNumber(name, fallback) {
  const value = Number(params.get(name));
  return value > 0 ? value : fallback;
}

function showStatus(text) {
  $('status').textContent = text;
}

function fail(error) {
  showStatus(`Error: ${error.message}`);
  rejectReady(error);
}

/** Interactive sessions go back to the form so the user can sign in or join again. */
function showLogin() {
  if (autostart) return;
  $('meeting').hidden = true;
  $('login').hidden = false;
  $('login').querySelector('button').disabled = false;
}

function participantLabel(client, userId) {
  const participant = client.participants.get(userId);
  const name = participant?.nickname || participant?.username;
  return name ? `user ${userId} (${name})` : `user ${userId}`;
}

/**
 * @param {boolean} audible play remote audio. Only after a user gesture: without one the browser
 *   refuses to autoplay sound, which is why the video elements themselves always stay muted.
 */
function createClient({ token, refreshToken, userId, meetingId, audible }) {
  const iceTransportPolicy = flag('relay', false) ? 'relay' : 'all';
  const client = new HuiyiClient({ token, refreshToken, userId, meetingId, iceTransportPolicy });
  window.huiyi = client;
  const tiles = new Map();

  client.addEventListener('error', ({ detail }) => fail(new Error(`${detail.message} (${detail.code})`)));
  client.addEventListener('close', ({ detail }) => {
    rejectReady(new Error(`signaling closed (${detail.code}) ${detail.reason}`));
    showStatus(`Disconnected${detail.reason ? `: ${detail.reason}` : ''}`);
    stopStats();
    $('recording').hidden = true;
    $('live').hidden = true;
    showCaptions(false);
    for (const tile of tiles.values()) tile.remove();
    tiles.clear();
    showLogin();
  });
  client.addEventListener('joined', ({ detail }) => {
    showStatus(`In meeting ${client.meetingId} as ${participantLabel(client, client.userId)}`);
    $('local-tile').dataset.peerId = detail.session_id;
    $('captions-toggle').hidden = !['host', 'moderator'].includes(detail.self?.role);
  });
  client.addEventListener('participant-left', ({ detail }) => captionLines.get(detail.user_id)?.remove());

  client.addEventListener('remotestream', ({ detail }) => {
    const tile = document.createElement('figure');
    tile.className = 'tile';
    tile.dataset.streamId = detail.stream_id;
    tile.dataset.userId = detail.user_id;
    tile.dataset.peerId = detail.peer_id;
    const video = document.createElement('video');
    for (const attribute of ['autoplay', 'playsinline', 'muted']) video.setAttribute(attribute, '');
    // The attribute alone does not mute an element created by script.
    video.muted = true;
    video.srcObject = detail.stream;
    const caption = document.createElement('figcaption');
    caption.textContent = participantLabel(client, detail.user_id);
    tile.append(video, caption);
    if (audible) {
      const audio = document.createElement('audio');
      audio.autoplay = true;
      audio.srcObject = detail.stream;
      tile.append(audio);
    }
    $('remotes').append(tile);
    tiles.set(detail.stream_id, tile);
  });
  client.addEventListener('remotestreamended', ({ detail }) => {
    tiles.get(detail.stream_id)?.remove();
    tiles.delete(detail.stream_id);
  });

  client.addEventListener('activespeaker', ({ detail }) => {
    for (const tile of document.querySelectorAll('.tile')) {
      const speaking = detail.peer_id ? tile.dataset.peerId === detail.peer_id : tile.dataset.userId === String(detail.user_id);
      tile.classList.toggle('speaking', speaking);
    }
  });

  // The server says when the meeting is being recorded or streamed live: everyone in it sees so.
  client.addEventListener('mediastate', ({ detail }) => {
    if ('recording' in detail) $('recording').hidden = !detail.recording;
    if ('streaming' in detail) $('live').hidden = !detail.streaming;
    if ('captions' in detail) showCaptions(detail.captions);
  });

  // One line per speaker, replaced as their words are recognised (partial ones shown lighter).
  client.addEventListener('caption', ({ detail }) => {
    let line = captionLines.get(detail.user_id);
    if (!line) {
      line = document.createElement('li');
      line.dataset.userId = detail.user_id;
      line.append(document.createElement('b'), ' ', document.createElement('span'));
      captionLines.set(detail.user_id, line);
    }
    line.querySelector('b').textContent = `${detail.nickname || detail.username}:`;
    line.querySelector('span').textContent = detail.text;
    line.classList.toggle('partial', !detail.final);
    $('captions').append(line); // the latest speaker last
  });

  client.addEventListener('chat', ({ detail }) => {
    const line = document.createElement('li');
    line.textContent = `${detail.username ?? `user ${detail.user_id}`}: ${detail.text}`;
    $('chat-log').append(line);
    line.scrollIntoView({ block: 'nearest' });
  });

  return client;
}

async function run(client, media) {
  $('login').hidden = true;
  $('meeting').hidden = false;
  wireControls(client);
  showStatus('Connecting…');
  await client.connect();
  if (media.audio || media.video) {
    $('local-video').srcObject = await client.publish(media);
  }
  startStats(client);
  resolveReady(client);
}

function wireControls(client) {
  $('layer').onchange = (event) => client.setLayer(event.target.value);
  for (const button of [$('mute-audio'), $('mute-video')]) {
    button.onclick = () => {
      const muted = button.getAttribute('aria-pressed') !== 'true';
      client.setMuted(button.dataset.kind, muted);
      button.setAttribute('aria-pressed', String(muted));
      const labels = button.dataset.kind === 'audio' ? ['Mute mic', 'Unmute mic'] : ['Stop camera', 'Start camera'];
      button.textContent = labels[Number(muted)];
    };
  }
  $('leave').onclick = () => client.close();
  $('captions-toggle').onclick = () => {
    const on = $('captions-toggle').getAttribute('aria-pressed') !== 'true';
    client.setCaptions(on).catch((error) => showStatus(`Captions: ${error.message}`));
  };
  $('chat-form').onsubmit = (event) => {
    event.preventDefault();
    const input = event.target.elements.text;
    client.sendChat(input.value);
    input.value = '';
  };
}

let statsTimer = null;

function stopStats() {
  clearInterval(statsTimer);
  statsTimer = null;
}

/** Bitrates and frame rates come from the difference between two samples one interval apart. */
function startStats(client) {
  let previous = new Map();
  const rate = (key, value, now) => {
    const before = previous.get(key);
    now.set(key, value);
    return before === undefined ? 0 : Math.max(0, value - before) / (STATS_INTERVAL_MS / 1000);
  };
  statsTimer = setInterval(async () => {
    const { inbound, outbound } = await client.getStats().catch(() => ({ inbound: [], outbound: [] }));
    const now = new Map();
    const lines = [];
    for (const s of outbound) {
      const key = `out ${s.kind} ${s.rid ?? ''}`;
      const kbps = Math.round((rate(`${key} bytes`, s.bytesSent ?? 0, now) * 8) / 1000);
      const fps = Math.round(rate(`${key} frames`, s.framesSent ?? 0, now));
      const size = s.kind === 'video' ? ` ${s.frameWidth ?? 0}x${s.frameHeight ?? 0} ${fps}fps` : '';
      const limit = s.qualityLimitationReason && s.qualityLimitationReason !== 'none' ? ` (${s.qualityLimitationReason})` : '';
      lines.push(`${key.padEnd(12)}${size} ${kbps} kbps${s.active === false ? ' inactive' : ''}${limit}`);
    }
    for (const s of inbound) {
      const key = `in ${s.mid}`;
      const kbps = Math.round((rate(key, s.bytesReceived ?? 0, now) * 8) / 1000);
      const size = s.kind === 'video' ? ` ${s.frameWidth ?? 0}x${s.frameHeight ?? 0} ${Math.round(s.framesPerSecond ?? 0)}fps` : '';
      lines.push(`in  user ${s.user_id} ${s.kind}${size} ${kbps} kbps lost ${s.packetsLost ?? 0}`);
    }
    previous = now;
    $('stats').textContent = lines.join('\n');
  }, STATS_INTERVAL_MS);
}

async function loginAndRun(form) {
  const fields = new FormData(form);
  const session = await HuiyiClient.login(location.origin, fields.get('username'), fields.get('password'));
  const client = createClient({
    token: session.access_token,
    refreshToken: session.refresh_token,
    userId: session.user.user_id,
    meetingId: Number(fields.get('meeting_id')),
    audible: true,
  });
  const joined = await client.joinMeeting(
    client.meetingId,
    fields.get('meeting_password') || undefined,
    fields.get('invite_code') || undefined,
  );
  if (joined.participant?.status === 'waiting') showStatus('Waiting for a host to let you in…');
  showInviteLink(joined.meeting);
  await run(client, { audio: true, video: true, simulcast: true });
}

/** Members see the meeting's invite code (others get null): offer it as a link to pass on. */
function showInviteLink(meeting) {
  const code = meeting?.invite_code;
  $('invite').hidden = !code;
  if (!code) return;
  const link = new URL('/', location.origin);
  link.search = new URLSearchParams({ meeting: String(meeting.meeting_id), code }).toString();
  $('invite-link').value = link.href;
}

/** An invite link's meeting and code go into the form; the user only has to sign in. */
function fillFromInviteLink() {
  const meeting = params.get('meeting');
  if (meeting && /^[0-9]+$/.test(meeting)) $('login').elements.meeting_id.value = meeting;
  const code = params.get('code');
  if (code) $('login').elements.invite_code.value = code;
  // The code lets anyone in: keep it out of the address bar and the history once it is read.
  if (meeting || code) history.replaceState(null, '', location.pathname);
}

if (autostart) {
  const client = createClient({
    token: params.get('token'),
    userId: Number(params.get('user_id')),
    meetingId: Number(params.get('meeting_id')),
    audible: false,
  });
  run(client, {
    audio: flag('audio', true),
    video: flag('video', true),
    simulcast: flag('simulcast', true),
    width: positiveNumber('width', 1280),
    height: positiveNumber('height', 720),
  }).catch(fail);
} else {
  fillFromInviteLink();
  $('login').addEventListener('submit', (event) => {
    event.preventDefault();
    armReady();
    event.target.querySelector('button').disabled = true;
    showStatus('Signing in…');
    loginAndRun(event.target).catch((error) => {
      window.huiyi?.close();
      fail(error);
      showLogin();
    });
  });
}
