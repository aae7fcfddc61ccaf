"""Real Firefox for the web app's tests: Debian's `firefox-esr` over WebDriver BiDi.

Why not Playwright's Firefox: `p.firefox.launch()` needs Playwright's patched build (a
download, refused here), and its BiDi channel (`channel="moz-firefox"`) asks for
`network.addDataCollector`, which Firefox 140 ESR - what Debian ships - does not have. So
this module speaks the W3C WebDriver BiDi protocol itself, over the `websockets` client, and
only the few commands the tests need: navigate, call a function in the page, real pointer
and key input, file inputs, screenshots, and the `log.entryAdded` / `userPromptOpened` events that tell
the tests about console errors, uncaught exceptions and alert dialogs.

`FirefoxPage.evaluate(function_source, arg)` has Playwright's semantics for the JSON-able
case, so a test helper written against Playwright's `page.evaluate` runs here unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _browser import Problems
from websockets.sync.client import ClientConnection, connect

FIREFOX = os.environ.get("FIREFOX", "/usr/bin/firefox-esr")

# Keep Firefox off the network (outbound connections are refused and flagged on these
# machines). The remote agent also applies its own "recommended" testing prefs on top.
PREFS = {
    "app.normandy.enabled": False,
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "browser.aboutwelcome.enabled": False,
    "browser.discovery.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.ping-centre.telemetry": False,
    "browser.region.network.url": "",
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.search.update": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage": "about:blank",
    "browser.startup.page": 0,
    "browser.topsites.contile.enabled": False,
    "captivedetect.canonicalURL": "",
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "extensions.blocklist.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.update.enabled": False,
    "media.gmp-manager.url": "",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.http.speculative-parallel-limit": 0,
    "network.prefetch-next": False,
    "services.settings.server": "",
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.server": "",
}


class BidiError(RuntimeError):
    pass


class Firefox:
    """One headless Firefox and its BiDi session; commands are synchronous."""

    def __init__(self, ws: ClientConnection, proc: subprocess.Popen):
        self._ws, self._proc = ws, proc
        self._next_id = 0
        self.watch = Problems()

    def send(self, method: str, params: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
        self._next_id += 1
        ident = self._next_id
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{method}: no answer in {timeout_s}s")
            msg = json.loads(self._ws.recv(timeout=left))
            if msg.get("id") == ident:
                if msg.get("type") == "error":
                    raise BidiError(f"{method}: {msg.get('error')}: {msg.get('message')}")
                return msg.get("result", {})
            if msg.get("type") == "event":
                self._on_event(msg["method"], msg["params"])

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "log.entryAdded" and params.get("level") == "error":
            kind = "exception" if params.get("type") == "javascript" else "console"
            self.watch.problems.append(f"{kind}: {params.get('text')}")
        elif method == "browsingContext.userPromptOpened":
            accept = params["type"] == "confirm"  # our own "delete ...?" questions
            if not accept:
                self.watch.problems.append(f"dialog {params['type']}: {params.get('message')}")
            # Answered from a thread: this connection is busy reading the current command.
            threading.Thread(
                target=self._ws.send,
                args=(
                    json.dumps(
                        {
                            "id": 10**9 + self._next_id,
                            "method": "browsingContext.handleUserPrompt",
                            "params": {"context": params["context"], "accept": accept},
                        }
                    ),
                ),
                daemon=True,
            ).start()

    def new_page(self, width: int = 1280, height: int = 900) -> FirefoxPage:
        context = self.send("browsingContext.create", {"type": "tab"})["context"]
        self.send(
            "browsingContext.setViewport",
            {"context": context, "viewport": {"width": width, "height": height}},
        )
        return FirefoxPage(self, context)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("browser.close", {}, timeout_s=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=15)  # then `firefox()` kills it


class FirefoxPage:
    """A tab: the subset of Playwright's Page the Firefox tests use."""

    def __init__(self, browser: Firefox, context: str):
        self.browser, self.context = browser, context

    @property
    def watch(self) -> Problems:
        return self.browser.watch

    def goto(self, url: str) -> None:
        self.browser.send(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}
        )

    def evaluate(self, function: str, arg: Any = None) -> Any:
        """Call ``function`` (JS source of a possibly async function of one argument) with
        ``arg``; both ways through JSON, as Playwright does for plain values."""
        wrapper = (
            f"async (json) => {{ const v = await ({function})(JSON.parse(json));"
            " return v === undefined ? null : JSON.stringify(v); }"
        )
        result = self.browser.send(
            "script.callFunction",
            {
                "functionDeclaration": wrapper,
                "arguments": [{"type": "string", "value": json.dumps(arg)}],
                "target": {"context": self.context},
                "awaitPromise": True,
                "resultOwnership": "none",
            },
        )
        if result["type"] == "exception":
            raise BidiError(f"evaluate: {result['exceptionDetails'].get('text')}")
        value = result["result"]
        return None if value["type"] == "null" else json.loads(value["value"])

    def wait_for(self, selector: str, timeout_s: float = 30) -> None:
        """Until ``selector`` matches an element."""
        self.wait_until(
            "(s) => !!document.querySelector(s)", selector, timeout_s, f"an element {selector}"
        )

    def wait_until(self, function: str, arg: Any, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(function, arg)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(0.1)

    def box(self, selector: str) -> dict[str, float]:
        self.wait_for(selector)
        return self.evaluate(
            "(s) => { const r = document.querySelector(s).getBoundingClientRect();"
            " return {x: r.x, y: r.y, width: r.width, height: r.height}; }",
            selector,
        )

    def _pointer(self, actions: list[dict[str, Any]]) -> None:
        self.browser.send(
            "input.performActions",
            {
                "context": self.context,
                "actions": [
                    {
                        "type": "pointer",
                        "id": "mouse",
                        "parameters": {"pointerType": "mouse"},
                        "actions": actions,
                    }
                ],
            },
        )

    def mouse_path(self, points: list[tuple[float, float]], button: int = 0) -> None:
        """Press at the first point, move through the rest, release (a click if one point)."""
        move = [{"type": "pointerMove", "x": round(x), "y": round(y)} for x, y in points]
        self._pointer(
            move[:1]
            + [{"type": "pointerDown", "button": button}]
            + move[1:]
            + [{"type": "pointerUp", "button": button}]
        )

    def click(self, selector: str, button: int = 0) -> None:
        """A real mouse click at the centre of the first element matching ``selector``."""
        b = self.box(selector)
        self.mouse_path([(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)], button)

    def type(self, text: str) -> None:
        """Real key presses into the focused element."""
        keys: list[dict[str, Any]] = []
        for ch in text:
            keys += [{"type": "keyDown", "value": ch}, {"type": "keyUp", "value": ch}]
        self.browser.send(
            "input.performActions",
            {"context": self.context, "actions": [{"type": "key", "id": "kb", "actions": keys}]},
        )

    def fill(self, selector: str, text: str) -> None:
        self.click(selector)
        self.evaluate("(s) => { document.querySelector(s).select(); }", selector)
        self.type(text)

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose ``paths`` in the file input ``selector``, as the file picker does."""
        self.wait_for(selector)
        node = self.browser.send(
            "script.callFunction",
            {
                "functionDeclaration": "(s) => document.querySelector(s)",
                "arguments": [{"type": "string", "value": selector}],
                "target": {"context": self.context},
                "awaitPromise": False,
                "resultOwnership": "none",
            },
        )["result"]
        self.browser.send(
            "input.setFiles",
            {
                "context": self.context,
                "element": {"sharedId": node["sharedId"]},
                "files": [str(p) for p in paths],
            },
        )

    def select(self, selector: str, value: str) -> None:
        """Pick the option ``value`` of a <select>, firing the events a user's pick fires."""
        self.wait_for(f"{selector} option[value='{value}']")
        self.evaluate(
            "(a) => { const el = document.querySelector(a.s); el.value = a.v;"
            " el.dispatchEvent(new Event('input', {bubbles: true}));"
            " el.dispatchEvent(new Event('change', {bubbles: true})); }",
            {"s": selector, "v": value},
        )

    def screenshot(self, path: Path) -> Path:
        data = self.browser.send("browsingContext.captureScreenshot", {"context": self.context})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.send("browsingContext.close", {"context": self.context})


def _user_js(prefs: dict[str, Any]) -> str:
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


@contextlib.contextmanager
def firefox(startup_timeout_s: float = 60) -> Iterator[Firefox]:
    if not os.access(FIREFOX, os.X_OK):
        pytest.fail(
            f"the web app's Firefox tests need Debian's firefox-esr at {FIREFOX}: `make "
            "browser` installs it as root, or `sudo apt-get install --no-install-recommends "
            "firefox-esr` (or set FIREFOX=/path/to/firefox)"
        )
    profile = tempfile.mkdtemp(prefix="vplab-firefox-")
    Path(profile, "user.js").write_text(_user_js(PREFS))
    env = dict(os.environ, MOZ_CRASHREPORTER_DISABLE="1", MOZ_DISABLE_SAFE_MODE_KEY="1")
    proc = subprocess.Popen(
        [FIREFOX, "--headless", "--no-remote", "--remote-debugging-port=0", "--profile", profile],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        endpoint = _endpoint(proc, startup_timeout_s)
        with connect(endpoint + "/session", max_size=None, open_timeout=startup_timeout_s) as ws:
            browser = Firefox(ws, proc)
            browser.send("session.new", {"capabilities": {}})
            browser.send(
                "session.subscribe",
                {"events": ["log.entryAdded", "browsingContext.userPromptOpened"]},
            )
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)
        shutil.rmtree(profile, ignore_errors=True)


def _endpoint(proc: subprocess.Popen, timeout_s: float) -> str:
    """Read Firefox's stderr until it names its BiDi endpoint; keep draining it after."""
    found: list[str] = []
    seen: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            m = re.search(r"WebDriver BiDi listening on (ws://\S+)", line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
            elif not found:
                seen.append(line)
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout_s) or not found:
        raise RuntimeError(f"Firefox did not start its BiDi endpoint: {''.join(seen)[-2000:]}")
    return found[0]
