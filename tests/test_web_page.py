"""The web page in a real headless Chromium (Debian's, driven by Playwright) against a real
stack: PostgreSQL, Redis, S3, the API and a worker, with the classical style (fast).

Paste the key, choose two photos, pick a style, submit, see both finish over the live event
stream, compare one before and after, download it and the job's zip (and check the zip's
contents); then a photo dropped on the page, as WebP, with the event stream cut (polling takes
over); paging through earlier jobs; /docs and /redoc working without internet. Screenshots go
to a folder the test prints, to be looked at.
"""

from __future__ import annotations

import base64
import io
import shutil
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from tests.helpers import astronaut_path
from tests.service_stack import service_stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What the closed network needs (the machine's notes): no background connections at all.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]
STYLE = "classical-cartoon"

pytestmark = pytest.mark.integration


def _photos(tmp: Path) -> list[Path]:
    """Public-domain photos that pip packages ship: scikit-image's astronaut and coffee,
    matplotlib's Grace Hopper."""
    from matplotlib import cbook

    astronaut = tmp / "astronaut.png"
    shutil.copy(astronaut_path(), astronaut)
    hopper = tmp / "grace_hopper.jpg"
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), hopper)
    coffee = tmp / "coffee.png"
    shutil.copy(astronaut_path().with_name("coffee.png"), coffee)
    return [astronaut, hopper, coffee]


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, s3, tmp_path_factory):
    with service_stack(pg_url, redis_url, s3, tmp_path_factory.mktemp("web"), workers=1) as st:
        yield st


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium package")
    with sync_api.sync_playwright() as p:
        # launch() gives every run a fresh, temporary profile (user data dir).
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


class Page:
    """A tab that records what a test must check afterwards: script errors, and every address
    the page tried to reach."""

    def __init__(self, browser, base: str, shots: Path):
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.base, self.shots, self.n = base, shots, 0
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{m.text} at {m.location.get('url')}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("request", lambda r: self.requests.append(r.url))

    def _failed(self, request) -> None:
        # Chromium reports a response body that a script read through a ReadableStream as
        # net::ERR_ABORTED even when it was read to its end (curl sees the closing chunk, and
        # r.text() on the same stream reports it finished): the event stream, which the test
        # checks by the page's own "finished" state instead.
        if not (request.url.endswith("/events") and request.failure == "net::ERR_ABORTED"):
            self.errors.append(f"request failed: {request.url} {request.failure}")

    def shot(self, name: str, full: bool = True) -> Path:
        self.n += 1
        path = self.shots / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full)
        return path

    def foreign(self) -> list[str]:
        ours = urlsplit(self.base).netloc
        return [u for u in self.requests if not u.startswith(("blob:", "data:")) and urlsplit(u).netloc != ours]


def _wait_items(page, count: int, status: str = "succeeded", timeout_ms: int = 120_000) -> None:
    page.wait_for_function(
        "([n, s]) => document.querySelectorAll(`#items li.item[data-status=${s}] .thumb img`).length === n",
        arg=[count, status], timeout=timeout_ms)


def _wait_live(page, text: str) -> None:
    # Functions, not expression strings: the page's CSP forbids eval, which Playwright would use.
    page.wait_for_function("(t) => document.querySelector('#job-live').textContent === t", arg=text)


def test_the_page_takes_photos_to_results(stack, browser, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    photos = _photos(tmp_path)
    tab = Page(browser, stack.api_url, shots)
    page = tab.page
    auth = {"Authorization": f"Bearer {stack.api_key}"}

    # The key: asked for, refused when wrong, kept when right.
    page.goto(f"{stack.api_url}/")
    page.wait_for_selector("#key-panel:not([hidden])")
    page.fill("#key-input", "f2p_not-a-key")
    page.click("#key-form button")
    page.wait_for_selector("#key-error:not([hidden])")
    assert "refused" in page.inner_text("#key-error")
    tab.shot("key-refused")
    tab.errors.clear()  # the two 401 answers to the wrong key
    page.fill("#key-input", stack.api_key)
    page.click("#key-form button")
    page.wait_for_selector("#app:not([hidden])")
    assert page.evaluate("localStorage.getItem('face2paint.apiKey')") == stack.api_key

    # Styles from the API, with their example thumbnails; pick the classical one.
    page.wait_for_selector("#styles label.style >> nth=3")
    names = page.eval_on_selector_all("label.style input", "els => els.map(e => e.value)")
    assert {"anime", "cartoon", STYLE} <= set(names), names
    page.click("details.more-styles summary")
    page.click(f"label.style:has(input[value='{STYLE}'])")
    page.set_input_files("#files", [str(p) for p in photos[:2]])
    assert page.inner_text("#submit-status") == "2 photo(s)"
    page.click("#params-box summary")
    tab.shot("form")

    page.click("#submit")
    page.wait_for_selector("#job:not([hidden]) #items li.item >> nth=1")
    tab.shot("job-running", full=False)  # whatever stage the photos are at by now
    _wait_items(page, 2)
    _wait_live(page, "finished")
    assert page.inner_text("#job-status").lower() == "succeeded"
    assert "2/2 done" in page.inner_text("#job-counts")
    assert any("/events" in u for u in tab.requests), "the page did not use the event stream"
    job_id = page.inner_text("#job-id")
    tab.shot("job-finished")

    # Before and after, with the slider moved; the single download is named after the upload.
    page.click("#items li.item >> nth=0 >> button.open")
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("() => document.querySelector('#before').complete && document.querySelector('#before').naturalWidth > 0")
    page.eval_on_selector("#slider", "el => { el.value = 30; el.dispatchEvent(new Event('input')); }")
    assert page.eval_on_selector("#before", "el => el.style.clipPath") == "inset(0px 70% 0px 0px)"
    tab.shot("compare", full=False)
    with page.expect_download() as d:
        page.click("#viewer-download")
    assert d.value.suggested_filename == "astronaut.png"
    single = Path(d.value.path()).read_bytes()
    with Image.open(io.BytesIO(single)) as im:
        assert (im.format, im.size) == ("PNG", (512, 512))
    page.click("#viewer-close")

    # The whole job as a zip.
    with page.expect_download() as d:
        page.click("#zip")
    assert d.value.suggested_filename == f"face2paint-{job_id}.zip"
    with zipfile.ZipFile(d.value.path()) as z:
        assert sorted(z.namelist()) == ["astronaut.png", "grace_hopper.png", "manifest.json"]
        assert z.read("astronaut.png") == single
        for name, src in (("astronaut.png", photos[0]), ("grace_hopper.png", photos[1])):
            with Image.open(io.BytesIO(z.read(name))) as out, Image.open(src) as inp:
                assert out.size == inp.size, name
    assert tab.errors == [], tab.errors

    # A photo dropped on the page, as WebP; with the event stream cut, the page polls and
    # still sees the job through.
    page.route("**/v1/jobs/*/events", lambda route: route.abort())
    dropped = page.evaluate_handle(
        """([name, b64]) => {
            const dt = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], name, { type: "image/png" }));
            return dt;
        }""", [photos[2].name, base64.b64encode(photos[2].read_bytes()).decode()])
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    assert page.inner_text("#submit-status") == "1 photo(s)"
    page.select_option("#output-format", "webp")
    assert page.is_visible("#quality-box")
    page.click("#submit")
    _wait_live(page, "polling")
    _wait_items(page, 1)
    _wait_live(page, "finished")
    second = page.inner_text("#job-id")
    assert second != job_id
    (item,) = httpx.get(f"{stack.api_url}/v1/jobs/{second}/items", headers=auth).json()
    r = httpx.get(f"{stack.api_url}{item['result_url']}", params={"redirect": "false"}, headers=auth)
    assert (r.headers["content-type"], item["filename"]) == ("image/webp", "coffee.png")
    assert r.headers["content-disposition"] == 'attachment; filename="coffee.webp"'
    page.unroute("**/v1/jobs/*/events")
    tab.errors = [e for e in tab.errors if "ERR_FAILED" not in e]  # the aborted stream itself

    # Earlier jobs, one per page: newest first, then older.
    page.goto(f"{stack.api_url}/?jobs_per_page=1")
    page.wait_for_selector("#jobs tr button[data-job]")
    assert page.get_attribute("#jobs tr button[data-job]", "data-job") == second
    assert page.is_disabled("#jobs-newer") and page.is_enabled("#jobs-older")
    page.click("#jobs-older")
    page.wait_for_function("(id) => document.querySelector('#jobs tr button[data-job]').dataset.job === id", arg=job_id)
    assert page.is_disabled("#jobs-older")
    page.click("#jobs tr button[data-job]")
    _wait_items(page, 2)
    tab.shot("earlier-job")
    # Deleted from the page (after its confirmation): the job and its photos are gone.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    page.wait_for_selector("#job", state="hidden")
    assert httpx.get(f"{stack.api_url}/v1/jobs/{job_id}", headers=auth).status_code == 404

    # The API's docs, from local files: Swagger UI with its Authorize button, and ReDoc.
    page.goto(f"{stack.api_url}/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "face2paint" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector("button.authorize")
    page.click("button.authorize")
    page.wait_for_selector(".auth-container input")
    assert page.locator(".auth-container").count() == 2  # bearer and X-API-Key
    tab.shot("docs-authorize", full=False)
    page.goto(f"{stack.api_url}/redoc")
    page.wait_for_selector("h1:has-text('face2paint')")
    tab.shot("redoc", full=False)

    assert (tab.errors, tab.foreign()) == ([], []), "script errors, or addresses outside the API"
    tab.context.close()
