"""What a researcher sees: the report's HTML and the MLflow UI on the synthetic store, rendered by headless
Chromium and checked to be more than a blank page. Skipped where Chromium is not installed (CI installs it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow_fixtures import SyntheticStudy, build_study, rich_report
from PIL import Image
from train_helpers import free_port

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = os.environ.get("ABLATE_SCREENSHOTS")  # a folder that keeps copies of the screenshots to look at
SERVER_READY_S = 60

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"{CHROMIUM} not found: install it with `apt-get install -y chromium`"
)


def screenshot(url: str, out: Path, profile: Path, height: int, wait_ms: int = 0) -> Image.Image:
    """Render `url` in headless Chromium (flags that work as root in containers) and return the screenshot."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size=1400,{height}",
        f"--screenshot={out}",
        *([f"--virtual-time-budget={wait_ms}"] if wait_ms else []),
        url,
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        (Path(SCREENSHOTS) / out.name).write_bytes(out.read_bytes())
    return Image.open(out).convert("RGB")


def ink(image: Image.Image) -> tuple[float, float, int]:
    """Fractions of non-white and of saturated (plot-coloured) pixels, and the number of distinct colours."""
    small = image.resize((image.width // 2, image.height // 2))
    pixels = list(small.get_flattened_data())
    non_white = sum(1 for r, g, b in pixels if min(r, g, b) < 235) / len(pixels)
    coloured = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 60) / len(pixels)
    return non_white, coloured, len(set(pixels))


def test_report_html_renders_with_its_figures(tmp_path):
    _, out_dir = rich_report()
    html = (out_dir / "report.html").read_text()
    figures = re.findall(r'<img [^>]*src="data:image/png;base64,', html)
    assert len(figures) == len(list((out_dir / "figures").glob("*.png")))
    image = screenshot((out_dir / "report.html").as_uri(), tmp_path / "report.png", tmp_path / "profile", 6000)
    non_white, coloured, colours = ink(image)
    assert non_white > 0.03, non_white
    assert coloured > 0.005, coloured  # plot markers, lines and heatmap cells, not just black text
    assert colours > 200, colours


class _Tables(HTMLParser):
    """Every `<table>` of a page as rows of cell texts (header cells included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_report_page_shows_each_configuration_against_the_baseline(tmp_path):
    """The results table as Chromium renders it (its DOM after layout, not the file's text): every
    configuration's mean with its 95% CI, its difference to the `mobileclip` baseline with an interval,
    and the raw and Holm-adjusted p-values; the baseline's own row has a mean and CI but no difference."""
    _, out_dir = rich_report()
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run(
        [*command, "--dump-dom", (out_dir / "report.html").as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    parser = _Tables()
    parser.feed(dom)
    delta = "Δ vs mobileclip [95% CI]"
    results = [table for table in parser.tables if table and delta in table[0]]
    assert results, "no results table with a baseline comparison in the rendered page"
    header, *rows = results[0]
    assert {"mean ± 95% CI", "p", "p (Holm)", "test"} <= set(header), header
    by_name = {row[header.index("configuration")]: row for row in rows}
    assert by_name["mobileclip"][header.index(delta)] == ""  # the baseline is not compared to itself
    compared = [row for name, row in by_name.items() if name != "mobileclip"]
    assert len(compared) == 3
    for row in compared:
        assert re.fullmatch(r"[-+−]?\d\S* \[[-+−]?\d\S*, [-+−]?\d\S*\]", row[header.index(delta)]), row
        assert re.search(r"\d", row[header.index("p (Holm)")]), row
        assert "±" in row[header.index("mean ± 95% CI")], row


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, SyntheticStudy]]:
    """`mlflow server` on a free port over a synthetic store, stopped whatever the test does."""
    study = build_study(tmp_path / "store", rich=True)
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        study.tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_READY_S
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, study
    finally:
        os.killpg(server.pid, 15)  # the server's own session: gunicorn/uvicorn workers go with it
        server.wait(timeout=30)
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_mlflow_ui_shows_the_study_runs(mlflow_server, tmp_path):
    url, study = mlflow_server
    page = f"{url}/#/experiments/{study.experiment_id}/runs"
    image = screenshot(page, tmp_path / "mlflow_ui.png", tmp_path / "profile", 900, wait_ms=10000)
    non_white, _, colours = ink(image)
    assert non_white > 0.03, non_white
    assert colours > 50, colours
