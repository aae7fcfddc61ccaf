// One place that shows errors: the banner (data-testid=error-banner) of the app shell.
const listeners = new Set();

export function onError(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function showError(e) {
  if (e && e.name === "AbortError") return; // a newer request replaced this one
  const message = e?.message || String(e);
  for (const fn of listeners) fn(message);
}

/** Wrap an async handler so its failures land in the banner. */
export const guarded =
  (fn) =>
  async (...args) => {
    try {
      return await fn(...args);
    } catch (e) {
      showError(e);
    }
  };
