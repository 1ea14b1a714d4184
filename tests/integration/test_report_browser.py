"""The report in a real headless Chromium: no console errors, tables and thumbnails, search.

Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (NUL-separated JSON
on file descriptors 3 and 4), which needs no websocket client. The run has a 2048-unit layer so
pagination and search are exercised at the size the report must handle. A screenshot is saved
to test-artifacts/report-layer.png.
"""
from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cdissect_cli.jobspec import resolve_spec
from cdissect_cli.report import write_report
from cdissect_cli.results import HeldOutQuality, LayerResult, RunResult, write_run_folder
from cdissect_common.manifest import ImageSource, manifest_key, register_dataset
from cdissect_common.store import open_store
from tests.conftest import REPO_ROOT, make_probe_images

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WORDS = ["red", "green", "blue", "circle", "square", "dark", "bright", "striped", "dotted",
         "tiny", "huge", "shiny", "matte", "wooden", "metal", "glass", "cloud", "water"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason="Debian chromium is not installed (make install installs it)"),
]


class DevTools:
    """A minimal DevTools-protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes() -> None:  # in the child: the browser reads fd 3 and writes fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: "queue.Queue[dict]" = queue.Queue()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.session = ""

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._cond:
                        self._replies[message["id"]] = message
                        self._cond.notify_all()
                else:
                    self.events.put(message)

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0,
             browser_level: bool = False) -> dict:
        """Send a command and wait for its result; protocol errors fail the test."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not browser_level:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._next_id not in self._replies:
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, f"no reply to {method}"
                self._cond.wait(left)
            reply = self._replies.pop(self._next_id)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply.get("result", {})

    def attach_to_page(self) -> None:
        """Attach (flattened session) to the browser's first page."""
        targets = self.send("Target.getTargets", browser_level=True)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                 browser_level=True)["sessionId"]

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (exceptions fail the test)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def drain_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads reported so far."""
        errors = []
        while not self.events.empty():
            event = self.events.get()
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(json.dumps(params["exceptionDetails"])[:400])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(json.dumps(params.get("args"))[:400])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
        return errors

    def close(self) -> None:
        """Close the browser and reap it."""
        try:
            self.send("Browser.close", browser_level=True, timeout=5)
        except AssertionError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def build_large_run(tmp_path: Path) -> tuple[Path, dict]:
    """A run with a 2048-unit layer and a 10-unit layer over a 40-image probe set in a store."""
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    images = [ImageSource(name=n, data=d, labels={"class": c}) for n, d, c in make_probe_images(40)]
    manifest = register_dataset(store, "probe", images, shard_size=16)
    rng = np.random.default_rng(3)
    layers = []
    for name, k in (("layer4", 2048), ("fc", 10)):
        ids = np.array([rng.permutation(len(WORDS))[:5] for _ in range(k)])
        scores = np.sort(rng.uniform(0.05, 2.0, size=(k, 5)), axis=1)[:, ::-1]
        dead = rng.uniform(size=k) < 0.02
        # fc carries held-out scores (its flags follow the correlation); layer4 is a run from before them
        r = rng.uniform(-0.1, 0.9, size=k)
        heldout = HeldOutQuality(correlation=r, correlation_low=r - 0.1, correlation_high=r + 0.1,
                                 auprc=rng.uniform(0, 1, size=k), auprc_base=np.full(k, 0.05),
                                 heldout_constant=np.zeros(k, bool), heldout_images=30) if name == "fc" else None
        layers.append(LayerResult(
            name=name, labels_key="", activation_keys=[], image_embedding_keys=[], text_embedding_key="",
            concept_ids=ids, scores=scores, top_images=np.array([rng.permutation(40)[:10] for _ in range(k)]),
            dead=dead, quality_auc=rng.uniform(0.4, 1.0, size=k), quality_p=rng.uniform(0, 0.02, size=k),
            heldout=heldout))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_folder(run_dir, RunResult(
        spec=resolve_spec(None, {"target_model": "resnet50", "layers": "layer4,fc"}),
        dataset={"name": "probe", "digest": manifest.digest, "num_images": 40, "store_url": store_url,
                 "manifest_key": manifest_key("probe")},
        concepts_name="words", concepts_sha256="0" * 64, words=WORDS, layers=layers))
    return run_dir, json.loads((run_dir / "results.json").read_text())


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    run_dir, results = build_large_run(tmp_path)
    html = write_report(run_dir)
    assert html.stat().st_size < 20_000  # the page itself stays small; data load per layer

    browser = DevTools(tmp_path / "profile")
    try:
        browser.attach_to_page()
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable")
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1500, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        browser.send("Page.navigate", {"url": html.as_uri()})
        assert browser.wait_for("document.querySelectorAll('#layer-index tbody tr').length") == 2

        # Open the big layer: the first page of rows with their thumbnails.
        browser.evaluate("location.hash = 'layer=layer4'")
        assert browser.wait_for("document.querySelectorAll('#units tbody tr').length") == 50
        assert browser.evaluate("document.getElementById('row-count').dataset.count") == "2048"
        first_row = browser.evaluate(
            "Array.from(document.querySelectorAll('#units tbody tr:first-child td')).map(td => td.textContent)")
        unit0 = results["layers"][0]["units"][0]
        assert first_row[0] == "0" and first_row[1].startswith(unit0["label"])
        assert browser.evaluate("document.querySelectorAll('#units tbody tr:first-child img').length") == 10
        browser.wait_for("Array.from(document.querySelectorAll('#units tbody tr:first-child img'))"
                         ".every(img => img.complete && img.naturalWidth > 0)")
        assert browser.evaluate("document.querySelector('#units img').loading") == "lazy"

        # Search filters rows: the count equals a direct count over results.json.
        query = "stripe"
        expected = sum(any(query in w for w, _ in u["top"]) for u in results["layers"][0]["units"])
        browser.evaluate(f"(() => {{ const s = document.getElementById('search'); s.value = '{query}';"
                         f" s.dispatchEvent(new Event('input')); }})()")
        assert browser.wait_for(f"document.getElementById('row-count').dataset.count === '{expected}'")
        shown = browser.evaluate("Array.from(document.querySelectorAll('#units tbody tr'))"
                                 ".map(tr => tr.querySelector('.label').textContent + '|' + "
                                 "tr.querySelector('.alts').textContent)")
        assert len(shown) == min(50, expected) and all(query in text for text in shown)
        assert browser.evaluate("document.querySelectorAll('#units .match').length") >= len(shown)

        # Sort by score: the first row is the best-scoring unit that matches.
        browser.evaluate("(() => { const s = document.getElementById('sort'); s.value = 'score-desc';"
                         " s.dispatchEvent(new Event('change')); })()")
        best = max((u for u in results["layers"][0]["units"] if any(query in w for w, _ in u["top"])),
                   key=lambda u: u["similarity"])
        assert browser.wait_for("document.querySelector('#units tbody tr td.unit').textContent") == str(best["unit"])

        # Jump to a unit that the search hides: filters reset, its page opens, the row is marked.
        browser.evaluate("location.hash = 'layer=layer4&unit=1500'")
        assert browser.wait_for("document.querySelector('#unit-0-1500.highlight') !== null")
        assert browser.evaluate("document.getElementById('row-count').dataset.count") == "2048"

        # The unit box jumps too; the pager moves by pages; the flag filter counts what the rule says.
        browser.evaluate("(() => { const s = document.getElementById('sort'); s.value = 'unit';"
                         " s.dispatchEvent(new Event('change')); })()")
        browser.evaluate("(() => { document.getElementById('jump-unit').value = '777';"
                         " document.getElementById('controls').requestSubmit(); })()")
        assert browser.wait_for("document.querySelector('#unit-0-777.highlight') !== null")
        browser.evaluate("document.querySelector('.pager .next').click()")
        assert browser.wait_for("document.querySelector('#units tbody tr td.unit').textContent") == "800"
        units = results["layers"][0]["units"]
        low = sum(not u["dead"] and (u["quality"]["auc"] < 0.6 or u["quality"]["p_value"] > 0.01) for u in units)
        browser.evaluate("(() => { const s = document.getElementById('filter'); s.value = 'low';"
                         " s.dispatchEvent(new Event('change')); })()")
        assert browser.wait_for(f"document.getElementById('row-count').dataset.count === '{low}'")
        assert browser.evaluate("Array.from(document.querySelectorAll('#units tbody tr'))"
                                ".every(tr => tr.querySelector('.badge.low') !== null)")
        browser.evaluate("(() => { const s = document.getElementById('filter'); s.value = 'all';"
                         " s.dispatchEvent(new Event('change')); })()")

        browser.evaluate("location.hash = 'layer=layer4'")
        browser.evaluate("(() => { const s = document.getElementById('sort'); s.value = 'unit';"
                         " s.dispatchEvent(new Event('change')); window.scrollTo(0, 0); })()")
        browser.wait_for("document.querySelector('#units tbody tr td.unit').textContent === '0'")
        browser.wait_for("Array.from(document.querySelectorAll('#units tbody tr:nth-child(-n+3) img'))"
                         ".every(img => img.complete && img.naturalWidth > 0)")
        shot = browser.send("Page.captureScreenshot", {"format": "png"})
        out = REPO_ROOT / "test-artifacts" / "report-layer.png"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))

        # A layer with held-out scores: the quality cell shows r, its interval and AUPRC; sorting by
        # correlation puts the best-correlated unit first; the low flag follows the correlation rule.
        browser.evaluate("location.hash = 'layer=fc'")
        assert browser.wait_for("document.getElementById('layer-title').textContent.startsWith('Layer fc:')")
        assert browser.evaluate("document.querySelectorAll('#units tbody tr').length") == 10
        fc = results["layers"][1]["units"]
        quality = browser.evaluate("document.querySelector('#units tbody tr:first-child td.quality').textContent")
        assert quality.startswith(f"r {fc[0]['quality']['correlation']:.3f} [") and "AUPRC" in quality
        browser.evaluate("(() => { const s = document.getElementById('sort'); s.value = 'corr-desc';"
                         " s.dispatchEvent(new Event('change')); })()")
        best = max(fc, key=lambda u: u["quality"]["correlation"])
        assert browser.wait_for("document.querySelector('#units tbody tr td.unit').textContent") == str(best["unit"])
        low = sum(not u["dead"] and (u["quality"]["correlation"] < 0.2 or u["quality"]["correlation_interval"][0] <= 0)
                  for u in fc)
        assert browser.evaluate("document.querySelectorAll('#units .badge.low').length") == low > 0
        assert "correlation" in browser.evaluate("document.querySelector('#units .badge.low').title")

        time.sleep(0.3)  # let late resource errors arrive
        assert browser.drain_errors() == []
    finally:
        browser.close()
