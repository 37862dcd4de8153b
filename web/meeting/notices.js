/** Short notices over the meeting (someone joined, left, is waiting; you were muted), read out by
 * screen readers through a polite live region, gone after a few seconds unless they carry an
 * action. */
import { h } from '../dom.js';

const SHOWN_MS = 5000;

export class Notices {
  constructor() {
    this.element = h('div', { className: 'notices', role: 'status', 'aria-live': 'polite' });
  }

  /** @param {{label: string, run: () => void}[]} [actions] buttons on the notice */
  show(text, { actions = [], sticky = false, key } = {}) {
    if (key) this.dismiss(key);
    const notice = h(
      'div',
      { className: 'notice', dataset: key ? { key } : {} },
      h('span', {}, text),
      actions.map(({ label, run }) =>
        h('button', { type: 'button', className: 'small', onclick: () => { run(); notice.remove(); } }, label),
      ),
      h('button', { type: 'button', className: 'small ghost', 'aria-label': 'Dismiss', onclick: () => notice.remove() }, '×'),
    );
    this.element.append(notice);
    if (!sticky && !actions.length) setTimeout(() => notice.remove(), SHOWN_MS);
    return notice;
  }

  dismiss(key) {
    for (const notice of this.element.querySelectorAll('.notice')) {
      if (notice.dataset.key === key) notice.remove();
    }
  }
}
