"""The demo page in a real browser (Debian's chromium through Playwright) against the real stack:
redis-server, a `python -m worker` process and the API under uvicorn. Screenshots go to test-artifacts/."""
from __future__ import annotations

import base64
import json

import httpx
import pytest
from PIL import Image

from tests.browser.conftest import PHONE
from tests.e2e.helpers import QUIET_PHOTO_REGION, photo_bytes

pytestmark = pytest.mark.browser
PHOTO_BOX = (160, 40, 288, 136)  # a 128x96 crop of scikit-image's astronaut photo


def drop_file(page, data: bytes, name: str, mime: str) -> None:
    """Drop a file on the drop zone the way a desktop drag-and-drop does (a DataTransfer holding a File)."""
    page.evaluate("""([b64, name, mime]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: mime}));
        const zone = document.getElementById('drop-zone');
        for (const type of ['dragenter', 'dragover', 'drop']) {
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }
    }""", [base64.b64encode(data).decode(), name, mime])


def page_with_small_photo(open_browser, base: str, box: tuple[int, int, int, int] | None = None):
    """A new page of the demo at `base` with the 64x48 test photo (or that region of it) dropped on it and read."""
    page = open_browser().new_page()
    page.goto(base)
    drop_file(page, photo_bytes(box) if box else photo_bytes(), "astronaut.png", "image/png")
    page.get_by_text("astronaut.png: 64×48 pixels").wait_for()
    return page


def tab_to(page, element_id: str, limit: int = 40) -> None:
    """Press Tab until the element has the focus (keyboard-only use)."""
    for _ in range(limit):
        if page.evaluate("() => document.activeElement && document.activeElement.id") == element_id:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"#{element_id} cannot be reached with Tab")


def natural_size(page, selector: str) -> tuple[int, int]:
    return tuple(page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]"))


def downloaded_image(download, tmp_path) -> Image.Image:
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    image = Image.open(path)
    image.load()
    return image


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def test_drop_a_photo_watch_the_job_compare_and_download_the_result(demo_server, open_browser, artifacts, tmp_path):
    base = demo_server()
    page = open_browser().new_page()
    page.goto(base)
    page.get_by_text("Open access (local mode)").wait_for()
    drop_file(page, photo_bytes(PHOTO_BOX), "astronaut.png", "image/png")
    page.get_by_text("astronaut.png: 128×96 pixels").wait_for()
    page.select_option("#method", "bicubic")
    page.fill("#scale", "2")
    page.click("#submit")
    page.locator("#result-card").wait_for(state="visible")
    assert page.eval_on_selector("#progress-bar", "bar => bar.value") == 1
    assert page.locator("#progress-text").inner_text().startswith("Done in")
    assert natural_size(page, "#after-img") == natural_size(page, "#before-img") == (256, 192)
    assert page.locator("#before-tag").inner_text() == "Input pixels"
    assert "128×96 → 256×192" in page.locator("#result-summary").inner_text()
    page.focus("#split")
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    assert page.eval_on_selector("#compare", "c => c.style.getPropertyValue('--split')") == "40%"
    with page.expect_download() as download_info:
        page.click("#download")
    result = downloaded_image(download_info.value, tmp_path)
    assert download_info.value.suggested_filename == "astronaut_bicubic_x2.png"
    assert result.size == (256, 192) and result.format == "PNG"
    page.screenshot(path=str(artifacts / "demo-bicubic-finished.png"), full_page=True)


def test_a_region_of_the_photo_is_upscaled_alone(demo_server, open_browser, tmp_path):
    base = demo_server()
    page = open_browser().new_page()
    page.goto(base)
    page.set_input_files("#file", files=[{"name": "astronaut.png", "mimeType": "image/png",
                                          "buffer": photo_bytes((0, 0, 512, 512))}])
    page.get_by_text("A large photo: only a 256×256 region is selected").wait_for()  # the seed demo's preview crop
    assert page.is_checked("#use-region") and page.locator("#region-box").is_visible()
    box = page.locator("#preview-img").bounding_box()  # drawn 512 photo pixels wide
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.75, steps=5)
    page.mouse.up()
    drawn = [int(page.input_value(f"#crop-{f}")) for f in "xywh"]
    assert all(abs(got - want) <= 2 for got, want in zip(drawn, [128, 256, 128, 128])), drawn
    for field, value in (("#crop-x", "100"), ("#crop-y", "60"), ("#crop-w", "50"), ("#crop-h", "40")):
        page.fill(field, value)
    page.select_option("#method", "bicubic")
    page.fill("#scale", "3")
    page.click("#submit")
    page.locator("#result-card").wait_for(state="visible")
    assert natural_size(page, "#after-img") == natural_size(page, "#before-img") == (150, 120)
    with page.expect_download() as download_info:
        page.click("#download")
    assert downloaded_image(download_info.value, tmp_path).size == (150, 120)


def test_errors_are_shown_as_the_message_the_api_gave(demo_server, open_browser, artifacts):
    base = demo_server()
    not_an_image = b"shopping list: eggs, flour\n"
    expected = httpx.post(f"{base}/v1/jobs", files={"image": ("notes.txt", not_an_image, "text/plain")}).json()
    page = open_browser().new_page()
    page.goto(base)
    drop_file(page, not_an_image, "notes.txt", "text/plain")
    page.get_by_text("this browser cannot show it").wait_for()
    page.click("#submit")
    message = page.locator("#message")
    message.wait_for(state="visible")
    assert message.inner_text() == expected["error"]["message"]  # "not a supported image; send PNG, ..."
    page.screenshot(path=str(artifacts / "demo-error-not-an-image.png"), full_page=True)

    page.set_input_files("#file", files=[{"name": "a.png", "mimeType": "image/png", "buffer": photo_bytes()}])
    page.get_by_text("a.png: 64×48 pixels").wait_for()
    page.fill("#scale", "9")
    page.click("#submit")
    page.get_by_text("scale: Input should be less than or equal to 8").wait_for()
    page.fill("#scale", "2")
    page.check("#use-region")
    page.fill("#crop-w", "500")
    page.click("#submit")
    page.get_by_text("reaches past the 64x48 image").wait_for()


def test_keyboard_only_on_a_phone_sized_window_with_an_api_key(demo_server, open_browser, artifacts, tmp_path):
    key = "browser-test-key-0123456789"
    base = demo_server(api_keys=(key,))
    context = open_browser(viewport=PHONE)
    page = context.new_page()
    # Subscribe to file choosers now: Playwright turns the interception on without waiting (fire and forget), so a
    # subscription made just before the key press can lose the race and let a real, invisible dialog open.
    page.on("filechooser", lambda _: None)
    page.goto(base)
    page.get_by_text("This API needs a key").wait_for()
    assert page.evaluate("() => document.activeElement.id") == "api-key"  # the page put the focus there
    page.keyboard.type("not-the-key")
    page.keyboard.press("Enter")
    page.get_by_text("The API refused the saved key: a valid API key is required").wait_for()
    page.fill("#api-key", "")
    page.focus("#api-key")
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    page.get_by_text("Using the API key saved in this browser.").wait_for()
    page.reload()  # entered once: the browser keeps it
    page.get_by_text("Using the API key saved in this browser.").wait_for()
    assert page.evaluate("() => localStorage.getItem('upscaler.apiKey')") == key

    tab_to(page, "file")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(files=[{"name": "astronaut.png", "mimeType": "image/png",
                                    "buffer": photo_bytes(PHOTO_BOX)}])
    page.get_by_text("astronaut.png: 128×96 pixels").wait_for()
    tab_to(page, "method")
    page.keyboard.press("ArrowDown")  # ZSSR -> Bicubic
    assert page.eval_on_selector("#method", "s => s.value") == "bicubic"
    tab_to(page, "submit")
    page.keyboard.press("Enter")
    page.locator("#result-card").wait_for(state="visible")
    assert page.evaluate("() => document.activeElement.id") == "download"  # focus moved to the result
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("() => document.activeElement.id") == "split"
    page.keyboard.press("End")
    assert page.eval_on_selector("#compare", "c => c.style.getPropertyValue('--split')") == "100%"
    assert no_horizontal_overflow(page)
    for selector in ("#submit", "#download", "#split", "#progress-bar"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], selector
    with page.expect_download() as download_info:
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
    assert downloaded_image(download_info.value, tmp_path).size == (256, 192)
    page.screenshot(path=str(artifacts / "demo-phone-finished.png"), full_page=True)


def test_a_zssr_job_shows_training_progress_and_a_comparison_with_bicubic(demo_server, open_browser, artifacts,
                                                                          tmp_path):
    base = demo_server()
    page = page_with_small_photo(open_browser, base)
    page.select_option("#method", "zssr")
    page.select_option("#preset", "fast")
    page.click("#submit")
    page.wait_for_function("() => Number(document.getElementById('loss-line').dataset.points || 0) >= 2")
    assert page.locator("#progress-text").inner_text().startswith(("Training", "Enlarging", "Done"))
    page.locator("#result-card").wait_for(state="visible", timeout=120_000)
    assert page.locator("#before-tag").inner_text() == "Bicubic" and page.locator("#after-tag").inner_text() == "ZSSR"
    assert natural_size(page, "#after-img") == natural_size(page, "#before-img") == (128, 96)
    with page.expect_download() as download_info:
        page.click("#download")
    assert downloaded_image(download_info.value, tmp_path).size == (128, 96)
    page.screenshot(path=str(artifacts / "demo-zssr-finished.png"), full_page=True)


def test_the_page_reconnects_with_last_event_id_when_the_stream_drops_and_still_gets_the_end(demo_server,
                                                                                           open_browser):
    base = demo_server()
    page = open_browser().new_page()
    sent_ids = []

    def drop_the_first_stream(route, request):
        sent_ids.append(request.headers.get("last-event-id"))
        if len(sent_ids) > 1:
            route.continue_()
            return
        # Serve one non-terminal event with a made-up id, then end the stream as a dropped connection would.
        last_event = route.fetch().text().strip().split("\r\n\r\n")[-1].split("\r\n")
        terminal = json.loads(next(line for line in last_event if line.startswith("data: "))[len("data: "):])
        event = {**terminal, "status": "running", "progress": {**terminal["progress"], "phase": "inference"}}
        route.fulfill(status=200, content_type="text/event-stream",
                      body=f"id: made-up-id\r\nevent: status\r\ndata: {json.dumps(event)}\r\n\r\n")

    page.route("**/v1/jobs/*/events", drop_the_first_stream)
    page.goto(base)
    drop_file(page, photo_bytes(), "astronaut.png", "image/png")
    page.get_by_text("astronaut.png: 64×48 pixels").wait_for()
    page.select_option("#method", "bicubic")
    page.click("#submit")
    page.locator("#result-card").wait_for(state="visible")
    assert sent_ids == [None, "made-up-id"]
    assert natural_size(page, "#after-img") == (128, 96)


def test_a_training_job_is_canceled_from_the_keyboard(demo_server, open_browser):
    base = demo_server()
    page = page_with_small_photo(open_browser, base)
    page.select_option("#preset", "paper")  # the test budget for "paper" trains far longer than this test
    page.click("#submit")
    page.get_by_text("Training on your photo: step").wait_for()
    page.focus("#cancel")
    page.keyboard.press("Enter")
    page.get_by_text("The job was canceled.").wait_for(timeout=10_000)
    assert page.locator("#result-card").is_hidden() and page.is_enabled("#submit")


def test_an_estimated_blur_kernel_is_drawn_as_a_small_grey_image(demo_server, open_browser, artifacts):
    base = demo_server()
    page = page_with_small_photo(open_browser, base, QUIET_PHOTO_REGION)  # noisier photos keep bicubic: no kernel
    page.select_option("#method", "bicubic")
    assert not page.locator("#estimate-kernel").is_visible()  # a ZSSR option only
    page.select_option("#method", "zssr")
    page.select_option("#preset", "fast")
    page.check("#estimate-kernel")
    page.click("#submit")
    page.locator("#kernel-figure").wait_for(state="visible", timeout=120_000)
    jobs = httpx.get(f"{base}/v1/jobs", params={"status": "succeeded", "limit": 5}).json()["jobs"]
    job = next(j for j in jobs if j["params"]["method"] == "zssr")  # the page's job (its bicubic baseline is newer)
    rows, columns = job["kernel"]["size"]
    assert job["params"]["kernel"] == "estimate" and job["kernel"]["source"] == "estimated"
    canvas = page.eval_on_selector("#kernel-canvas", """c => {
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const greys = [];
        for (let i = 0; i < data.length; i += 4) greys.push(data[i]);
        return {width: c.width, height: c.height, shownWidth: c.getBoundingClientRect().width,
                greys, grey: Array.from(data).every((v, i) => i % 4 === 3 || v === data[i - i % 4])};
    }""")
    assert (canvas["height"], canvas["width"]) == (rows, columns)
    assert canvas["grey"] and max(canvas["greys"]) == 255 and min(canvas["greys"]) < 255  # grey levels, white at most
    assert canvas["shownWidth"] >= 4 * columns  # scaled up to be seen
    assert f"{rows}×{columns}" in page.locator("#kernel-caption").inner_text()
    page.screenshot(path=str(artifacts / "demo-kernel-finished.png"), full_page=True)
