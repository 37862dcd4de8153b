/**
 * Live captions (docs/ai.md#live-captions): one line per speaker under the stage, replaced as the
 * server recognises their words (partial results shown lighter), and the switch a host or a
 * moderator turns them on and off with. Whether they are on is the server's to say (`media-state`
 * `captions`), so every participant's page follows the switch, whoever flipped it.
 */
import { h } from '../dom.js';

export class Captions {
  /**
   * @param {object} options
   * @param {import('./moderation.js').Moderation} options.moderation
   * @param {(userId: number, fallback?: string) => string} options.nameOf
   * @param {(error: Error) => void} options.onError
   */
  constructor({ moderation, nameOf, onError }) {
    this.nameOf = nameOf;
    /** user_id → that speaker's line */
    this.lines = new Map();
    this.element = h('ol', { className: 'captions', id: 'captions', 'aria-label': 'Live captions', 'aria-live': 'polite', hidden: true });
    this.toggle = h('button', {
      type: 'button',
      id: 'captions-toggle',
      className: 'tool',
      'aria-pressed': 'false',
      hidden: true,
      title: 'Live captions',
      onclick: async () => {
        try {
          await moderation.setCaptions(!this.on);
        } catch (error) {
          onError(error);
        }
      },
    }, h('span', { className: 'glyph captions', 'aria-hidden': 'true' }), h('span', { className: 'tool-label' }, 'Captions'));
  }

  get on() {
    return !this.element.hidden;
  }

  /** The switch is offered to hosts and moderators only (the server refuses everyone else). */
  allowSwitch(allowed) {
    this.toggle.hidden = !allowed;
  }

  show(on) {
    this.element.hidden = !on;
    this.toggle.setAttribute('aria-pressed', String(on));
    if (on) return;
    for (const line of this.lines.values()) line.remove();
    this.lines.clear();
  }

  /** A recognised utterance (the server's `caption` message). */
  add(caption) {
    let line = this.lines.get(caption.user_id);
    if (!line) {
      line = h('li', { dataset: { userId: caption.user_id } }, h('b'), ' ', h('span'));
      this.lines.set(caption.user_id, line);
    }
    line.querySelector('b').textContent = `${this.nameOf(caption.user_id, caption.nickname || caption.username)}:`;
    line.querySelector('span').textContent = caption.text;
    line.classList.toggle('partial', !caption.final);
    this.element.append(line); // the latest speaker last
  }

  /** Someone left: their line goes. */
  drop(userId) {
    this.lines.get(userId)?.remove();
    this.lines.delete(userId);
  }
}
