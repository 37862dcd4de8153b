/** Small DOM helpers: elements are built with properties and text, never from HTML strings, so
 * names and chat typed by others can never become markup. */

/**
 * `h('button', {type: 'button', onclick, 'aria-label': 'Mute'}, 'Mute')`: keys that are element
 * properties are set as such (`className`, `hidden`, `onclick`…), the rest as attributes; children
 * are nodes or text; null/false children are skipped.
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'dataset') Object.assign(element.dataset, value);
    else if (key in element && !key.includes('-')) element[key] = value;
    else element.setAttribute(key, value === true ? '' : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Replaces an element's content. */
export function mount(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** The two letters shown when someone has no avatar (or no camera on). */
export function initials(name) {
  const words = String(name || '?').trim().split(/[\s._-]+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[1][0] : (words[0] ?? '?').slice(0, 2);
  return letters.toUpperCase();
}

/** A stable hue per user, so an avatar without a picture keeps its colour. */
export function hueOf(id) {
  return (Number(id) * 137) % 360;
}

/** An avatar: the uploaded picture, else the initials on a colour of the user's own. */
export function avatar(person, size = 'md') {
  const name = displayName(person);
  if (person?.avatar_url) {
    return h('img', { className: `avatar avatar-${size}`, src: person.avatar_url, alt: '', draggable: false });
  }
  const element = h('span', { className: `avatar avatar-${size}`, 'aria-hidden': 'true' }, initials(name));
  element.style.setProperty('--hue', String(hueOf(person?.user_id ?? 0)));
  return element;
}

export function displayName(person) {
  return person?.nickname || person?.username || (person?.user_id ? `User ${person.user_id}` : 'Someone');
}

/** Short local date and time of an ISO moment. */
export function when(iso) {
  if (!iso) return '';
  return new Date(iso).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** `<input type="datetime-local">` value for a Date, in local time. */
export function localInputValue(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** A labelled form field: the label wraps the control, so it is named for assistive technology. */
export function field(label, control, hint) {
  const hintId = hint ? `hint-${Math.random().toString(36).slice(2)}` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  return h('label', { className: 'field' }, h('span', { className: 'field-label' }, label), control, hint && h('small', { id: hintId }, hint));
}

/** A form's error line, announced when it changes. */
export function errorLine() {
  return h('p', { className: 'form-error', role: 'alert' });
}
