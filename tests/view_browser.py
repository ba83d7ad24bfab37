"""Opening a neuroglancer state in headless Chromium (driven by Playwright) and finding
colours in the screenshot."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

# As the machine notes say: without the background-networking flags Chromium keeps trying
# Google's hosts on a closed network. SwiftShader gives WebGL without a GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
MIN_PIXELS = 20  # of a colour: a few points, not an edge blended by chance
READY = "() => window.viewer !== undefined && window.viewer.isReady()"


def colours_seen(png: bytes, wanted: Mapping[str, str], tolerance: int = 12
                 ) -> dict[str, int]:
    """How many pixels of each wanted colour (#rrggbb) the image holds."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    counts = {}
    for name, hexa in wanted.items():
        rgb = np.array([int(hexa[k:k + 2], 16) for k in (1, 3, 5)])
        counts[name] = int((np.abs(pixels - rgb).max(axis=-1) <= tolerance).sum())
    return counts


def screenshot_when_ready(chromium: str, url: str, out: Path,
                          seen: Callable[[bytes], dict[str, int]], timeout: float = 90
                          ) -> dict[str, int]:
    """Open `url`, wait until neuroglancer says its layers are ready, then take
    screenshots until every count of `seen` reaches MIN_PIXELS (or `timeout` passes); the last
    screenshot is written to `out`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(url)
            page.wait_for_function(READY, timeout=timeout * 1000, polling=500)
            deadline = time.monotonic() + timeout
            while True:
                png = page.screenshot()
                counts = seen(png)
                if min(counts.values()) >= MIN_PIXELS or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(1000)
        finally:
            browser.close()
    out.write_bytes(png)
    return counts
