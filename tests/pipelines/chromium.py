"""Render a local HTML file in headless Chromium and report whether its images load.

No package beyond the standard library: Chromium is driven through the Chrome
DevTools Protocol over ``--remote-debugging-pipe`` (JSON messages ending in a NUL
byte; Chromium reads commands from its fd 3 and writes replies to its fd 4).

    from tests.pipelines.chromium import CHROMIUM, render
    render("study/report.html", "/tmp/shot.png")
    # {'images': 12, 'loaded': 12, 'broken': [], 'requests': [...], 'height': 9123, ...}

``requests`` lists every URL the page asked for that is neither ``file:`` nor
``data:`` (a self-contained page asks for none).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")

#: What the page reports about its images, evaluated in the page.
IMAGES_JS = """JSON.stringify(Array.from(document.images).map(im => ({
  src: im.currentSrc.slice(0, 60), alt: im.alt, complete: im.complete,
  width: im.naturalWidth, height: im.naturalHeight})))"""


class _Pipe:
    """The DevTools protocol over Chromium's pipe: send commands, collect events."""

    def __init__(self, proc, to_chrome: int, from_chrome: int, timeout: float):
        self.proc, self.out, self.inp, self.timeout = proc, to_chrome, from_chrome, timeout
        self.buf, self.next_id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium over the DevTools pipe")
            ready, _, _ = select.select([self.inp], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.inp, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()})")
                self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\0")
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.out, data):]
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))


def render(html_path, screenshot_path=None, *, width: int = 1280, max_height: int = 30000,
           timeout: float = 60.0) -> dict:
    """Open `html_path` in headless Chromium, wait for its load event, and return
    ``{"images", "loaded", "broken", "requests", "height", "title"}``; with
    `screenshot_path`, also save a full-page PNG there (`width` CSS px wide, at most
    `max_height` tall)."""
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="porevox-chromium-") as profile:
        to_r, to_w = os.pipe()        # we write commands -> Chromium's fd 3
        from_r, from_w = os.pipe()    # Chromium's fd 4 -> we read replies

        def child_fds():              # in the child before exec: the pipe ends become fds 3, 4
            high_r = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10)    # out of the way of 3 and 4 first
            high_w = fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3, inheritable=True)
            os.dup2(high_w, 4, inheritable=True)

        proc = subprocess.Popen([CHROMIUM, *FLAGS, "--remote-debugging-pipe",
                                 f"--user-data-dir={profile}", f"--window-size={width},900"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=child_fds,
                                close_fds=False)   # Python's own fds are not inheritable
        os.close(to_r)
        os.close(from_w)
        cdp = _Pipe(proc, to_w, from_r, timeout)
        try:
            target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
            s = cdp.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            cdp.send("Page.enable", s)
            cdp.send("Network.enable", s)
            cdp.send("Emulation.setDeviceMetricsOverride", s, width=width, height=900,
                     deviceScaleFactor=1, mobile=False)
            cdp.send("Page.navigate", s, url=url)
            cdp.wait_event("Page.loadEventFired")
            images = json.loads(cdp.send("Runtime.evaluate", s, expression=IMAGES_JS,
                                         returnByValue=True)["result"]["value"])
            title = cdp.send("Runtime.evaluate", s, expression="document.title",
                             returnByValue=True)["result"].get("value", "")
            requests = sorted({ev["params"]["request"]["url"] for ev in cdp.events
                               if ev.get("method") == "Network.requestWillBeSent"
                               and not ev["params"]["request"]["url"].startswith(("file:", "data:"))})
            metrics = cdp.send("Page.getLayoutMetrics", s)
            height = int(metrics.get("cssContentSize", metrics.get("contentSize"))["height"])
            if screenshot_path is not None:
                shot_h = min(height, max_height)
                cdp.send("Emulation.setDeviceMetricsOverride", s, width=width, height=shot_h,
                         deviceScaleFactor=1, mobile=False)
                png = cdp.send("Page.captureScreenshot", s, format="png",
                               clip={"x": 0, "y": 0, "width": width, "height": shot_h, "scale": 1},
                               captureBeyondViewport=True)["data"]
                Path(screenshot_path).write_bytes(base64.b64decode(png))
            try:
                cdp.send("Browser.close")
            except (RuntimeError, TimeoutError):
                pass
        finally:
            os.close(to_w)
            os.close(from_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    loaded = [im for im in images if im["complete"] and im["width"] > 0 and im["height"] > 0]
    broken = [im for im in images if im not in loaded]
    return {"images": len(images), "loaded": len(loaded), "broken": broken, "requests": requests,
            "height": height, "title": title}
