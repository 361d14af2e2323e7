"""The report in a real browser: headless Chromium loads it offline, every plot decodes,
and the screenshot shows something drawn where each plot sits."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from surge.report import PLOTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary: `apt-get install chromium` (.ci/run installs it in CI)",
)
WIDTH = 1200


def chromium(profile: Path, *args: str) -> str:
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
        f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_every_plot_renders_in_headless_chromium(
    real_report: tuple[Path, Path], tmp_path: Path
) -> None:
    url = real_report[0].resolve().as_uri()
    # 1. The DOM after load: the page's script marks each image that decoded and where it is.
    dom = chromium(tmp_path / "profile", f"--window-size={WIDTH},1000", "--dump-dom", url)
    assert f'data-plots-loaded="{len(PLOTS)}"' in dom, "not every plot decoded in the browser"
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for figure_id, body in re.findall(r'<figure id="([^"]+)">(.*?)</figure>', dom, flags=re.S):
        assert 'data-loaded="yes"' in body, f"{figure_id} did not decode"
        (box,) = re.findall(r'data-box="([\d,.-]+)"', body)
        x, y, w, h = (int(float(v)) for v in box.split(","))
        assert w > 600 and h > 200, f"{figure_id} is laid out {w}x{h}"
        boxes[figure_id] = (x, y, w, h)
    assert list(boxes) == [spec.id for spec in PLOTS]
    height = int(re.search(r'data-page-height="(\d+)"', dom).group(1))  # type: ignore[union-attr]

    # 2. A screenshot of the whole page; each plot's region must hold a drawing, not white.
    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", f"--window-size={WIDTH},{height}", f"--screenshot={shot}", url)
    image = Image.open(shot).convert("L")
    assert image.size == (WIDTH, height)
    for figure_id, (x, y, w, h) in boxes.items():
        region = image.crop((x, y, x + w, y + h))
        inked = sum(region.histogram()[:200]) / (w * h)  # share of clearly non-white pixels
        assert inked > 0.03, f"{figure_id}: only {inked:.1%} of its area is drawn"
        assert ImageStat.Stat(region).stddev[0] > 20, f"{figure_id} looks flat"
