"""Opening the Snakemake report in headless Chromium and clicking through it."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

# Clicks as a user would: a category in the menu, then the eye button of a result; React
# handles element.click() like a real click. The page's title tells when it is done.
CLICK_SCRIPT = """
<script>
function ntclassClick(category, resultName) {
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  (async () => {
    await wait(1000);
    const label = [...document.querySelectorAll("a span")].find(
      (span) => span.textContent.trim() === category);
    const menu = label && label.closest("a");
    if (!menu) { document.title = "no menu entry " + category; return; }
    menu.click();
    await wait(1000);
    const row = [...document.querySelectorAll("tr")].find(
      (tr) => tr.textContent.includes(resultName));
    if (!row) { document.title = "no result " + resultName; return; }
    row.querySelector("a").click();
    await wait(1000);
    document.title = "clicked";
  })();
}
window.addEventListener("load", () => ntclassClick(%s, %s));
</script>
"""


def shown_after_clicking(chromium: str, report: Path, category: str, result: str,
                         workdir: Path) -> str:
    """The DOM of the report after opening `category` and viewing `result`."""
    slug = re.sub(r"\W", "_", category)
    page = workdir / f"clicked_{slug}.html"
    html = report.read_text()
    script = CLICK_SCRIPT % (json.dumps(category), json.dumps(result))
    head, tag, tail = html.rpartition("</body>")  # the page's own end, not one in its data
    page.write_text(head + script + tag + tail)
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    return out.stdout


def data_uri_payload(uri: str) -> bytes:
    """The bytes of a data: URI (base64 or percent-encoded)."""
    header, _, data = uri.partition(",")
    return base64.b64decode(data) if header.endswith(";base64") else unquote(data).encode()
