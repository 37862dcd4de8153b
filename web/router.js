/** Hash routes (`#/home`, `#/m/12`): the server serves one page, and a reload stays on the screen
 * it was on. A route is a pattern with `:name` parts and a function rendering its screen. */

const routes = [];
let notFound = null;
let current = null;

export function route(pattern, render) {
  const names = [];
  const regex = new RegExp(
    `^${pattern.replace(/:([a-z_]+)/g, (_, name) => {
      names.push(name);
      return '([^/]+)';
    })}$`,
  );
  routes.push({ regex, names, render });
}

export function otherwise(render) {
  notFound = render;
}

/** The current route path, e.g. `/m/12`. */
export function currentPath() {
  return location.hash.replace(/^#/, '') || '/';
}

export function go(path, { replace = false } = {}) {
  const hash = `#${path}`;
  if (location.hash === hash) {
    dispatch();
  } else if (replace) {
    history.replaceState(null, '', hash);
    dispatch();
  } else {
    location.hash = hash;
  }
}

/** Renders the screen for the current hash; the previous screen's cleanup runs first. */
export async function dispatch() {
  const path = currentPath();
  if (typeof current === 'function') {
    try {
      current();
    } catch (error) {
      console.error(error);
    }
  }
  current = null;
  for (const { regex, names, render } of routes) {
    const match = path.match(regex);
    if (!match) continue;
    const params = Object.fromEntries(names.map((name, index) => [name, decodeURIComponent(match[index + 1])]));
    current = await render(params);
    return;
  }
  current = await notFound?.({ path });
}

export function start() {
  addEventListener('hashchange', dispatch);
  return dispatch();
}
