/** One tile of the meeting's stage: someone's video (or their avatar when there is none), their
 * name, and what to know at a glance: microphone off, speaking, connection quality, role, and
 * whether the server cleans their microphone's noise. */
import { avatar, displayName, h } from '../dom.js';

const QUALITY_LABELS = { good: 'good', fair: 'fair', poor: 'poor', unknown: 'measuring' };

export class Tile {
  #speaking = false;

  /**
   * @param {string} key `me`, `user:<id>` or `screen:<id>`
   * @param {object} person the participant (user_id, username, nickname, avatar_url, role)
   * @param {{local?: boolean, screen?: boolean}} kind
   */
  constructor(key, person, { local = false, screen = false } = {}) {
    this.key = key;
    this.local = local;
    this.screen = screen;
    this.person = person;
    this.video = h('video', { autoplay: true, playsInline: true, muted: true });
    // The attribute alone does not mute an element created by script.
    this.video.muted = true;
    this.avatarBox = h('div', { className: 'tile-avatar' });
    this.name = h('span', { className: 'tile-name' });
    this.micIcon = h('span', { className: 'icon mic-off', role: 'img', 'aria-label': 'Microphone off', hidden: true });
    this.quality = h('span', { className: 'quality', role: 'img', dataset: { level: 'unknown' } }, h('i'), h('i'), h('i'));
    this.role = h('span', { className: 'badge role', hidden: true });
    this.noise = h('span', { className: 'badge noise', role: 'img', 'aria-label': 'Noise suppression on', title: 'Noise suppression on', hidden: true }, 'NS');
    this.element = h(
      'figure',
      { className: `tile${local ? ' local' : ''}${screen ? ' screen' : ''}`, dataset: { key, userId: person.user_id } },
      this.video,
      this.avatarBox,
      h('figcaption', {}, this.micIcon, this.name, this.role, this.noise, this.quality),
    );
    this.audio = null;
    this.setPerson(person);
    this.setQuality('unknown');
    this.setVideoOn(false);
  }

  setPerson(person) {
    this.person = { ...this.person, ...person };
    const name = displayName(this.person);
    this.name.textContent = this.screen ? `${name} (screen)` : this.local ? `${name} (you)` : name;
    this.avatarBox.replaceChildren(avatar(this.person, 'lg'));
    const role = this.person.role;
    this.role.hidden = this.screen || !role || role === 'participant';
    this.role.textContent = role === 'host' ? 'Host' : role === 'moderator' ? 'Moderator' : '';
    this.element.setAttribute('aria-label', this.name.textContent);
    if (!this.screen) this.setAudioOn(this.person.media_state?.audio !== false);
  }

  /** The stream to show; `audible` adds an audio element for it (remote people only). */
  setStream(stream, { audible = false } = {}) {
    this.stream = stream;
    this.video.srcObject = stream;
    if (audible && !this.audio) {
      this.audio = h('audio', { autoplay: true });
      this.element.append(this.audio);
    }
    if (this.audio) this.audio.srcObject = stream;
    this.refreshVideo();
  }

  /** Video shows when the stream has a live video track that is meant to be on. */
  refreshVideo() {
    const hasVideo = Boolean(this.stream?.getVideoTracks().some((track) => track.readyState === 'live' && (!this.local || track.enabled)));
    const cameraOn = this.screen || this.person.media_state?.video !== false;
    this.setVideoOn(hasVideo && cameraOn);
  }

  setVideoOn(on) {
    this.element.classList.toggle('video-off', !on);
  }

  setAudioOn(on) {
    this.micIcon.hidden = on;
    this.#showSpeaking();
  }

  setNoiseSuppressed(on) {
    this.noise.hidden = this.screen || !on;
  }

  /** Whether the server names this tile's person as the active speaker; shown while the microphone is on. */
  setSpeaking(speaking) {
    this.#speaking = speaking;
    this.#showSpeaking();
  }

  #showSpeaking() {
    this.element.classList.toggle('speaking', this.#speaking && this.micIcon.hidden);
  }

  setQuality(level) {
    this.quality.dataset.level = level;
    this.quality.setAttribute('aria-label', `Connection ${QUALITY_LABELS[level] ?? level}`);
    this.quality.title = `Connection: ${QUALITY_LABELS[level] ?? level}`;
  }

  remove() {
    this.video.srcObject = null;
    if (this.audio) this.audio.srcObject = null;
    this.element.remove();
  }
}
