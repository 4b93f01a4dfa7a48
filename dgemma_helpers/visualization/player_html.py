"""The DenoisingPlayer as ONE self-contained HTML file: player.js and player.css inlined, the trace
embedded as JSON, no network (the page's Content-Security-Policy forbids it). The page hands player.js a
stand-in widget model (`staticModel`) instead of a kernel, so no Jupyter package is needed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src '{script_hash}'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{css}
body {{ margin: 16px; background: #fff; }}
</style>
</head>
<body>
<div id="dgemma-player"></div>
<script type="application/json" id="dgemma-trace">{data}</script>
<script type="module">{script}</script>
</body>
</html>
"""

BOOT = """
// ---- boot: this page has no kernel; the model is a stand-in holding the embedded trace ----
const data = JSON.parse(document.getElementById("dgemma-trace").textContent);
const model = staticModel({ _data: data, speed: %s, autoplay: false });
const widget = player();
widget.initialize({ model });
widget.render({ model, el: document.getElementById("dgemma-player") });
"""


def json_for_script(payload: Any) -> str:
    """JSON that is safe inside a <script> element: '<', '>' and '&' become \\u escapes, so no token text
    can close the element or open a tag; JSON.parse reads it back unchanged."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def player_html(payload: dict[str, Any], *, speed: float = 4.0) -> str:
    js = (STATIC / "player.js").read_text(encoding="utf-8")
    css = (STATIC / "player.css").read_text(encoding="utf-8")
    # The module is inlined verbatim: it must not contain the text that would end its element early.
    assert "</script" not in js.lower() and "</style" not in css.lower(), "static files must not close their element"
    script = js + BOOT % json.dumps(float(speed))
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    title = (payload.get("meta") or {}).get("title") or "DiffusionGemma denoising trace"
    return PAGE.format(script_hash=f"sha256-{digest}", title=html.escape(str(title)), css=css,
                       data=json_for_script(payload), script=script)
