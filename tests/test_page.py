"""The web page at / (issue 17): served from the package, offline, small; and driven in a real headless Chromium
(Debian's `chromium` and `chromium-driver`, which .ci/run installs) against a real uvicorn serving the shipped
checkpoints: the README's puzzle solved and verified on screen, a grid generated, a search stopped from the page."""

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from live import PUZZLE, LiveServer, app_for, missing, wait_ready

from engine.tasks import get_task
from server.app import create_app
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "server" / "static"
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
HARD = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
SIX = ".3...8.1267.19534..983..5.7..9..14..4...5.....13..4...9..5.7...28..1.6.5.45....7."  # exactly 6 solutions
SUDOKU = get_task("sudoku")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def test_the_page_and_its_files_are_served_with_links_to_docs_and_metrics(ckpt_dir):
    with TestClient(app_for(ckpt_dir)) as c:
        wait_ready(c)
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert 'href="docs"' in r.text and 'href="metrics"' in r.text
        for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            r = c.get(f"/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "/" not in c.get("/openapi.json").json()["paths"]  # the page is not part of the API


def test_the_page_works_offline_and_stays_small():
    files = {p.name: p.read_text() for p in STATIC.iterdir()}
    assert set(files) == {"index.html", "app.js", "style.css"}
    for name, text in files.items():  # nothing fetched from elsewhere: no CDN, no fonts, no absolute URLs
        assert not re.search(r"(https?:)?//[a-z0-9]", text, re.I), name
        assert "import " not in text or name != "app.js"
    assert len(files["app.js"].splitlines()) < 400
    assert 'server = ["static/*"]' in (ROOT / "pyproject.toml").read_text()  # shipped in the wheel too


# -- in a real browser -------------------------------------------------------------------------------------------------


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (the test extra has it)")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        missing("no browser: Debian's chromium and chromium-driver are not installed (.ci/run installs them)")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # Debian's build, with its matching driver: nothing is downloaded
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,760"):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(options=options, service=Service(DRIVER))
    except Exception as e:  # a browser that cannot start here (a missing library): skipped with the reason; CI fails
        missing(f"chromium did not start: {type(e).__name__}: {str(e).splitlines()[0]}")


@pytest.fixture(scope="module")
def page():
    """A headless Chromium on the page of a real uvicorn serving the shipped solver and fill model."""
    driver = _browser()
    names = [str(ROOT / "checkpoints" / n) for n in ("sudoku-trm", "sudoku-trm-fill")]
    app = create_app(Settings(checkpoints=names))
    try:
        with LiveServer(app) as live:
            driver.get(live.url + "/")
            yield driver, live, app
    finally:
        driver.quit()


def _wait(driver, condition, timeout=60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def _digits(driver) -> str:
    return "".join(c.text or "." for c in driver.find_elements("css selector", "#grid .cell"))


def _idle(driver) -> bool:
    return driver.find_element("tag name", "body").get_attribute("data-state") == "idle"


def test_the_page_loads_in_under_a_second(page):
    driver, live, _ = page
    driver.get(live.url + "/")
    load_ms = driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd")
    assert 0 < load_ms < 1000, load_ms  # navigation start -> load event, as the browser measured it
    _wait(driver, lambda d: "sudoku-trm (solver)" in _text(d, "model"), 10)
    assert _digits(driver) == PUZZLE  # the README's puzzle is the first pick, drawn before any search


def test_solving_the_readme_puzzle_shows_the_verified_grid(page, tmp_path):
    driver, live, _ = page
    driver.get(live.url + "/")
    _wait(driver, lambda d: "sudoku-trm" in _text(d, "model"), 10)
    driver.find_element("id", "solve").click()
    _wait(driver, lambda d: _text(d, "status").startswith("Verified") and _idle(d))
    assert "verified" in driver.find_element("id", "grid").get_attribute("class")
    assert _digits(driver) == SOLUTION
    stats = _text(driver, "stats")
    assert re.search(r"events\s+[1-9]", stats) and "finish" in stats  # progress events came before the result
    shot = Path(os.environ.get("TRM_SCREENSHOT") or tmp_path / "page.png")  # set it to refresh docs/screenshot.png
    assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _found(driver) -> list[tuple[str, str]]:
    """The small grids of the distinct solutions: (digits, caption) each."""
    found = []
    for figure in driver.find_elements("css selector", "#found .solution"):
        digits = "".join(c.text or "." for c in figure.find_elements("css selector", ".cell"))
        found.append((digits, figure.find_element("tag name", "figcaption").text))
    return found


def _solve_for(driver, puzzle: str, solutions: int):
    for element_id, value in (("puzzle", puzzle), ("solutions", str(solutions))):
        driver.find_element("id", element_id).clear()
        driver.find_element("id", element_id).send_keys(value)
    driver.find_element("id", "solve").click()
    _wait(driver, lambda d: _text(d, "status").startswith("Verified") and _idle(d))


def test_solutions_shows_the_distinct_solutions_side_by_side_with_count_and_coverage(page, tmp_path):
    driver, live, _ = page
    driver.get(live.url + "/")
    _wait(driver, lambda d: "sudoku-trm" in _text(d, "model"), 10)
    _solve_for(driver, SIX, 3)
    found = _found(driver)
    assert len(found) == 3 and len({digits for digits, _ in found}) == 3
    puzzle = SUDOKU.encode(SIX)
    assert all(SUDOKU.verify(puzzle, SUDOKU.encode(digits)) for digits, _ in found)
    assert all(re.fullmatch(r"#\d: \d+ samples?, score \d\.\d{3}", caption) for _, caption in found)
    assert [caption[:2] for _, caption in found] == ["#1", "#2", "#3"]
    assert _digits(driver) == found[0][0]  # the big grid still shows the answer: the solution found most often
    assert _text(driver, "coverage") == "3 distinct solutions of the puzzle's 6 (coverage 50%)"
    assert driver.save_screenshot(str(tmp_path / "solutions.png"))

    _solve_for(driver, "." * 81, 3)  # far more solutions than are counted
    found = _found(driver)
    assert len({digits for digits, _ in found}) == 3 and all(re.fullmatch(r"[1-9]{81}", d) for d, _ in found)
    assert _text(driver, "coverage") == "3 distinct solutions (the puzzle's count is not known)"

    _solve_for(driver, SIX, 1)  # the default: one answer, no small grids, and a word that there are more
    assert _found(driver) == [] and re.fullmatch(r"[1-9]{81}", _digits(driver))
    assert _text(driver, "coverage") == 'The puzzle has 6 solutions: ask for more with "solutions".'


def test_generate_builds_a_grid_on_the_page(page):
    driver, live, _ = page
    driver.get(live.url + "/")
    _wait(driver, lambda d: "sudoku-trm-fill" in _text(d, "model"), 10)
    driver.find_element("id", "generate").click()
    _wait(driver, lambda d: _text(d, "status") == "A valid grid ✓" and _idle(d))
    digits = _digits(driver)
    assert re.fullmatch(r"[1-9]{81}", digits)
    rows = [digits[i : i + 9] for i in range(0, 81, 9)]
    assert all(len(set(r)) == 9 for r in rows) and all(len(set(col)) == 9 for col in zip(*rows))


def test_stop_on_the_page_cancels_the_search_in_the_engine(page, monkeypatch):
    driver, live, app = page
    eng = app.state.models.solvers["sudoku-trm"].engine
    run = eng.runner.launch
    monkeypatch.setattr(eng.runner, "launch", lambda batch: (time.sleep(0.5), run(batch))[1])  # slow steps
    driver.get(live.url + "/")
    _wait(driver, lambda d: "sudoku-trm" in _text(d, "model"), 10)
    driver.find_element("id", "puzzle").clear()
    driver.find_element("id", "puzzle").send_keys(HARD)  # no row of these verifies before step 4 (seed 0)
    driver.find_element("id", "rollouts").clear()
    driver.find_element("id", "rollouts").send_keys("4")
    driver.find_element("id", "solve").click()
    _wait(driver, lambda d: _text(d, "status").startswith("Searching"), 30)
    driver.find_element("id", "stop").click()
    _wait(driver, lambda d: _text(d, "status").startswith("Stopped") and _idle(d), 10)
    end = time.monotonic() + 10
    while eng.busy and time.monotonic() < end:
        time.sleep(0.02)
    assert not eng.busy and len(eng.scheduler.free_slots) == eng.runner.slots  # the rows left the engine


def test_the_page_asks_for_an_api_key_and_keeps_it_for_the_tab():
    """On a service with keys the page's first call gets 401: it asks for the key (a prompt), keeps it in
    sessionStorage (this tab only) and sends it with every call after."""
    from selenium.common.exceptions import NoAlertPresentException

    def prompt(d):
        try:
            return d.switch_to.alert
        except NoAlertPresentException:
            return False

    driver = _browser()
    app = create_app(Settings(checkpoints=[str(ROOT / "checkpoints" / "sudoku-trm")], api_key=["page-key"]))
    try:
        with LiveServer(app) as live:
            driver.get(live.url + "/")
            alert = _wait(driver, prompt, 10)
            assert "needs an API key" in alert.text
            alert.send_keys("page-key")
            alert.accept()
            _wait(driver, lambda d: "sudoku-trm (solver)" in _text(d, "model"), 10)
            assert driver.execute_script("return sessionStorage.getItem('trm-api-key')") == "page-key"
            driver.find_element("id", "solve").click()
            _wait(driver, lambda d: _text(d, "status").startswith("Verified") and _idle(d))
            assert _digits(driver) == SOLUTION
    finally:
        driver.quit()
