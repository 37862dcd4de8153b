/**
 * Browser SDK for huiyi meetings: REST login and join, the signaling socket, and the two peer
 * connections the SFU expects (docs/sfu.md). Plain ES module, no dependencies. A client that loses
 * its socket or media connection builds them again by itself (REST join, socket, publishing), so an
 * application only shows the `reconnecting` / `reconnected` events.
 */

// The SFU bundles everything on one transport and muxes RTCP, so the browser need not gather
// candidates for more.
const PC_CONFIG = { bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };

// rids and ratios the SFU maps to its "low" / "medium" / "high" layers.
const SIMULCAST_ENCODINGS = [
  { rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'h', maxBitrate: 1_500_000 },
];

// VP9 with spatial and temporal layers on one stream (SVC), instead of simulcast: the SFU drops the
// layers each receiver cannot take. L3T3_KEY: three spatial layers (a quarter, half and full size),
// three temporal layers, upper spatial layers predicted from lower ones only in key frames.
const SVC_ENCODING = { scalabilityMode: 'L3T3_KEY', maxBitrate: 2_000_000 };

// The SFU answers as soon as it has parsed an offer; waiting longer would only hide a lost or
// refused one (the protocol has no way to tie an `error` to the offer that caused it).
const ANSWER_TIMEOUT_MS = 15_000;

const LAYERS = new Set(['low', 'medium', 'high']);

// A shared screen: one layer, sharp text before smooth motion.
const SCREEN_ENCODING = { maxBitrate: 2_000_000 };

// Close codes after which reconnecting cannot help: left, meeting over, removed, refused.
const FINAL_CLOSE_CODES = new Set([1000, 4000, 4003, 4400, 4403, 4404, 4429]);
// A media connection that stays down this long (after an ICE restart was tried) is rebuilt whole.
const MEDIA_LOST_MS = 12_000;
const RECONNECT_FIRST_WAIT_MS = 500;
const RECONNECT_MAX_WAIT_MS = 10_000;

// The socket lives as long as its access token; it is renewed this long before the token expires.
// TURN credentials handed out by the server are likewise fetched anew before an ICE restart that
// would otherwise use ones about to expire.
const RENEW_BEFORE_MS = 60_000;

/** A JWT's expiry in epoch milliseconds (read, not verified: the server verifies), or null. */
function tokenExpiry(token) {
  try {
    const payload = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return typeof payload.exp === 'number' ? payload.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** An API or signaling failure, carrying the server envelope's code (HTTP status or business code). */
export class HuiyiError extends Error {
  constructor(message, code, data) {
    super(message);
    this.name = 'HuiyiError';
    this.code = code;
    this.data = data;
  }
}

function trimBase(baseUrl) {
  return String(baseUrl).replace(/\/+$/, '');
}

/** http→ws and https→wss, so a page served over TLS never opens a plain socket. */
export function websocketBase(baseUrl) {
  return trimBase(baseUrl).replace(/^http/, 'ws');
}

function postJson(baseUrl, path, body, token) {
  return callJson('POST', baseUrl, path, body, token);
}

async function callJson(method, baseUrl, path, body, token) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`${trimBase(baseUrl)}/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  // Proxies in front of the server may answer errors that are not JSON envelopes.
  const envelope = await response.json().catch(() => null);
  if (!response.ok || !envelope) {
    throw new HuiyiError(
      envelope?.message ?? `${response.status} ${response.statusText}`,
      envelope?.code ?? response.status,
      envelope?.data,
    );
  }
  return envelope.data;
}

/**
 * mid → direction of each m-section in an SDP. A rejected section (port 0 without bundle-only)
 * counts as inactive, because the browser will never receive on it either.
 */
function sectionDirections(sdp) {
  const directions = new Map();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = section.match(/^a=mid:(\S+)/m)?.[1];
    if (mid === undefined) continue;
    const direction = section.match(/^a=(sendrecv|sendonly|recvonly|inactive)\s*$/m)?.[1] ?? 'sendrecv';
    const rejected = /^\S+ 0 /.test(section) && !/^a=bundle-only/m.test(section);
    directions.set(mid, rejected ? 'inactive' : direction);
  }
  return directions;
}

/** The offer as the server should read it: the shared screen's m-section marked a=content:slides. */
function markScreenSection(sdp, mid) {
  if (mid === null || mid === undefined) return sdp;
  return sdp.replace(new RegExp(`(\\r?\\n)a=mid:${mid}(\\r?\\n)`), `$1a=mid:${mid}$2a=content:slides$2`);
}

/**
 * The browser's video codecs with `codec` ('vp9' or 'av1', profile 0 of either) first, for a
 * transceiver's setCodecPreferences: the server takes a scalable codec only when it comes first.
 */
function scalableFirst(codec) {
  const codecs = RTCRtpSender.getCapabilities('video')?.codecs ?? [];
  const mime = codec === 'av1' ? 'video/av1' : 'video/vp9';
  const profile = codec === 'av1' ? /profile=[1-9]/ : /profile-id=[1-9]/;
  const wanted = (c) => c.mimeType.toLowerCase() === mime && !profile.test(c.sdpFmtpLine ?? '');
  if (!codecs.some(wanted)) throw new Error(`this browser cannot send ${codec.toUpperCase()}`);
  return [...codecs.filter(wanted), ...codecs.filter((c) => !wanted(c))];
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function remoteSends(direction) {
  return direction === 'sendonly' || direction === 'sendrecv';
}

/** When TURN credentials of the `<expiry>:<user>` kind stop working (epoch ms), or null. */
function iceServersExpiry(iceServers) {
  const expiries = iceServers
    .map((server) => Number(String(server.username ?? '').split(':')[0]))
    .filter((seconds) => seconds > 0);
  return expiries.length ? Math.min(...expiries) * 1000 : null;
}

/** A reconnect attempt the server refused for good (removed, meeting over, unknown meeting…). */
function isFinal(error) {
  const code = Number(error?.code);
  // 2001 no such meeting, 2002 over; REST 403 (removed) and 404; the socket's final close codes.
  // 401 and 1005: the token is dead and the application could not refresh it.
  return [401, 1005, 2001, 2002, 403, 404].includes(code) || FINAL_CLOSE_CODES.has(code);
}

/**
 * One participant's connection to a huiyi meeting.
 *
 * Events (CustomEvent, payload in `event.detail`): `joined`, `participant-joined`,
 * `participant-left`, `remotestream`, `remotestreamended`, `remotetrack`, `remotetrackended`,
 * `activespeaker`, `mediastate`, `chat`, `caption` (live captions), `relay`, `mutedby` (a host muted this client),
 * `screenshare` (this client's own share started or stopped), `reconnecting`, `reconnected`,
 * `tokens`, `error`, `close`.
 */
export class HuiyiClient extends EventTarget {
  #socket = null;
  #joinWaiter = null;
  #lastError = null;
  #closed = false;
  #publisher = null;
  #publisherChain = Promise.resolve();
  #pendingAnswer = null;
  #renewTimer = null;
  #subscriber = null;
  #subscriberChain = Promise.resolve();
  // ICE servers from the application, kept as given; otherwise the server's, from the join reply.
  #iceServersGiven = false;
  // mid → Track from the latest subscriber offer: ontrack fires during setRemoteDescription,
  // so this must be current before that call.
  #trackInfo = new Map();
  // mid → {info, track, streamId} of tracks currently received.
  #liveTracks = new Map();
  // What this client publishes, kept so a rebuilt publisher connection sends the same again:
  // {track, init} per camera/microphone track, and the shared screen apart.
  #published = [];
  #screen = null;
  // Kinds a host muted on the server: unmuting them asks the server too.
  #serverMuted = new Set();
  #reconnecting = false;
  #mediaLostTimer = null;
  #joinSecrets = {};
  #rejoin;
  #onOnline = () => this.#networkBack();
  #onOffline = () => {
    if (this.state === 'connected') this.#setState('reconnecting', 'network offline');
  };
  // Bumped whenever the peer connections are dropped, so late work for old ones is ignored.
  #generation = 0;

  /**
   * @param {object} options
   * @param {string} options.token access token
   * @param {string} [options.refreshToken] lets the client renew its tokens (and the socket) by
   *   itself before the access token expires; the new pair is announced in a `tokens` event
   * @param {number} options.userId the token's user
   * @param {number} options.meetingId
   * @param {string} [options.baseUrl] REST server; defaults to the page's origin
   * @param {string} [options.wsBase] signaling server (ws:// or wss://); defaults to baseUrl's
   * @param {RTCIceServer[]} [options.iceServers] STUN/TURN servers for the peer connections; by
   *   default those the server hands out on join (its own TURN server, with fresh credentials)
   * @param {'all'|'relay'} [options.iceTransportPolicy] 'relay' sends all media through TURN
   * @param {() => Promise<void>} [options.rejoin] the REST join to repeat before reconnecting (an
   *   application that refreshes tokens itself refreshes here too); by default `joinMeeting` with
   *   the password and invite code it was last given
   */
  constructor({
    token,
    refreshToken,
    userId,
    meetingId,
    baseUrl = globalThis.location?.origin,
    wsBase,
    iceServers,
    iceTransportPolicy = 'all',
    rejoin,
  } = {}) {
    super();
    this.#iceServersGiven = iceServers !== undefined;
    /** The RTCIceServer list the peer connections use. */
    this.iceServers = iceServers ?? [];
    this.iceTransportPolicy = iceTransportPolicy;
    this.token = token;
    this.refreshToken = refreshToken ?? null;
    this.userId = Number(userId);
    this.meetingId = Number(meetingId);
    this.baseUrl = trimBase(baseUrl);
    this.wsBase = trimBase(wsBase ?? websocketBase(this.baseUrl));
    this.#rejoin = rejoin ?? (() => this.joinMeeting(this.meetingId, this.#joinSecrets.password, this.#joinSecrets.inviteCode));
    this.sessionId = null;
    this.self = null;
    /** `connecting`, `connected`, `reconnecting` or `closed`. */
    this.state = 'connecting';
    /** user_id → participant, as the server last described them. */
    this.participants = new Map();
    /** The server's last `active_speaker` ({user_id, peer_id, level}), or null before it named one. */
    this.activeSpeaker = null;
    this.localStream = null;
    /** The shared screen's stream while this client shares one, else null. */
    this.screenStream = null;
    /** stream_id → {stream, stream_id, user_id, peer_id, source}: one entry per remote stream. */
    this.remoteStreams = new Map();
    globalThis.addEventListener?.('online', this.#onOnline);
    globalThis.addEventListener?.('offline', this.#onOffline);
  }

  /** @returns {Promise<{access_token, refresh_token, user}>} */
  static login(baseUrl, username, password) {
    return postJson(baseUrl, '/auth/login', { username, password });
  }

  /**
   * REST join, required before the socket is admitted. Someone the host did not add needs the
   * meeting's `inviteCode` (from its invite link) or its `password`; both are kept (in memory) for
   * joining again after a lost connection.
   * @returns {Promise<{meeting, participant, media_state, ice_servers}>}
   */
  joinMeeting(meetingId = this.meetingId, password, inviteCode) {
    const body = {};
    if (password) body.password = password;
    if (inviteCode) body.invite_code = inviteCode;
    if (meetingId === this.meetingId) this.#joinSecrets = { password, inviteCode };
    return postJson(this.baseUrl, `/meetings/${meetingId}/join`, body, this.token);
  }

  /** The publisher RTCPeerConnection (or null), for diagnostics such as its connection state. */
  get publisher() {
    return this.#publisher;
  }

  /** The subscriber RTCPeerConnection (or null), created by the server's first offer. */
  get subscriber() {
    return this.#subscriber;
  }

  /** Kinds (`audio`, `video`) a host has muted on the server. */
  get mutedByHost() {
    return new Set(this.#serverMuted);
  }

  /**
   * Opens the signaling socket and enters the room. Resolves with the `join` reply; for a user in
   * the waiting room that is only once a host admits them.
   */
  connect() {
    if (this.#socket) throw new Error('already connected');
    return this.#openSocket();
  }

  #openSocket() {
    const query = `meeting_id=${this.meetingId}&user_id=${this.userId}&token=${encodeURIComponent(this.token)}`;
    const socket = new WebSocket(`${this.wsBase}/ws/signaling?${query}`);
    this.#socket = socket;
    this.#lastError = null;
    const joined = new Promise((resolve, reject) => {
      this.#joinWaiter = { resolve, reject };
    });
    socket.addEventListener('open', () => {
      if (socket !== this.#socket) return;
      this.#send('join', {});
      this.#scheduleRenewal();
    });
    socket.addEventListener('message', (event) => {
      if (socket === this.#socket) this.#receive(event.data);
    });
    socket.addEventListener('close', (event) => {
      if (socket === this.#socket) this.#onSocketClosed(event);
    });
    return joined;
  }

  /**
   * Publishes the camera and microphone (or every track of `stream`, e.g. the tracks a pre-join
   * screen previewed, in which case `audio`, `video`, `width` and `height` are not used) on the
   * publisher connection. Resolves with the local stream once the server's answer is applied.
   * Calling it again adds the new tracks and renegotiates.
   *
   * `codec: 'vp9'` or `codec: 'av1'` sends the camera as VP9 or AV1 with spatial and temporal
   * layers on one stream (`scalabilityMode`, default 'L3T3_KEY') instead of VP8 simulcast; receivers
   * that cannot decode that codec do not get the video (docs/sfu.md).
   */
  async publish({
    audio = true,
    video = true,
    simulcast = true,
    codec = 'vp8',
    scalabilityMode = SVC_ENCODING.scalabilityMode,
    width = 1280,
    height = 720,
    stream,
  } = {}) {
    if (!['vp8', 'vp9', 'av1'].includes(codec)) throw new Error(`codec must be 'vp8', 'vp9' or 'av1', not ${codec}`);
    if (this.#closed) throw new Error('the client is closed');
    if (!stream && !audio && !video) throw new Error('nothing to publish: audio and video are both off');
    const source =
      stream ??
      (await navigator.mediaDevices.getUserMedia({
        audio,
        video: video && { width: { ideal: width }, height: { ideal: height } },
      }));
    const tracks = source.getTracks();
    if (tracks.length === 0) throw new Error('nothing to publish');
    this.localStream ??= new MediaStream();
    const pc = this.#publisher ?? this.#createPublisher();
    for (const track of tracks) {
      this.localStream.addTrack(track);
      // The stream gives the offer an a=msid, so the SFU can tell which tracks belong together.
      const init = { direction: 'sendonly' };
      let codecs = null;
      if (track.kind === 'video' && codec !== 'vp8') {
        init.sendEncodings = [{ ...SVC_ENCODING, scalabilityMode }];
        codecs = scalableFirst(codec);
      } else if (track.kind === 'video') {
        init.sendEncodings = simulcast ? SIMULCAST_ENCODINGS : [{ maxBitrate: 1_500_000 }];
      }
      const published = { track, init, codecs, transceiver: null };
      this.#published.push(published);
      published.transceiver = pc.addTransceiver(track, { ...init, streams: [this.localStream] });
      if (codecs) published.transceiver.setCodecPreferences(codecs);
    }
    await this.#negotiatePublisher();
    return this.localStream;
  }

  /**
   * Sends another camera or microphone (a device chosen in the meeting) in place of the current
   * one of its kind, without renegotiating; the old track is stopped.
   */
  async replaceTrack(track) {
    const published = this.#published.find((entry) => entry.track.kind === track.kind);
    if (!published) throw new Error(`no ${track.kind} is published`);
    track.enabled = published.track.enabled;
    await published.transceiver?.sender.replaceTrack(track);
    this.localStream.removeTrack(published.track);
    published.track.stop();
    published.track = track;
    this.localStream.addTrack(track);
  }

  /**
   * Shares a screen (the browser asks which) as a track of its own: the others receive it as a
   * stream apart from the camera, with `source: 'screen'`. Resolves with the shared stream.
   */
  async startScreenShare() {
    if (this.#closed) throw new Error('the client is closed');
    if (this.#screen) return this.screenStream;
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
    const [track] = stream.getVideoTracks();
    if ('contentHint' in track) track.contentHint = 'detail';
    this.#screen = { track, stream, transceiver: null };
    this.screenStream = stream;
    // The browser's own "Stop sharing" button ends the track.
    track.addEventListener('ended', () => this.stopScreenShare().catch((error) => this.#emitFailure(error)));
    try {
      await this.#addScreen();
    } catch (error) {
      this.#screen = null;
      this.screenStream = null;
      track.stop();
      throw error;
    }
    this.#sendIfOpen('media-state', { screen_share: true });
    this.#emit('screenshare', { active: true, stream });
    return stream;
  }

  async stopScreenShare() {
    const screen = this.#screen;
    if (!screen) return;
    this.#screen = null;
    this.screenStream = null;
    screen.track.stop();
    if (screen.transceiver && this.#publisher && screen.transceiver.currentDirection !== 'stopped') {
      screen.transceiver.stop();
      await this.#negotiatePublisher().catch((error) => this.#emitFailure(error));
    }
    this.#sendIfOpen('media-state', { screen_share: false });
    this.#emit('screenshare', { active: false, stream: screen.stream });
  }

  async #addScreen() {
    const pc = this.#publisher ?? this.#createPublisher();
    this.#screen.transceiver = pc.addTransceiver(this.#screen.track, {
      direction: 'sendonly',
      streams: [this.#screen.stream],
      sendEncodings: [SCREEN_ENCODING],
    });
    await this.#negotiatePublisher();
  }

  /** New ICE credentials on both connections, e.g. after a network change. */
  async restartIce() {
    await this.#renewIceServersIfExpiring();
    if (this.#subscriber) this.#send('offer', { target: 'subscriber', ice_restart: true });
    if (this.#publisher) await this.#negotiatePublisher({ iceRestart: true });
  }

  /**
   * Fetches fresh ICE servers (new TURN credentials) from the server and gives them to both
   * connections; they take effect at the next ICE restart.
   * @returns {Promise<RTCIceServer[]>}
   */
  async refreshIceServers() {
    const answer = await callJson('GET', this.baseUrl, '/webrtc/ice-servers', undefined, this.token);
    this.iceServers = answer.ice_servers;
    for (const pc of [this.#publisher, this.#subscriber]) {
      pc?.setConfiguration({ ...pc.getConfiguration(), iceServers: this.iceServers });
    }
    return this.iceServers;
  }

  async #renewIceServersIfExpiring() {
    const expiry = iceServersExpiry(this.iceServers);
    if (this.#iceServersGiven || expiry === null || expiry - Date.now() > RENEW_BEFORE_MS) return;
    try {
      await this.refreshIceServers();
    } catch (error) {
      this.#emitFailure(error);
    }
  }

  /** The best simulcast layer to receive, of one track or (without trackId) of all. */
  setLayer(layer, trackId) {
    if (!LAYERS.has(layer)) throw new RangeError(`layer must be low, medium or high, not ${layer}`);
    this.#send('media-state', trackId ? { layer, track_id: trackId } : { layer });
  }

  /** Caps the total received bitrate, in bit/s. */
  setMaxBitrate(bps) {
    this.#send('media-state', { max_bitrate: bps });
  }

  /**
   * Disabling rather than stopping the track keeps the m-section and encoder alive, so unmuting
   * needs no renegotiation. Unmuting what a host muted on the server asks the server to forward it
   * again (allowed to the peer itself).
   */
  async setMuted(kind, muted) {
    if (kind !== 'audio' && kind !== 'video') throw new RangeError(`kind must be audio or video, not ${kind}`);
    for (const track of this.localStream?.getTracks() ?? []) {
      if (track.kind === kind) track.enabled = !muted;
    }
    if (!muted && this.#serverMuted.has(kind) && this.sessionId) {
      this.#serverMuted.delete(kind);
      await callJson('POST', this.baseUrl, `/webrtc/peer/${this.sessionId}/media`, { [kind]: true }, this.token);
      return;
    }
    this.#sendIfOpen('media-state', { [kind]: !muted });
  }

  /**
   * Asks the server to clean this client's microphone of noise (or to stop); the room, this
   * client included, hears it as a server `media-state` `{noise_suppression, scope, user_id}`.
   */
  setNoiseSuppression(on) {
    this.#send('media-state', { noise_suppression: Boolean(on) });
  }

  sendChat(text) {
    this.#send('chat', { text });
  }

  /**
   * Hands the client a fresh access token of the same user: the socket is renewed with it (it would
   * otherwise be closed with 4401 when the token it was opened with expires), and reconnects use
   * it. Called by the client itself when it was given a refresh token; call it yourself when your
   * application refreshes tokens.
   */
  renewToken(token) {
    this.token = token;
    if (this.#socket?.readyState === WebSocket.OPEN) this.#send('auth', { token });
    this.#scheduleRenewal();
  }

  #scheduleRenewal() {
    clearTimeout(this.#renewTimer);
    const expiry = tokenExpiry(this.token);
    if (!this.refreshToken || expiry === null) return;
    const delay = Math.max(0, expiry - Date.now() - RENEW_BEFORE_MS);
    this.#renewTimer = setTimeout(() => this.#renewWithRetries(expiry), delay);
  }

  /** A refresh can fail for a moment (network, a 429): try again with backoff while the token lasts. */
  async #renewWithRetries(expiry, wait = 2_000) {
    try {
      await this.#refreshTokens();
    } catch (error) {
      if (this.#closed || Date.now() + wait >= expiry) {
        this.#emitFailure(error);
        return;
      }
      this.#renewTimer = setTimeout(() => this.#renewWithRetries(expiry, Math.min(wait * 2, 30_000)), wait);
    }
  }

  async #refreshTokens() {
    const pair = await postJson(this.baseUrl, '/auth/refresh', {}, this.refreshToken);
    this.refreshToken = pair.refresh_token;
    this.#emit('tokens', { access_token: pair.access_token, refresh_token: pair.refresh_token });
    this.renewToken(pair.access_token);
  }

  /** Flattened inbound (subscriber) and outbound (publisher) RTP statistics. */
  async getStats() {
    const [inbound, outbound] = await Promise.all([this.#inboundStats(), this.#outboundStats()]);
    return { inbound, outbound };
  }

  /** Leaves the meeting: the room hears `user-left` at once instead of after a socket timeout. */
  close() {
    if (this.#socket?.readyState === WebSocket.OPEN) this.#send('leave', {});
    const socket = this.#socket;
    this.#finish();
    socket?.close(1000, 'left');
    this.#emit('close', { code: 1000, reason: 'left' });
  }

  #send(type, data) {
    if (this.#socket?.readyState !== WebSocket.OPEN) throw new Error(`signaling socket is not open (sending ${type})`);
    this.#socket.send(JSON.stringify({ type, meeting_id: this.meetingId, data }));
  }

  /** For what the next join repeats anyway (media state): lost with a lost socket, no harm. */
  #sendIfOpen(type, data) {
    if (this.#socket?.readyState === WebSocket.OPEN) this.#send(type, data);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #emitFailure(error) {
    this.#emit('error', { code: error.code ?? null, message: error.message, cause: error });
  }

  #setState(state, reason) {
    if (this.state === state || this.state === 'closed') return;
    this.state = state;
    if (state === 'reconnecting') this.#emit('reconnecting', { reason });
    else if (state === 'connected') this.#emit('reconnected', { reason });
  }

  #receive(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      this.#emitFailure(new Error('signaling message is not JSON'));
      return;
    }
    const data = message.data ?? {};
    const fromServer = message.from === 0;
    switch (message.type) {
      case 'join':
        this.#onJoin(data);
        break;
      case 'user-joined':
        this.participants.set(data.user_id, data);
        this.#emit('participant-joined', data);
        break;
      case 'user-left':
        this.participants.delete(data.user_id);
        this.#emit('participant-left', data);
        break;
      case 'chat':
        this.#emit('chat', data);
        break;
      case 'caption':
        this.#emit('caption', data);
        break;
      case 'media-state':
        this.#onMediaState(data);
        break;
      case 'reconnect':
        if (fromServer) this.#mediaMoved(data.reason ?? 'media server changed');
        break;
      case 'error':
        this.#lastError = data;
        this.#emit('error', { code: data.code ?? null, message: data.message ?? 'error' });
        break;
      case 'offer':
      case 'answer':
      case 'ice-candidate':
        if (fromServer) this.#onSfuMessage(message.type, data);
        else this.#emit('relay', message);
        break;
    }
  }

  #onJoin(data) {
    if (!this.#iceServersGiven) this.iceServers = data.ice_servers ?? [];
    this.sessionId = data.session_id;
    this.self = data.self;
    this.participants = new Map((data.participants ?? []).map((p) => [p.user_id, p]));
    this.#serverMuted.clear();
    const waiter = this.#joinWaiter;
    this.#joinWaiter = null;
    if (this.state === 'connecting') this.state = 'connected';
    waiter?.resolve(data);
    this.#emit('joined', data);
  }

  #onMediaState(data) {
    if (data.publish_layers) {
      this.#setPublishedLayers(data.publish_layers);
      return;
    }
    if (data.video_paused !== undefined) {
      // The server holds back all video: this client's link cannot carry even the lowest layer.
      this.videoPaused = data.video_paused;
      this.#emit('videopaused', { paused: data.video_paused, reason: data.reason });
      return;
    }
    if (data.active_speaker) {
      this.activeSpeaker = data.active_speaker;
      this.#emit('activespeaker', data.active_speaker);
      return;
    }
    const participant = this.participants.get(data.user_id);
    if (participant && data.media_state) participant.media_state = data.media_state;
    if (data.user_id === this.userId && data.by !== undefined && data.by !== this.userId && data.media_state) {
      // A host or moderator muted this client on the server: stop sending too, and say so.
      for (const kind of ['audio', 'video']) {
        if (data.media_state[kind] !== false) continue;
        this.#serverMuted.add(kind);
        for (const track of this.localStream?.getTracks() ?? []) {
          if (track.kind === kind) track.enabled = false;
        }
        this.#emit('mutedby', { kind, by: data.by });
      }
    }
    this.#emit('mediastate', data);
  }

  #onSfuMessage(type, data) {
    if (type === 'answer' && data.target === 'publisher') {
      if (!this.#pendingAnswer) {
        this.#emitFailure(new Error('publisher answer arrived with no offer outstanding'));
        return;
      }
      this.#pendingAnswer.resolve(data.sdp);
    } else if (type === 'offer' && data.target === 'subscriber') {
      // A second offer must not start before the first is answered: the subscriber connection
      // would be in the wrong signaling state, and the mid → track map would be overwritten early.
      const generation = this.#generation;
      this.#subscriberChain = this.#subscriberChain
        .then(() => this.#answerSubscriber(data, generation))
        .catch((error) => this.#emitFailure(error));
    }
  }

  #onSocketClosed(event) {
    const waiter = this.#joinWaiter;
    this.#joinWaiter = null;
    const code = this.#lastError?.code ?? event.code;
    const reason = this.#lastError?.message ?? (event.reason || 'signaling socket closed');
    this.#pendingAnswer?.reject(new Error('signaling socket closed'));
    if (waiter) {
      // A refused socket is told why in an `error` message just before the close.
      waiter.reject(new HuiyiError(reason, code));
    }
    // Before the first join there is nothing to resume; after it, only a final close ends the client.
    if (this.#closed) return;
    if (this.state === 'connecting' || FINAL_CLOSE_CODES.has(event.code)) {
      this.#finish();
      this.#emit('close', { code: event.code, reason: event.reason });
      return;
    }
    if (!this.#reconnecting) this.#reconnect(`signaling closed (${event.code})`);
  }

  /** Over for good: nothing is resumed, devices are released. */
  #finish() {
    if (this.#closed) return;
    this.#closed = true;
    this.state = 'closed';
    clearTimeout(this.#renewTimer);
    clearTimeout(this.#mediaLostTimer);
    globalThis.removeEventListener?.('online', this.#onOnline);
    globalThis.removeEventListener?.('offline', this.#onOffline);
    this.#dropMedia();
    for (const track of this.localStream?.getTracks() ?? []) track.stop();
    this.#screen?.track.stop();
  }

  /** The peer connections are closed and what they received is ended; what is published is kept. */
  #dropMedia() {
    this.#generation += 1;
    clearTimeout(this.#mediaLostTimer);
    this.#mediaLostTimer = null;
    this.#pendingAnswer?.reject(new Error('connection dropped'));
    this.#publisher?.close();
    this.#subscriber?.close();
    this.#publisher = null;
    this.#subscriber = null;
    this.#publisherChain = Promise.resolve();
    this.#subscriberChain = Promise.resolve();
    for (const mid of [...this.#liveTracks.keys()]) this.#endRemoteTrack(mid);
    this.#trackInfo = new Map();
  }

  /**
   * The socket or the media connection is lost: join again over REST, open a new socket (the old
   * one, if it is still open, is closed only once the new one is in, so the room never sees this
   * user leave), and publish the same tracks on new peer connections. Retries with backoff until
   * it works or the server refuses for good.
   */
  async #reconnect(reason) {
    if (this.#closed || this.#reconnecting) return;
    this.#reconnecting = true;
    this.#setState('reconnecting', reason);
    const old = this.#socket;
    this.#dropMedia();
    let wait = RECONNECT_FIRST_WAIT_MS;
    while (!this.#closed) {
      try {
        if (globalThis.navigator?.onLine === false) throw new Error('offline');
        await this.#rejoin();
        await this.#openSocket();
        if (old && old !== this.#socket && old.readyState === WebSocket.OPEN) old.close(1000, 'reconnected');
        await this.#republish();
        this.#reconnecting = false;
        this.#setState('connected', 'reconnected');
        return;
      } catch (error) {
        if (this.#closed) return;
        if (isFinal(error)) {
          this.#reconnecting = false;
          this.#finish();
          this.#emit('close', { code: error.code, reason: error.message });
          return;
        }
        this.#dropMedia();
        await sleep(wait);
        wait = Math.min(wait * 2, RECONNECT_MAX_WAIT_MS);
      }
    }
  }

  async #republish() {
    const live = this.#published.filter((entry) => entry.track.readyState === 'live');
    this.#published = live;
    if (live.length === 0 && !this.#screen) return;
    const pc = this.#createPublisher();
    for (const entry of live) {
      entry.transceiver = pc.addTransceiver(entry.track, { ...entry.init, streams: [this.localStream] });
      if (entry.codecs) entry.transceiver.setCodecPreferences(entry.codecs);
    }
    if (this.#screen) await this.#addScreen();
    else await this.#negotiatePublisher();
    // The join set the stored media state to the meeting's defaults: say what is really sent.
    const state = {};
    for (const kind of ['audio', 'video']) {
      const tracks = live.filter((entry) => entry.track.kind === kind);
      if (tracks.length) state[kind] = tracks.some((entry) => entry.track.enabled);
    }
    if (this.#screen) state.screen_share = true;
    if (Object.keys(state).length) this.#sendIfOpen('media-state', state);
  }

  /**
   * The server moved this client's media to another media server (the one it had went away): both
   * connections are built anew on the same socket, the subscriber one on the server's next offer.
   * Should that fail, the whole reconnect (REST join, new socket) takes over.
   */
  #mediaMoved(reason) {
    if (this.#closed || this.#reconnecting) return;
    this.#setState('reconnecting', reason);
    this.#dropMedia();
    this.#republish()
      .then(() => {
        if (!this.#reconnecting && !this.#closed) this.#setState('connected', 'media moved');
      })
      .catch(() => this.#reconnect(reason));
  }

  /** The browser is online again: a socket that survived gets new ICE paths, a lost one a reconnect. */
  #networkBack() {
    if (this.#closed || this.state === 'connecting') return;
    if (this.#socket?.readyState !== WebSocket.OPEN) {
      if (!this.#reconnecting) this.#reconnect('network back');
      return;
    }
    if (this.#reconnecting) return;
    this.restartIce()
      .then(() => this.#setState('connected', 'network back'))
      .catch(() => this.#reconnect('network back'));
  }

  #createPeerConnection(target) {
    const pc = new RTCPeerConnection({
      ...PC_CONFIG,
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy,
    });
    pc.addEventListener('icecandidate', ({ candidate }) => {
      if (pc !== this.#publisher && pc !== this.#subscriber) return;
      if (this.#socket?.readyState !== WebSocket.OPEN) return;
      this.#send('ice-candidate', {
        target,
        candidate: candidate?.candidate ?? null,
        sdpMid: candidate?.sdpMid ?? null,
        sdpMLineIndex: candidate?.sdpMLineIndex ?? null,
      });
    });
    // Restart once per failure: a restart that fails again re-arms only after a recovery, so a
    // dead network does not produce a stream of offers. A connection still down a while after
    // that is rebuilt whole.
    let restarting = false;
    pc.addEventListener('iceconnectionstatechange', () => {
      if (pc !== this.#publisher && pc !== this.#subscriber) return;
      const state = pc.iceConnectionState;
      if (state === 'connected' || state === 'completed') {
        restarting = false;
        clearTimeout(this.#mediaLostTimer);
        this.#mediaLostTimer = null;
        if (this.state === 'reconnecting' && !this.#reconnecting && navigator.onLine !== false) {
          this.#setState('connected', 'media back');
        }
        return;
      }
      if ((state === 'disconnected' || state === 'failed') && !this.#mediaLostTimer && !this.#closed) {
        this.#mediaLostTimer = setTimeout(() => {
          this.#mediaLostTimer = null;
          const down = [this.#publisher, this.#subscriber].some(
            (peer) => peer && ['disconnected', 'failed'].includes(peer.iceConnectionState),
          );
          if (down) this.#reconnect(`${target} media connection lost`);
        }, MEDIA_LOST_MS);
      }
      if (state === 'failed' && !restarting && !this.#closed) {
        restarting = true;
        this.#renewIceServersIfExpiring().then(() => {
          if (this.#closed || pc !== (target === 'publisher' ? this.#publisher : this.#subscriber)) return;
          if (target === 'publisher') {
            this.#negotiatePublisher({ iceRestart: true }).catch((error) => this.#emitFailure(error));
          } else if (this.#socket?.readyState === WebSocket.OPEN) {
            this.#send('offer', { target: 'subscriber', ice_restart: true });
          }
        });
      }
    });
    return pc;
  }

  #createPublisher() {
    this.#publisher = this.#createPeerConnection('publisher');
    return this.#publisher;
  }

  #createSubscriber() {
    const pc = this.#createPeerConnection('subscriber');
    pc.addEventListener('track', (event) => {
      if (pc === this.#subscriber) this.#onRemoteTrack(event);
    });
    this.#subscriber = pc;
    return pc;
  }

  /** Offers on the publisher connection; one negotiation at a time, each waiting for its answer. */
  #negotiatePublisher(offerOptions) {
    const pc = this.#publisher;
    const run = this.#publisherChain.then(async () => {
      if (pc !== this.#publisher) throw new Error('connection dropped');
      await pc.setLocalDescription(await pc.createOffer(offerOptions));
      const answer = this.#awaitPublisherAnswer();
      const screenMid = this.#screen?.transceiver?.mid;
      this.#send('offer', { target: 'publisher', sdp: markScreenSection(pc.localDescription.sdp, screenMid) });
      await pc.setRemoteDescription({ type: 'answer', sdp: await answer });
    });
    this.#publisherChain = run.catch(() => {});
    return run;
  }

  /**
   * Dynacast (docs/sfu.md): the server asks for only the simulcast encodings some receiver takes.
   * The lowest one is always sent. Queued behind negotiation, which must not see a sender change.
   */
  #setPublishedLayers({ mid, rids }) {
    const pc = this.#publisher;
    const sender = pc?.getTransceivers().find((transceiver) => transceiver.mid === mid)?.sender;
    if (!sender || !rids) return;
    const run = this.#publisherChain.then(async () => {
      const parameters = sender.getParameters();
      let changed = false;
      parameters.encodings.forEach((encoding, index) => {
        if (!encoding.rid || !(encoding.rid in rids)) return;
        const active = index === 0 || Boolean(rids[encoding.rid]);
        changed ||= encoding.active !== active;
        encoding.active = active;
      });
      if (changed && pc === this.#publisher) await sender.setParameters(parameters);
    });
    this.#publisherChain = run.catch((error) => console.warn('huiyi: publish layers:', error));
  }

  #awaitPublisherAnswer() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => settle(reject, new Error('the media server did not answer the offer')), ANSWER_TIMEOUT_MS);
      const settle = (finish, value) => {
        clearTimeout(timer);
        this.#pendingAnswer = null;
        finish(value);
      };
      this.#pendingAnswer = { resolve: (sdp) => settle(resolve, sdp), reject: (error) => settle(reject, error) };
    });
  }

  async #answerSubscriber(data, generation) {
    // An offer for a connection dropped meanwhile (a reconnect) is stale.
    if (generation !== this.#generation) return;
    const pc = this.#subscriber ?? this.#createSubscriber();
    // An offer without a track list (e.g. an ICE restart) leaves what is carried unchanged.
    if (data.tracks) this.#trackInfo = new Map(data.tracks.map((track) => [String(track.mid), track]));
    const directions = sectionDirections(data.sdp);
    // Before setRemoteDescription: a reused mid fires `track` for its new owner during that call.
    for (const [mid, live] of this.#liveTracks) {
      const info = this.#trackInfo.get(mid);
      if (!info || info.track_id !== live.info.track_id || !remoteSends(directions.get(mid))) {
        this.#endRemoteTrack(mid);
      }
    }
    await pc.setRemoteDescription({ type: 'offer', sdp: data.sdp });
    // The browser fires no `track` when a sending m-section merely changes owner; announce those.
    for (const transceiver of pc.getTransceivers()) {
      const { mid } = transceiver;
      if (this.#trackInfo.has(mid) && remoteSends(directions.get(mid)) && !this.#liveTracks.has(mid)) {
        this.#onRemoteTrack({ track: transceiver.receiver.track, streams: [], transceiver });
      }
    }
    await pc.setLocalDescription(await pc.createAnswer());
    this.#send('answer', { target: 'subscriber', sdp: pc.localDescription.sdp });
  }

  #onRemoteTrack({ track, streams, transceiver }) {
    const mid = transceiver.mid;
    const info = this.#trackInfo.get(mid) ?? { mid, track_id: track.id, kind: track.kind };
    const streamId = info.stream_id ?? streams[0]?.id ?? track.id;
    let entry = this.remoteStreams.get(streamId);
    const isNewStream = !entry;
    if (isNewStream) {
      entry = {
        stream: streams[0] ?? new MediaStream(),
        stream_id: streamId,
        user_id: info.user_id,
        peer_id: info.peer_id,
        source: info.source ?? 'camera',
      };
      this.remoteStreams.set(streamId, entry);
    }
    if (!entry.stream.getTrackById(track.id)) entry.stream.addTrack(track);
    this.#liveTracks.set(mid, { info, track, streamId });
    if (isNewStream) this.#emit('remotestream', entry);
    this.#emit('remotetrack', { ...info, track, stream: entry.stream });
  }

  #endRemoteTrack(mid) {
    const { info, track, streamId } = this.#liveTracks.get(mid);
    this.#liveTracks.delete(mid);
    const entry = this.remoteStreams.get(streamId);
    // The browser removes the track from an a=msid stream itself, but only later, in
    // setRemoteDescription; listeners should see the stream as it now is.
    if (entry?.stream.getTrackById(track.id)) entry.stream.removeTrack(track);
    this.#emit('remotetrackended', { ...info, track, stream: entry?.stream });
    if (entry && ![...this.#liveTracks.values()].some((live) => live.streamId === streamId)) {
      this.remoteStreams.delete(streamId);
      this.#emit('remotestreamended', entry);
    }
  }

  async #inboundStats() {
    if (!this.#subscriber) return [];
    const report = await this.#subscriber.getStats();
    // Older browsers omit `mid` on inbound-rtp; the receiving track leads back to it.
    const midByTrack = new Map(
      this.#subscriber.getTransceivers().map((transceiver) => [transceiver.receiver.track.id, transceiver.mid]),
    );
    const inbound = [];
    for (const stats of report.values()) {
      if (stats.type !== 'inbound-rtp') continue;
      const mid = stats.mid ?? midByTrack.get(stats.trackIdentifier) ?? null;
      const info = this.#trackInfo.get(mid) ?? {};
      inbound.push({
        mid,
        kind: stats.kind,
        track_id: info.track_id ?? null,
        user_id: info.user_id ?? null,
        peer_id: info.peer_id ?? null,
        packetsReceived: stats.packetsReceived,
        packetsLost: stats.packetsLost,
        bytesReceived: stats.bytesReceived,
        framesDecoded: stats.framesDecoded,
        frameWidth: stats.frameWidth,
        frameHeight: stats.frameHeight,
        framesPerSecond: stats.framesPerSecond,
        nackCount: stats.nackCount,
        pliCount: stats.pliCount,
        firCount: stats.firCount,
        jitter: stats.jitter,
        freezeCount: stats.freezeCount,
        totalFreezesDuration: stats.totalFreezesDuration,
        totalSamplesReceived: stats.totalSamplesReceived,
        concealedSamples: stats.concealedSamples,
      });
    }
    return inbound;
  }

  async #outboundStats() {
    if (!this.#publisher) return [];
    const report = await this.#publisher.getStats();
    const outbound = [];
    for (const stats of report.values()) {
      if (stats.type !== 'outbound-rtp') continue;
      outbound.push({
        kind: stats.kind,
        rid: stats.rid ?? null,
        frameWidth: stats.frameWidth,
        frameHeight: stats.frameHeight,
        framesEncoded: stats.framesEncoded,
        framesSent: stats.framesSent,
        bytesSent: stats.bytesSent,
        packetsSent: stats.packetsSent,
        nackCount: stats.nackCount,
        pliCount: stats.pliCount,
        qualityLimitationReason: stats.qualityLimitationReason,
        scalabilityMode: stats.scalabilityMode ?? null,
        active: stats.active,
      });
    }
    return outbound;
  }
}
