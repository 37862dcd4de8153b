/**
 * The participant list: who is in, who waits to be let in, their roles and microphones, and for
 * hosts and moderators the actions on each. Roles and the waiting room travel only through the
 * participant list (the socket carries joins, leaves and media states), so it is polled: often
 * for those who admit people, rarely for the rest.
 */
import { describeError } from '../api.js';
import { avatar, displayName, h } from '../dom.js';

const POLL_MODERATOR_MS = 2500;
const POLL_OTHERS_MS = 8000;

export class People extends EventTarget {
  #timer = null;
  #waitingSeen = new Set();
  #drawn = '';

  /**
   * Events: `waiting` ({people}: the list of those waiting), `roles` (the user's own role changed:
   * {role}), `list` (the whole list, for names).
   */
  constructor({ api, client, meetingId, myId, moderation, notices }) {
    super();
    this.api = api;
    this.client = client;
    this.meetingId = meetingId;
    this.myId = myId;
    this.moderation = moderation;
    this.notices = notices;
    this.list = [];
    this.myRole = client.self?.role ?? 'participant';
    this.body = h('div', { className: 'people' });
    this.element = h('section', { className: 'panel-body', 'aria-label': 'People' }, this.body);
  }

  get canModerate() {
    return this.myRole === 'host' || this.myRole === 'moderator';
  }

  start() {
    const poll = async () => {
      await this.refresh();
      this.#timer = setTimeout(poll, this.canModerate ? POLL_MODERATOR_MS : POLL_OTHERS_MS);
    };
    poll();
  }

  stop() {
    clearTimeout(this.#timer);
  }

  async refresh() {
    if (!this.api) {
      this.list = [...this.client.participants.values()];
      this.render();
      return;
    }
    try {
      this.list = await this.api.call('GET', `/meetings/${this.meetingId}/participants`);
    } catch {
      return; // a reconnect or a removal is handled elsewhere; the next poll tries again
    }
    const me = this.list.find((person) => person.user_id === this.myId);
    if (me && me.role !== this.myRole) {
      this.myRole = me.role;
      this.dispatchEvent(new CustomEvent('roles', { detail: { role: me.role } }));
    }
    this.dispatchEvent(new CustomEvent('list', { detail: { list: this.list } }));
    const waiting = this.list.filter((person) => person.status === 'waiting');
    if (this.canModerate) {
      for (const person of waiting) {
        if (this.#waitingSeen.has(person.user_id)) continue;
        this.#waitingSeen.add(person.user_id);
        this.notices.show(`${displayName(person)} is waiting to join.`, {
          key: `waiting-${person.user_id}`,
          actions: [
            { label: 'Admit', run: () => this.#act(() => this.moderation.admit(person.user_id)) },
            { label: 'Deny', run: () => this.#act(() => this.moderation.deny(person.user_id)) },
          ],
        });
      }
      for (const id of [...this.#waitingSeen]) {
        if (!waiting.some((person) => person.user_id === id)) {
          this.#waitingSeen.delete(id);
          this.notices.dismiss(`waiting-${id}`);
        }
      }
    }
    this.dispatchEvent(new CustomEvent('waiting', { detail: { people: this.canModerate ? waiting : [] } }));
    this.render();
  }

  async #act(action) {
    try {
      await action();
    } catch (error) {
      this.notices.show(describeError(error));
    }
    await this.refresh();
  }

  #actions(person) {
    if (!this.canModerate || person.user_id === this.myId) return null;
    const name = displayName(person);
    const buttons = [];
    if (person.status === 'waiting') {
      buttons.push(
        h('button', { type: 'button', className: 'small primary', onclick: () => this.#act(() => this.moderation.admit(person.user_id)), 'aria-label': `Admit ${name}` }, 'Admit'),
        h('button', { type: 'button', className: 'small', onclick: () => this.#act(() => this.moderation.deny(person.user_id)), 'aria-label': `Deny ${name}` }, 'Deny'),
      );
      return h('div', { className: 'actions' }, buttons);
    }
    if (person.status === 'online' && person.media_state?.audio !== false) {
      buttons.push(h('button', { type: 'button', className: 'small', onclick: () => this.#act(() => this.moderation.mute(person.user_id)), 'aria-label': `Mute ${name}` }, 'Mute'));
    }
    if (this.myRole === 'host' && person.role !== 'host') {
      const role = h(
        'select',
        { className: 'small', 'aria-label': `Role of ${name}` },
        ['participant', 'moderator', 'host'].map((value) => h('option', { value, selected: person.role === value }, value === 'host' ? 'host (hand over)' : value)),
      );
      role.onchange = () => {
        if (role.value === 'host' && !confirm(`Make ${name} the host? You become a moderator.`)) {
          role.value = person.role;
          return;
        }
        this.#act(() => this.moderation.setRole(person.user_id, role.value));
      };
      buttons.push(role);
    }
    if (person.role !== 'host' && (this.myRole === 'host' || person.role === 'participant')) {
      buttons.push(
        h('button', {
          type: 'button',
          className: 'small danger',
          'aria-label': `Remove ${name}`,
          onclick: () => confirm(`Remove ${name} from the meeting?`) && this.#act(() => this.moderation.remove(person.user_id)),
        }, 'Remove'),
      );
    }
    return h('div', { className: 'actions' }, buttons);
  }

  #row(person) {
    const media = person.media_state ?? {};
    return h(
      'li',
      { className: 'person', dataset: { userId: person.user_id } },
      avatar(person, 'sm'),
      h(
        'span',
        { className: 'person-name' },
        displayName(person),
        person.user_id === this.myId ? ' (you)' : '',
        person.role !== 'participant' ? h('span', { className: 'badge role' }, person.role) : null,
      ),
      person.status === 'online'
        ? h('span', { className: 'person-media' }, media.audio === false ? h('span', { className: 'icon mic-off', role: 'img', 'aria-label': 'Microphone off' }) : null, media.screen_share ? h('span', { className: 'badge' }, 'sharing') : null)
        : null,
      this.#actions(person),
    );
  }

  /** Drawn again only when something changed, so a button or menu is never replaced under the
   * pointer (the list is polled every few seconds). */
  render() {
    const signature = JSON.stringify([this.myRole, this.list]);
    if (signature === this.#drawn) return;
    this.#drawn = signature;
    const online = this.list.filter((person) => person.status === 'online');
    const waiting = this.canModerate ? this.list.filter((person) => person.status === 'waiting') : [];
    this.body.replaceChildren(
      waiting.length ? h('h3', {}, `Waiting (${waiting.length})`) : null,
      waiting.length ? h('ul', { className: 'people-list waiting', 'aria-label': 'Waiting to join' }, waiting.map((p) => this.#row(p))) : null,
      h('h3', {}, `In the meeting (${online.length})`),
      h('ul', { className: 'people-list', 'aria-label': 'In the meeting' }, online.map((p) => this.#row(p))),
    );
  }
}
