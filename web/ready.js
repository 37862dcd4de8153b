/** `window.huiyiReady` for browser tests: settles once the room is joined and the publish answer
 * applied (with the client), and rejects on the first error before that. Only tests await it;
 * failures in interactive use are shown on the page instead. */
let settle = null;

export function armReady() {
  const promise = new Promise((resolve, reject) => {
    settle = { resolve, reject };
  });
  promise.catch(() => {});
  window.huiyiReady = promise;
  return promise;
}

export function markReady(client) {
  settle?.resolve(client);
}

export function markFailed(error) {
  settle?.reject(error);
}
