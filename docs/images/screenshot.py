"""Screenshots of the Prefect UI (a JavaScript app) through headless Chromium's DevTools protocol.

`chromium --screenshot` shoots before the UI has fetched its data; this waits in real time, can
click (JavaScript evaluated in the page, e.g. to open the Artifacts tab), then shoots. Usage
(Debian's `chromium` on PATH; the `websockets` package comes with Prefect):

    python docs/images/screenshot.py '[["http://127.0.0.1:4200/runs", "docs/images/runs.png", 8, null]]'

Each entry: URL, output PNG, seconds to wait, JavaScript to run before shooting (or null).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

#: Clicks the run page's "Artifacts" tab.
ARTIFACTS_TAB = ("(() => { const tabs = [...document.querySelectorAll('*')].filter(e => e.children.length === 0 "
                 "&& e.textContent.trim() === 'Artifacts'); tabs.forEach(e => e.click()); return tabs.length; })()")


def _page_socket(profile: Path) -> str:
    """The page's DevTools socket of the Chromium using ``profile`` (its port: DevToolsActivePort)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            port = (profile / "DevToolsActivePort").read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as r:  # our own loopback
                return str(next(t for t in json.load(r) if t["type"] == "page")["webSocketDebuggerUrl"])
        except (OSError, IndexError, StopIteration):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def _shoot(socket: str, shots: list[list[Any]]) -> None:
    async with websockets.connect(socket, max_size=50_000_000, ping_interval=None) as ws:
        n = 0

        async def call(method: str, **params: Any) -> dict[str, Any]:
            nonlocal n
            n += 1
            await ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == n:
                    return dict(msg.get("result", msg))

        async def idle(seconds: float) -> None:  # reading what the page sends meanwhile
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(ws.recv(), left)
                except TimeoutError:
                    return

        await call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        for url, out, wait_s, js in shots:
            await call("Page.navigate", url=url)
            await idle(wait_s)
            if js:
                await call("Runtime.evaluate", expression=js, awaitPromise=True)
                await idle(3)
            shot = await call("Page.captureScreenshot", format="png")
            Path(out).write_bytes(base64.b64decode(shot["data"]))
            print(out)


def main(shots: list[list[Any]]) -> None:
    """Start headless Chromium (a profile and a port of its own: other browsers on the machine are
    left alone), take the screenshots, stop it."""
    import tempfile

    profile = Path(tempfile.mkdtemp(prefix="screenshot-"))
    browser = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1000",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(_shoot(_page_socket(profile), shots))
    finally:
        browser.terminate()
        browser.wait()
        import shutil

        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
