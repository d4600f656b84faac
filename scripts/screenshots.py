"""Screenshots for the docs, rendered by headless Chromium: the MLflow runs table and a `dvc plots diff` page.

    python scripts/screenshots.py --project . --revs main mag9 --tracking-uri sqlite:///mlflow.db --out docs/img

writes ``docs/img/mlflow-runs.png`` (the runs table of the tracking store's experiment, served by ``mlflow
server`` on a free loopback port, one group per DVC experiment: its pipeline parent run with the stage runs
nested under it, or, in a store without parent runs, MLflow's "Group by" on the ``dvc_exp`` tag) and
``docs/img/dvc-plots-diff.png`` (``dvc plots diff REV_A REV_B`` of the project: every data plot with both
revisions' series; the PNG plots, shown per revision, are left out). ``--only mlflow`` / ``--only plots``
takes one of them.

Needs Debian's ``chromium`` (``apt-get install chromium``). The page ``dvc plots diff`` writes loads Vega from a
CDN; this script serves the same Vega versions from local files instead, installed once with ``npm`` into
``--vega-dir`` (the npm registry is the only network use). Chromium is driven over the DevTools protocol
(``aiohttp``'s websocket client, installed with DVC) so the script can wait for the pages to render and click
through MLflow's table (expand the parent runs, or "Group by"). Not part of the test suite: it needs a browser
and minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
WIDTH = 1400  # CSS pixels of every screenshot; heights follow the page


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``check()`` until it returns a truthy value (returned) or ``timeout`` seconds pass (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


# ------------------------------------------------------------------------------------------ Chromium over CDP


class Page:
    """One Chromium tab driven over the DevTools protocol: navigate, evaluate, click, screenshot."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._next_id = 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events arriving meanwhile are skipped)."""
        self._next_id += 1
        call_id = self._next_id
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json()
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll a JavaScript expression until it is truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")

    async def goto(self, url: str, height: int) -> None:
        """Load ``url`` in a ``WIDTH`` x ``height`` viewport and wait for the document to be complete."""
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1, mobile=False
        )
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", 60, f"{url} to load")

    async def click(self, x: float, y: float) -> None:
        """A real mouse click at a point of the viewport (menus built on pointer events ignore element.click())."""
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def click_text(self, selector: str, text: str, timeout: float = 20) -> None:
        """Click the first visible element matching ``selector`` whose text is ``text`` (trimmed)."""
        find = f"""(() => {{
            const el = [...document.querySelectorAll({json.dumps(selector)})].find(e =>
                e.textContent.trim() === {json.dumps(text)} && e.getBoundingClientRect().width > 0);
            if (!el) return null;
            el.scrollIntoView({{block: 'center'}});
            const r = el.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2];
        }})()"""
        x, y = await self.wait_for(find, timeout, f"{selector} {text!r}")
        await self.click(x, y)

    async def screenshot(self, path: Path, height: int | None = None) -> None:
        """PNG of the page, ``height`` CSS pixels tall (default: the whole document)."""
        if height is None:
            height = int(await self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1, mobile=False
        )
        await asyncio.sleep(1.0)  # let the page lay itself out for the new height
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"wrote {path} ({WIDTH}x{height})")


@asynccontextmanager
async def chromium(binary: str) -> AsyncIterator[Page]:
    """A headless Chromium with a fresh profile (no first-run state), and a page of it."""
    import aiohttp  # installed with DVC (dvc-http); imported here so --help works without it

    profile = tempfile.mkdtemp(prefix="screenshots-chromium-")
    port = free_port()
    proc = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def page_target() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = json.load(r)
            except OSError:
                return None
            return next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)

        ws_url = wait_until(page_target, 30, "Chromium's DevTools endpoint")
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            page = Page(ws)
            await page.send("Page.enable")
            yield page
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


# ------------------------------------------------------------------------------------------ dvc plots diff


def vega_scripts() -> list[tuple[str, str]]:
    """(package, version) of the Vega scripts DVC's HTML page loads, read from dvc_render so they always match."""
    from dvc_render.vega import VegaRenderer

    return re.findall(r"/npm/(vega[a-z-]*)@([0-9.]+)", VegaRenderer.SCRIPTS)


def local_vega(vega_dir: Path) -> dict[str, Path]:
    """Each Vega package's minified build under ``vega_dir``, installed with npm the first time."""
    packages = vega_scripts()
    builds = {name: vega_dir / "node_modules" / name / "build" / f"{name}.min.js" for name, _ in packages}
    if not all(path.is_file() for path in builds.values()):
        npm = shutil.which("npm")
        if npm is None:
            sys.exit(f"error: npm is needed once to install {', '.join(n for n, _ in packages)} into {vega_dir}")
        vega_dir.mkdir(parents=True, exist_ok=True)
        # --legacy-peer-deps: vega-embed 6 declares a peer range that npm 7+ refuses next to these exact pins
        specs = [f"{name}@{version}" for name, version in packages]
        cmd = [npm, "install", "--no-save", "--no-audit", "--no-fund", "--legacy-peer-deps", "--prefix", str(vega_dir)]
        subprocess.run([*cmd, *specs], check=True)
    return builds


def plots_diff_page(project: Path, revs: list[str], out: Path, vega_dir: Path, targets: list[str]) -> Path:
    """Run ``dvc plots diff`` into ``out`` and point its page at local Vega builds; return the page."""
    cmd = [sys.executable, "-m", "dvc", "plots", "diff", *revs, "-o", str(out)]
    if targets:
        cmd += ["--targets", *targets]
    subprocess.run(cmd, cwd=project, check=True)
    index = out / "index.html"
    html = index.read_text()
    for name, path in local_vega(vega_dir).items():
        html = re.sub(rf"https://cdn\.jsdelivr\.net/npm/{re.escape(name)}@[0-9.]+", path.resolve().as_uri(), html)
    # plots side by side across the page width instead of one per line; the PNGs (DVC's bordered image divs, one
    # per revision) hidden: the screenshot shows what the data plots overlay
    css = "body { display: flex; flex-wrap: wrap; align-items: flex-start; }\n"
    css += 'div[style*="border:1px solid"] { display: none; }'
    html = html.replace("</style>", css + "\n</style>", 1)
    index.write_text(html)
    return index


async def shoot_plots(page: Page, index: Path, path: Path) -> None:
    """Screenshot the plots page once Vega has drawn every chart."""
    await page.goto(index.as_uri(), 900)
    # a plot without data in either revision gets an empty spec, which draws nothing: not waited for
    charts = await page.evaluate(
        "[...document.querySelectorAll('div[id] > script')].filter(s => !s.textContent.includes('spec = {};')).length"
    )
    await page.wait_for(
        f"document.querySelectorAll('canvas, svg.marks').length >= {charts}", 60, f"{charts} Vega charts to draw"
    )
    await page.screenshot(path)


# ------------------------------------------------------------------------------------------ MLflow runs table


@contextmanager
def mlflow_server(tracking_uri: str) -> Iterator[str]:
    """``mlflow server`` on a free loopback port over ``tracking_uri``; yields its base URL."""
    port = free_port()
    artifacts = tempfile.mkdtemp(prefix="screenshots-mlartifacts-")  # read-only use: no artifact is written
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri]
    cmd += ["--default-artifact-root", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(healthy, 120, "mlflow server")
        yield url
    finally:
        os.killpg(proc.pid, 15)  # the server's own process group: gunicorn/uvicorn workers included
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        shutil.rmtree(artifacts, ignore_errors=True)


def experiment_id(url: str, name: str) -> str:
    """The MLflow experiment id of ``name`` (REST API of the server)."""
    query = urllib.parse.urlencode({"experiment_name": name})
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as r:
        return str(json.load(r)["experiment"]["experiment_id"])


def has_pipeline_parents(url: str, experiment: str) -> bool:
    """Whether the experiment has parent runs, one per pipeline run (tag ``run_kind: pipeline``)."""
    body = {"experiment_ids": [experiment], "filter": "tags.run_kind = 'pipeline'", "max_results": 1}
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/runs/search", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return bool(json.load(r).get("runs"))


async def shoot_mlflow(page: Page, url: str, experiment: str, group_by_tag: str | None, path: Path) -> None:
    """The experiment's runs table, one group per DVC experiment.

    ``group_by_tag`` ``None``: the pipeline parent runs are the groups (each expanded to show its stage runs)
    when the store has them, else the ``dvc_exp`` tag; a tag name: MLflow's "Group by" on it; ``""``: no grouping.
    """
    exp_id = experiment_id(url, experiment)
    parents = group_by_tag is None and has_pipeline_parents(url, exp_id)
    if group_by_tag is None:
        group_by_tag = "" if parents else "dvc_exp"
    # workflowType: the runs table even where the UI would open on its GenAI side
    await page.goto(f"{url}/#/experiments/{exp_id}/runs?workflowType=machine_learning", 1000)
    await page.wait_for("document.body.innerText.includes('matching runs')", 60, "the runs table")
    # MLflow 3 opens an assistant side panel on a fresh profile; close it so the table gets the width
    await page.evaluate(
        """(() => { const b = [...document.querySelectorAll('button[aria-label]')]
            .filter(b => /close/i.test(b.getAttribute('aria-label')) && b.getBoundingClientRect().x > 900);
            b.forEach(x => x.click()); return b.length; })()"""
    )
    await asyncio.sleep(2)  # the table lays itself out again at its new width
    if parents:
        # the expand button of each parent row (child rows have none): open every parent, top to bottom
        expanders = "[...document.querySelectorAll('.ag-row button[data-component-id*=runnamecellrenderer]')]"
        count = int(await page.wait_for(f"{expanders}.length", 30, "the parent runs' expand buttons"))
        for i in range(count):
            rows = await page.evaluate("document.querySelectorAll('.ag-row').length")
            await page.evaluate(f"{expanders}[{i}].click()")
            await page.wait_for(f"document.querySelectorAll('.ag-row').length > {rows}", 20, "a parent's stage runs")
    if group_by_tag:
        await page.click_text("button", "Group by")
        await page.click_text("[role=menuitemcheckbox], [role=menuitem], [role=option], label", group_by_tag)
        await page.send("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape")
        await page.wait_for("document.body.innerText.includes('Group:')", 20, "the grouped table")
    await asyncio.sleep(2)
    await page.screenshot(path, 1000)


# ------------------------------------------------------------------------------------------ CLI


async def main_async(args: argparse.Namespace) -> None:
    """Take the requested screenshots."""
    binary = shutil.which(args.chromium) or sys.exit(f"error: {args.chromium} not found (apt-get install chromium)")
    async with chromium(binary) as page:
        if args.only in (None, "plots"):
            with tempfile.TemporaryDirectory(prefix="screenshots-plots-") as tmp:
                index = plots_diff_page(args.project, args.revs, Path(tmp) / "diff", args.vega_dir, args.targets)
                await shoot_plots(page, index, args.out / "dvc-plots-diff.png")
        if args.only in (None, "mlflow"):
            with mlflow_server(args.tracking_uri) as url:
                await shoot_mlflow(page, url, args.experiment, args.group_by_tag, args.out / "mlflow-runs.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="DVC project (for dvc plots diff)")
    parser.add_argument("--revs", nargs=2, default=["main", "HEAD"], help="two revisions or experiment names")
    parser.add_argument("--targets", nargs="*", default=[], help="plot ids to show (default: every plot)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow store to show")
    parser.add_argument("--experiment", default="noisy-student", help="MLflow experiment (tracking.experiment)")
    parser.add_argument(
        "--group-by-tag",
        default=None,
        help="run tag to group the table by ('': none; default: the pipeline parent runs, else dvc_exp)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder of the PNGs")
    parser.add_argument("--only", choices=["mlflow", "plots"], default=None, help="take one screenshot only")
    parser.add_argument("--chromium", default="chromium", help="Chromium binary")
    parser.add_argument(
        "--vega-dir",
        type=Path,
        default=Path.home() / ".cache" / "noisy-student" / "vega",
        help="where npm installs the Vega builds DVC's page needs (once)",
    )
    args = parser.parse_args()
    args.project = args.project.resolve()
    args.out = args.out.resolve()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
