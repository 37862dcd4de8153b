/** The meeting's chat: its history on entry, messages as they come, and an unread count while the
 * panel is closed. Text is shown as text, never as markup. */
import { describeError } from '../api.js';
import { h } from '../dom.js';

export class Chat {
  #seen = new Set();

  /**
   * @param {object} options
   * @param {(userId: number) => string} options.nameOf
   * @param {(count: number) => void} options.onUnread
   */
  constructor({ client, api, meetingId, myId, nameOf, onUnread }) {
    this.client = client;
    this.api = api;
    this.meetingId = meetingId;
    this.myId = myId;
    this.nameOf = nameOf;
    this.onUnread = onUnread;
    this.unread = 0;
    this.isOpen = false;
    this.log = h('ol', { className: 'chat-log', id: 'chat-log', 'aria-label': 'Messages', 'aria-live': 'polite' });
    this.input = h('input', { name: 'text', maxLength: 2000, autocomplete: 'off', placeholder: 'Message everyone', required: true, 'aria-label': 'Message' });
    this.error = h('p', { className: 'form-error', role: 'alert' });
    const form = h('form', { className: 'chat-form', id: 'chat-form' }, this.input, h('button', { type: 'submit' }, 'Send'));
    form.onsubmit = (event) => {
      event.preventDefault();
      const text = this.input.value.trim();
      if (!text) return;
      try {
        this.client.sendChat(text);
        this.input.value = '';
        this.error.textContent = '';
      } catch {
        this.error.textContent = 'Not connected; the message was not sent.';
      }
    };
    this.element = h('section', { className: 'panel-body chat', 'aria-label': 'Chat' }, this.log, this.error, form);
    client.addEventListener('chat', ({ detail }) => this.add(detail));
  }

  async loadHistory() {
    try {
      const messages = await this.api.call('GET', `/meetings/${this.meetingId}/messages?limit=50`);
      for (const message of messages.reverse()) this.add(message, { history: true });
    } catch (error) {
      this.error.textContent = describeError(error);
    }
  }

  add(message, { history = false } = {}) {
    if (message.message_id && this.#seen.has(message.message_id)) return;
    this.#seen.add(message.message_id);
    const mine = message.user_id === this.myId;
    const time = message.created_at ? new Date(message.created_at).toLocaleTimeString(undefined, { timeStyle: 'short' }) : '';
    const line = h(
      'li',
      { className: mine ? 'mine' : '' },
      h('span', { className: 'chat-meta' }, h('strong', {}, mine ? 'You' : this.nameOf(message.user_id, message.username)), ' ', h('time', {}, time)),
      h('span', { className: 'chat-text' }, message.text),
    );
    this.log.append(line);
    line.scrollIntoView({ block: 'nearest' });
    if (!history && !mine && !this.isOpen) {
      this.unread += 1;
      this.onUnread(this.unread);
    }
  }

  setOpen(open) {
    this.isOpen = open;
    if (open) {
      this.unread = 0;
      this.onUnread(0);
      this.input.focus();
    }
  }
}
