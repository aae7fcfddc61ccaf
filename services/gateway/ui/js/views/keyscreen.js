// The first screen: paste the API key `make run` printed. It is checked with one call and
// kept in sessionStorage (gone when the tab closes).
import { useState } from "../../vendor/hooks.module.js";
import { api, keyStore } from "../api.js";
import { html } from "../html.js";

export function KeyScreen({ onKey }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const key = value.trim();
    if (!key) return setError("Paste the API key printed by `make run`.");
    setBusy(true);
    keyStore.set(key);
    try {
      await api.datasets();
      onKey(key);
    } catch (err) {
      keyStore.clear();
      setError(err.status === 401 ? "This key is not valid." : err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="keyscreen" onSubmit=${submit}>
    <h1>VP Lab</h1>
    <p>Paste your API key (<code>make run</code> prints it).</p>
    <input type="password" autocomplete="off" data-testid="api-key-input" placeholder="vpl_…"
      value=${value} onInput=${(e) => setValue(e.target.value)} autofocus />
    <button type="submit" data-testid="api-key-submit" disabled=${busy}>Open</button>
    ${error && html`<p class="error" data-testid="error-banner" role="alert">${error}</p>`}
  </form>`;
}
