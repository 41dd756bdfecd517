"""The page in a real headless browser (Debian's chromium through Playwright; no browser is downloaded): what a
biologist does, click by click: open the printed address, pick the tiny dataset with the folder browser, scan
it, preview a mask, fix a value the page refuses, start a 2-epoch training, watch the curves and the snapshot
appear, upload the test image and predict it, download its mask, evaluate it. A screenshot of every step goes to the
test's folder (``BIOM3D_GUI_SCREENSHOTS=DIR`` copies them there too, e.g. for the README)."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from tests.gui.conftest import TOKEN

CHROMIUM = next((p for p in (os.environ.get("BIOM3D_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                             shutil.which("chromium-browser")) if p and Path(p).is_file()), None)
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                     "(pip install playwright; the browser itself is the system's chromium)")
expect = playwright_api.expect  # waits run in Playwright's own world: the page's CSP (no eval) stays on
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium, or set "
                                "BIOM3D_CHROMIUM to a Chromium executable)")


@pytest.fixture
def server(data, tmp_path):
    """The GUI on a free localhost port, served by uvicorn in a thread: (address with the token, runs folder)."""
    import uvicorn

    from biom3d.gui.server import address, bind, create_app

    runs = tmp_path / "runs"
    app = create_app([data], TOKEN, runs)
    sock = bind("127.0.0.1", 0)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    assert uv.started, "the server did not start"
    yield address("127.0.0.1", sock.getsockname()[1], TOKEN), runs
    uv.should_exit = True
    thread.join(10)


class Steps:
    """Screenshots named by step, into the test's folder (and $BIOM3D_GUI_SCREENSHOTS)."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.n = page, folder, 0
        self.extra = Path(os.environ["BIOM3D_GUI_SCREENSHOTS"]) if os.environ.get("BIOM3D_GUI_SCREENSHOTS") else None

    def shot(self, name: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)
        return path


def test_a_biologist_trains_predicts_and_downloads_a_mask_in_the_browser(server, data, tmp_path):
    url, runs = server
    errors: list[str] = []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True).new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            steps = Steps(page, tmp_path)
            page.set_default_timeout(30_000)

            # the printed address: the token sets a cookie and leaves the address bar
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            assert "token" not in page.url

            # 1. data: the folder browser, then a typed path
            page.click("button[data-browse='images']")
            for name in ("data", "train", "images"):
                page.click(f"#browser-entries li.dir:text-is('📁 {name}')")
            page.wait_for_selector("#browser-entries li.file")
            assert page.inner_text("#browser-path") == str((data / "train" / "images").resolve())
            page.click("#browser-choose")
            assert page.input_value("#images") == str((data / "train" / "images").resolve())
            page.fill("#masks", str(data / "train" / "masks"))
            steps.shot("data")
            page.click("#scan")
            page.wait_for_selector("#scan-files tbody tr:nth-child(3)")
            summary = page.inner_text("#scan-summary")
            assert "16 × 24 × 24" in summary and "2 × 0.5 × 0.5 µm" in summary and "patch size" in summary
            page.click("#scan-files tbody tr:first-child button")
            expect(page.locator("#data-preview img")).to_have_js_property("naturalWidth", 24)
            steps.shot("scan-and-preview")

            # 2. train: a refused value is shown next to its field, then a tiny training starts
            page.click("#to-train")
            page.fill("#name", "browser-run")
            page.fill("#epochs", "2")
            page.fill("#lr", "fast")
            page.click("#train-form details:first-of-type summary")
            page.fill("#iters_per_epoch", "1")
            page.fill("#val_iters", "1")
            page.fill("#workers", "0")
            page.select_option("#device", "cpu")
            page.check("#small")
            held = []  # each edit asks the server for a plan (the browser's own change events too); last first
            page.route("**/api/autoconfig", lambda route: held.append(route))
            for i in range(3):
                page.fill(f"#patch-{i}", "16")
                page.dispatch_event(f"#patch-{i}", "change")
            page.focus("#name")  # the last field's own change event, if the browser sends one on leaving it
            asked = -1
            while len(held) != asked:  # until no edit asks any more
                asked = len(held)
                page.wait_for_timeout(300)
            assert asked >= 3 and '"patch_size":[16,16,16]' in held[-1].request.post_data
            for route in reversed(held):  # the first edit's answer, [16, 24, 24], comes last
                with page.expect_response("**/api/autoconfig"):
                    route.continue_()
            page.unroute("**/api/autoconfig")
            expect(page.locator("#patch-info")).to_contain_text("poolings 2 × 2 × 2")
            # the server fails once while the page follows the run: the page tries again
            failed = []

            def fail_once(route) -> None:
                if failed:
                    route.continue_()
                else:
                    failed.append(route.request.url)
                    route.fulfill(status=503, json={"error": "the server is busy"})

            page.route("**/api/runs/browser-run*", fail_once)
            page.click("#start")
            expect(page.locator("#err-lr")).to_contain_text("valid number")  # next to the field
            steps.shot("train-refused")
            page.fill("#lr", "0.01")
            page.click("#start")

            # 3. runs: the curves and the snapshot appear as the epochs end
            page.wait_for_selector("#tab-runs:not([hidden]) #run-detail:not([hidden])")
            expect(page.locator("#run-state .status")).to_have_text("finished", timeout=240_000)
            two_points = re.compile(r"^\S+ \S+$")  # one per epoch
            for chart, series in (("loss", "train_loss"), ("loss", "val_loss"), ("metric", "val_dice")):
                expect(page.locator(f"#chart-{chart} polyline[data-series={series}]")).to_have_attribute("points", two_points)
            expect(page.locator("#snapshot")).not_to_have_js_property("naturalWidth", 0)
            assert page.input_value("#snapshot-epoch") == "epoch-0002.png"
            assert "epoch 2 of 2" in page.inner_text("#run-state")
            steps.shot("training")
            assert failed, "the page never asked for the run"
            page.unroute("**/api/runs/browser-run*")

            # 4. predict an uploaded image with this run, download the mask
            page.click("#run-predict")
            page.wait_for_selector("#predict-runs input[value='browser-run']:checked")
            page.set_input_files("input[data-upload='predict-input']", str(data / "test" / "images" / "case0.tif"))
            expect(page.locator("#predict-input")).to_have_value(re.compile(r"/uploads/.+/inputs$"))
            page.check("#predict-fast")  # fast mode: no flips, larger tiles
            page.select_option("#predict-device", "cpu")
            page.click("#predict")
            page.wait_for_selector("#predict-files a.mask-link", timeout=180_000)
            with page.expect_download() as download:
                page.click("#predict-files a.mask-link")
            saved = tmp_path / "downloaded" / download.value.suggested_filename
            download.value.save_as(saved)
            page.click("#predict-files button")
            expect(page.locator("#predict-preview img")).to_have_js_property("naturalWidth", 24)
            steps.shot("predict")
            with page.expect_download() as archive:
                page.click("#predict-zip")
            assert archive.value.suggested_filename.endswith(".zip")

            # 5. evaluate the prediction against the test mask
            page.click("button[data-tab='evaluate']")
            assert page.input_value("#eval-pred").startswith(str(runs.resolve() / "predictions"))
            page.fill("#eval-truth", str(data / "test" / "masks"))
            page.check("#eval-distances")
            page.click("#evaluate")
            page.wait_for_selector("#eval-result table.eval", timeout=120_000)
            shown = float(page.inner_text("#eval-result table.eval tbody tr:first-child td:nth-child(3)"))
            heads = page.locator("#eval-result table.eval thead th").all_inner_texts()
            shown_hd95 = page.inner_text("#eval-result table.eval tbody tr:first-child td:nth-child(5)")
            steps.shot("evaluate")
        finally:
            browser.close()

    assert saved.name == "case0.tif"
    mask = tifffile.imread(saved)
    assert mask.shape == (16, 24, 24) and set(np.unique(mask)) <= {0, 1}
    truth = tifffile.imread(data / "test" / "masks" / "case0.tif") > 0
    dice = 2 * np.logical_and(mask > 0, truth).sum() / ((mask > 0).sum() + truth.sum())
    assert shown == pytest.approx(dice, abs=1e-4)  # the table shows the downloaded mask's Dice
    assert heads == ["file", "class", "Dice", "IoU", "HD95 (um)", "ASSD (um)"]
    from biom3d.core.surface import surface_distances
    from tests.e2e.conftest import SPACING

    assert float(shown_hd95) == pytest.approx(surface_distances(mask > 0, truth, SPACING)["hd95"], abs=1e-4)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "01-data.png", "02-scan-and-preview.png", "03-train-refused.png", "04-training.png", "05-predict.png",
        "06-evaluate.png"]
    # the run trains with the last edit's patch: [16, 16, 16], not an earlier answer's [16, 24, 24] or [16, 16, 24]
    config = yaml.safe_load((runs / "browser-run" / "config.yaml").read_text(encoding="utf-8"))
    assert config["patch_size"] == [16, 16, 16] and config["aug_patch_size"] == [28, 28, 28], config
    # the browser logs the refusal of step 2 and the one failed request
    expected = [e for e in errors if "status of 422" in e or "status of 503" in e]
    assert len(expected) == 2 and [e for e in errors if e not in expected] == [], errors


def test_late_answers_do_not_show_another_run_or_send_another_patch(server, data, tmp_path):
    """Answers come back in any order: the run opened last is the one shown, and Start waits for the plan of the
    patch in the fields (a patch without a plan is refused next to its field, not dropped)."""
    url, runs = server
    for name, epochs in (("run-a", 4), ("run-b", 6)):  # two finished-looking pipeline folders
        (runs / name).mkdir(parents=True)
        (runs / name / "config.yaml").write_text(yaml.safe_dump({"name": name, "train": {"epochs": epochs}}), encoding="utf-8")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(30_000)
            page.goto(url + "#runs")
            page.wait_for_selector("body[data-ready='1']")

            held = []
            page.route("**/api/runs/run-a", lambda route: held.append(route))
            page.click("#runs-table a:text-is('run-a')")
            while not held:
                page.wait_for_timeout(50)
            page.click("#runs-table a:text-is('run-b')")
            expect(page.locator("#run-title")).to_have_text("run-b")
            expect(page.locator("#run-more")).to_have_value("12")  # run-b's epochs x 2
            with page.expect_response("**/api/runs/run-a"):
                held[0].continue_()
            page.wait_for_timeout(300)  # what the page does with the late answer, if anything
            expect(page.locator("#run-title")).to_have_text("run-b")
            expect(page.locator("#run-more")).to_have_value("12")
            page.unroute("**/api/runs/run-a")

            sent = []  # the training requests, answered by the test (nothing trains)
            page.route("**/api/train", lambda route: (sent.append(route.request.post_data_json),
                                                      route.fulfill(status=422, json={"error": "held by the test"})))
            page.click("button[data-tab='data']")
            page.fill("#images", str(data / "train" / "images"))
            page.fill("#masks", str(data / "train" / "masks"))
            page.click("button[data-tab='train']")
            page.fill("#name", "late")
            page.fill("#patch-0", "16")
            page.fill("#patch-1", "16")
            page.fill("#patch-2", "16")
            page.dispatch_event("#patch-2", "change")
            page.click("#start")  # no scan, so no plan: refused here, not trained with the auto-configuration's
            expect(page.locator("#err-patch_size")).to_contain_text("scan the data first")
            assert sent == []

            page.click("button[data-tab='data']")
            page.click("#scan")
            page.wait_for_selector("#scan-files tbody tr:nth-child(3)")
            page.click("#to-train")
            planned = []
            page.route("**/api/autoconfig", lambda route: planned.append(route))
            for i, side in enumerate((16, 16, 16)):
                page.fill(f"#patch-{i}", str(side))
            page.dispatch_event("#patch-2", "change")
            while not planned:
                page.wait_for_timeout(50)
            page.click("#start")  # while the plan is on its way
            page.wait_for_timeout(500)
            assert sent == []  # Start waits for it
            with page.expect_request("**/api/train"):
                for route in planned:
                    route.continue_()
            page.unroute("**/api/autoconfig")
        finally:
            browser.close()
    (form,) = [body["form"] for body in sent]
    assert form["patch_size"] == [16, 16, 16] and form["aug_patch_size"] == [28, 28, 28], form
