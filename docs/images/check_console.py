"""Open a page in headless Chromium (Debian's `chromium`) through the DevTools protocol; print
every console message, exception and log entry, and how many plots the page drew; exit 1 if any
is an error. A private profile and port, so other browsers on the machine are left alone.

    python docs/images/check_console.py file:///abs/path/report.html
"""
import json, subprocess, sys, time, urllib.request
from websockets.sync.client import connect
url = sys.argv[1]
import tempfile, pathlib
profile = pathlib.Path(tempfile.mkdtemp(prefix="cdp-"))
proc = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                         "--window-size=1400,2400", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            port = (profile / "DevToolsActivePort").read_text().split()[0]
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
            page = next(t for t in targets if t["type"] == "page"); break
        except Exception:
            time.sleep(0.2)
    errors = []
    with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
        n = 0
        def send(method, **params):
            global n; n += 1; ws.send(json.dumps({"id": n, "method": method, "params": params})); return n
        for m in ("Runtime.enable", "Log.enable", "Page.enable"): send(m)
        send("Page.navigate", url=url)
        loaded = None; deadline = time.time() + 60; figs = None
        while time.time() < deadline:
            try: msg = json.loads(ws.recv(timeout=1))
            except TimeoutError: msg = {}
            m = msg.get("method")
            if m == "Runtime.exceptionThrown":
                errors.append(("exception", msg["params"]["exceptionDetails"].get("exception", {}).get("description")))
            elif m == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description"))) for a in msg["params"]["args"])
                print("console", msg["params"]["type"], args)
                if msg["params"]["type"] in ("error", "assert"): errors.append(("console.error", args))
            elif m == "Log.entryAdded":
                e = msg["params"]["entry"]; print("log", e["level"], e.get("text"), e.get("url"))
                if e["level"] == "error": errors.append(("log", e.get("text")))
            elif m == "Page.loadEventFired":
                loaded = time.time()
            if loaded and time.time() - loaded > 5 and figs is None:
                i = send("Runtime.evaluate", expression="[document.URL, document.querySelectorAll('.plot').length, document.querySelectorAll('.plot .main-svg').length]", returnByValue=True)
                figs = i
            if msg.get("id") == figs and figs is not None:
                print("plots on the page, plots drawn:", msg["result"]["result"]["value"]); break
    print("errors:", errors)
    sys.exit(1 if errors else 0)
finally:
    proc.terminate(); proc.wait()
