/**
 * Live noise suppression on the meeting page (docs/enhancement.md#live-noise-suppression): the
 * toggle that has the server clean my microphone, the switch hosts and moderators flip for
 * everyone, and whose microphones are being cleaned. All of it follows the server's `media-state`
 * messages, not the clicks, so every page shows the same whoever flipped a switch.
 */
import { h } from '../dom.js';

export class NoiseSuppression {
  /**
   * @param {object} options
   * @param {import('../huiyi.js').HuiyiClient} options.client
   * @param {import('./moderation.js').Moderation} options.moderation
   * @param {number} options.myId
   * @param {() => void} options.onChange who is cleaned changed: the tiles to update
   * @param {(error: Error) => void} options.onError
   */
  constructor({ client, moderation, myId, onChange, onError }) {
    this.client = client;
    this.moderation = moderation;
    this.myId = myId;
    this.onChange = onChange;
    this.onError = onError;
    /** on for everyone in the room */
    this.room = false;
    /** user ids whose own switch is on */
    this.users = new Set();
    /** what I asked for: a switch lives as long as the media connection, so it is asked again after a reconnect */
    this.wanted = false;
    this.toggle = h(
      'button',
      { type: 'button', id: 'noise-suppression', className: 'tool', 'aria-pressed': 'false', title: 'Noise suppression', onclick: () => this.#flip() },
      h('span', { className: 'glyph noise', 'aria-hidden': 'true' }),
      h('span', { className: 'tool-label' }, 'Noise suppression'),
    );
  }

  /** Whether the server cleans this user's microphone. */
  isOn(userId) {
    return this.room || this.users.has(userId);
  }

  #flip() {
    this.wanted = !this.users.has(this.myId);
    this.#flipTo(this.wanted);
  }

  /** For everyone, on or off (hosts and moderators; the server refuses others). */
  setForEveryone(enabled) {
    return this.moderation.setNoiseSuppression(enabled);
  }

  /** A (re)join: the server tells the switches that are on after it; mine is asked again. */
  joined() {
    this.room = false;
    this.users.clear();
    this.#render();
    if (this.wanted) this.#flipTo(true);
  }

  #flipTo(on) {
    try {
      this.client.setNoiseSuppression(on);
    } catch (error) {
      this.onError(error);
    }
  }

  /** A server `media-state`; true when it was about noise suppression. */
  apply(detail) {
    if (!('noise_suppression' in detail)) return false;
    const on = Boolean(detail.noise_suppression);
    if (detail.scope === 'room') {
      this.room = on;
      if (!on) this.users.clear();
    } else if (on) {
      this.users.add(detail.user_id);
    } else {
      this.users.delete(detail.user_id);
    }
    if (detail.scope === 'participant' && detail.user_id === this.myId && detail.by !== null) this.wanted = on;
    if (detail.scope === 'room' && !on) this.wanted = false;
    this.#render();
    return true;
  }

  /** Someone left the meeting. */
  drop(userId) {
    if (this.users.delete(userId)) this.#render();
  }

  #render() {
    const mine = this.isOn(this.myId);
    this.toggle.setAttribute('aria-pressed', String(mine));
    this.toggle.disabled = this.room;
    const label = this.room ? 'Noise suppression (on for everyone)' : mine ? 'Noise suppression on' : 'Noise suppression off';
    this.toggle.title = label;
    this.toggle.setAttribute('aria-label', label);
    this.onChange();
  }
}
