"""The gallery page in a real browser: Debian's headless Chromium driven by Selenium through chromium-driver.

Set BTEMBED_SCREENSHOT=docs/img/gallery.png to refresh the README's screenshot.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver: the same version as its chromium
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--window-size=1280,1000")


def _major(cmd: str) -> str:
    out = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"(\d+)\.\d+", out)
    return found.group(1) if found else ""


def browser_or_skip():
    """Skip, saying what to install, unless Selenium, chromium and a chromium-driver of its version are here."""
    try:
        import selenium  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        pytest.skip(f"{e.name} is not installed (pip install -e '.[test]')")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("no Debian chromium + chromium-driver here (apt-get install chromium chromium-driver; .ci/run "
                    "installs them)")
    if _major(CHROMIUM) != _major(CHROMEDRIVER):
        pytest.skip(f"chromium {_major(CHROMIUM)} and chromedriver {_major(CHROMEDRIVER)} differ in version")


@pytest.fixture
def driver(tmp_path):
    browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads")})
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def cli_search(root: Path, query: str) -> list[tuple[str, str]]:
    """What `btembed search DIR QUERY --json` ranks, as (relative path, score with 4 decimals)."""
    p = subprocess.run([sys.executable, "-m", "btembed", "search", str(root), str(root / query), "-k", "12",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return [(os.path.relpath(r["path"], root), f"{r['score']:.4f}") for r in json.loads(p.stdout)["results"]]


def test_gallery_neighbours_upload_duplicates(driver, tmp_path, photo_paths):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from btembed.serve.app import create_app
    from btembed.serve.server import ThreadedServer
    from tests.serve_helpers import index, make_folder

    root = make_folder(tmp_path / "photos", photo_paths)
    # the embedded default model (real neighbours for the screenshot), on torch: no first-use ONNX export
    index(root, None, backend="torch")
    server = ThreadedServer(create_app(root, backend="torch"))
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(server.url + "/")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .thumb img")) == 8)
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)"))
        assert "8 images" in driver.find_element(By.ID, "info").text

        driver.find_element(By.CSS_SELECTOR, '#gallery .thumb[data-path="coffee.jpg"]').click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .result"))
        shown = [(c.get_attribute("data-path"), c.find_element(By.CLASS_NAME, "score").text)
                 for c in driver.find_elements(By.CSS_SELECTOR, "#results .result")]
        assert shown == cli_search(root, "coffee.jpg")  # the CLI's order and scores
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
        shot = os.environ.get("BTEMBED_SCREENSHOT") or str(tmp_path / "gallery.png")
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(shot)
        with Image.open(shot) as im:
            assert im.size[0] >= 1000

        query = tmp_path / "my photo.jpg"  # not in the folder: embedded on upload
        with Image.open(root / "chelsea.jpg") as im:
            im.resize((im.width // 2, im.height // 2)).save(query, quality=70)
        driver.find_element(By.ID, "upload-input").send_keys(str(query))
        wait.until(lambda d: d.find_element(By.ID, "query").text == "my photo.jpg")
        first = driver.find_element(By.CSS_SELECTOR, "#results .result")
        assert first.get_attribute("data-path") == "chelsea.jpg"

        driver.find_element(By.ID, "tab-duplicates").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#duplicates .group"))
        groups = driver.find_elements(By.CSS_SELECTOR, "#duplicates .group")
        kept = [g.find_element(By.CSS_SELECTOR, ".card.kept").get_attribute("data-path") for g in groups]
        assert "astronaut.jpg" in kept or "copies/astronaut (1).jpg" in kept
        driver.find_element(By.ID, "download-actions").click()
        target = tmp_path / "downloads" / "actions.json"
        wait.until(lambda _d: target.is_file() and target.stat().st_size > 0)
        assert json.loads(target.read_text())["rule"] == "keep-largest"
    finally:
        server.stop()
