"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright from PyPI; no browser is
downloaded): the page loads with no console errors, the topology shows the demo's services and edges, a request
rate appears on the web => api edge after traffic, the intention form answers as `meshgw intention check`, and a
screenshot of the page is kept under artifacts/ for a person to look at."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_demo import Demo, demo, traffic
from mesh import Mesh, wait_for

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    mesh = Mesh(tmp_path_factory.mktemp("console-browser"))
    try:
        with demo(mesh) as dm:
            yield dm
    finally:
        mesh.close()


class Browser:
    def __init__(self, page: Any):
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))


@pytest.fixture(scope="module")
def browser(d: Demo) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("Debian's chromium is not installed (scripts/native-deps.sh installs it)")
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = b.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            yield Browser(page)
        finally:
            b.close()


def test_page_loads_without_errors_and_shows_the_topology(d: Demo, browser: Browser) -> None:
    page = browser.page
    page.goto(d.admin_url(d.web, "/"))
    page.wait_for_selector("svg.topology")
    assert page.inner_text("header h1").startswith("meshgw web")
    nodes = page.locator("svg.topology g.node")
    labels = [nodes.nth(i).locator("text.node-label").text_content() for i in range(nodes.count())]
    assert labels[0] == "callers" and any(lb.startswith("web") for lb in labels) and "api" in labels
    api = page.locator('g.node[data-node="cluster:upstream:api/api"]')
    assert f"127.0.0.1:{d.mesh.inbound_port('api')}" in (api.text_content() or "")
    assert page.locator('g.edge[data-edge="upstream:api"]').count() == 1
    assert page.locator('g.edge[data-edge="inbound"]').count() == 1
    assert page.inner_text("#leaf-spiffe-id").endswith("/svc/web")
    # SVG text is not an HTMLElement: text_content, not inner_text.
    # The countdowns are live: console.js rewrites them every second.
    first = page.inner_text("#leaf .countdown")
    wait_for(lambda: page.inner_text("#leaf .countdown") != first, 10, "the certificate countdown to move")
    assert browser.problems == []


def test_request_rate_appears_on_the_right_edge(d: Demo, browser: Browser) -> None:
    page = browser.page
    page.goto(d.admin_url(d.web, "/"))  # the first traffic sample, before any request
    edge = 'g.edge[data-edge="upstream:api"]'

    def rate() -> float:
        value = page.get_attribute(edge, "data-rate") or "0"
        return float(value)

    with traffic(d.web_up) as statuses:
        wait_for(lambda: rate() > 0, 30, "a request rate on the web => api edge (the page refreshes every 3 s)")
        assert statuses and set(statuses) == {200}
    label = page.text_content(f"{edge} text.edge-label") or ""
    assert "req/s" in label and "p99" in label
    assert float(page.get_attribute('g.edge[data-edge="inbound"]', "data-rate") or "0") == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-web.png"), full_page=True)
    assert (ARTIFACTS / "console-web.png").stat().st_size > 10_000
    assert browser.problems == []


def cli_decision(d: Demo, src: str, dst: str, *extra: str) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "intention", "check", "-c", str(d.web.cfg_path), src, dst, *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode in (0, 1), p.stderr
    return "allow" if p.returncode == 0 else "deny"


@pytest.mark.parametrize(
    ("src", "method", "path"),
    [("web", "", ""), ("intruder", "", ""), ("ops", "GET", "/"), ("ops", "GET", "/admin/users")],
)
def test_intention_form_answers_as_the_cli(d: Demo, browser: Browser, src: str, method: str, path: str) -> None:
    page = browser.page
    if not page.url.startswith(d.admin_url(d.web, "/")):
        page.goto(d.admin_url(d.web, "/"))
    page.fill('#check-form input[name="source"]', src)
    page.fill('#check-form input[name="destination"]', "api")
    page.fill('#check-form input[name="method"]', method)
    page.fill('#check-form input[name="path"]', path)
    page.locator("#check-result").evaluate("el => el.replaceChildren()")
    page.click("#check-form button[type=submit]")
    result = page.wait_for_selector("#check-result .decision")
    assert result is not None
    extra = [*(["--method", method] if method else []), *(["--path", path] if path else [])]
    assert result.get_attribute("data-decision") == cli_decision(d, src, "api", *extra)
    assert "intention" in result.inner_text() or "default" in result.inner_text()  # it names the rule
    if src == "ops" and path == "/admin/users":
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#intentions").screenshot(path=str(ARTIFACTS / "console-intention-check.png"))
    assert browser.problems == []


def test_intentions_are_listed_in_precedence_order(d: Demo, browser: Browser) -> None:
    page = browser.page
    page.goto(d.admin_url(d.api, "/"))
    rows = page.locator("#intention-rules tbody tr")
    cells = [[rows.nth(i).locator("td").nth(j).inner_text() for j in (1, 3, 4)] for i in range(rows.count())]
    sources = [c[0] for c in cells]
    assert sources[:-1] == ["ops", "web", "*"] and sources[-1] == "anyone else"
    precedences = [int(c[2]) for c in cells[:-1]]
    assert precedences == sorted(precedences, reverse=True)
    assert "deny PathPrefix=/admin" in cells[0][1]  # an L7 intention shows its permissions in order
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-api.png"), full_page=True)
    assert browser.problems == []
