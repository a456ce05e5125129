"""The studio page in a real browser (Debian's headless Chromium, driven by Playwright) against a real
`idforge serve` on loopback with the tiny kit: one server and one browser for the whole module.

What a new user does: enter a key, pick a method, drop photos, look at the free previews, generate (queue
position, progress with steps, cancel), look at the gallery (seed, timings), download a PNG that carries its
recipe, run again with the seed or a new one, compare two results, restore parameters by dropping a PNG, reload
and find the history. Errors (401, 406, a 400 at its field, a failed job at its field) are checked as the page
shows them. Every test fails on any browser console error or uncaught exception.

Screenshots go to a temporary folder (printed at the end); with IDFORGE_STUDIO_SCREENSHOTS=DIR they are also
written to DIR (docs/studio/ holds the ones the README shows).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from idforge.demo.samples import png_bytes, synthetic_face, synthetic_pose
from idforge.server.db import Store
from idforge.server.runner import free_port
from server_fixtures import dark_png

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


# -- one server, one browser ---------------------------------------------------------------------------------------
class Studio:
    """The running `idforge serve` (a subprocess), its key store and a folder of input images."""

    def __init__(self, url: str, keys: Store, files: Path, shots: Path) -> None:
        self.url = url
        self.keys = keys
        self.files = files
        self.shots = shots

    def key(self, credits: int = 200) -> str:
        return self.keys.create_key(credits)[1]

    def shot(self, page, name: str, **kwargs) -> Path:
        path = self.shots / f"{name}.png"
        page.evaluate("window.scrollTo(0, 0)")  # sticky panels are drawn where they stick
        page.screenshot(path=str(path), **kwargs)
        keep = os.environ.get("IDFORGE_STUDIO_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        return path


@pytest.fixture(scope="module")
def studio(tiny_kit, tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    files = root / "files"
    files.mkdir()
    synthetic_face().save(files / "face.png")
    synthetic_face(box=(60, 90, 170, 200)).save(files / "face2.png")
    synthetic_pose().save(files / "pose.png")
    (files / "dark.png").write_bytes(dark_png(160))
    shots = root / "screenshots"
    shots.mkdir()
    db = root / "studio.db"
    keys = Store.open(db)
    port = free_port()
    log = open(root / "serve.log", "w")
    command = [sys.executable, "-m", "idforge.cli", "serve", "--port", str(port), "--models", str(tiny_kit)]
    command += ["--queue-size", "2"]  # small, so that a full queue (503) takes two jobs to reach
    process = subprocess.Popen(command + ["--db", str(db)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400  # warm-up loads every method's models first
        while True:
            try:
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:  # models loaded
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "serve.log").read_text()[-3000:])
            time.sleep(0.2)
        yield Studio(url, keys, files, shots)
    finally:
        process.terminate()
        process.wait(30)
        log.close()
        keys.close()
        print(f"\nstudio screenshots: {shots}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": 1360, "height": 1100},
        )
        yield context
        context.close()


class Console:
    """Browser console errors and uncaught exceptions; HTTP statuses a test provokes on purpose are allowed."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: set[int] = set()

    def allow(self, *statuses: int) -> None:
        self.allowed.update(statuses)

    def record(self, kind: str, text: str) -> None:
        match = re.search(r"status of (\d{3})", text)
        if match and int(match.group(1)) in self.allowed:
            return
        self.errors.append(f"{kind}: {text}")


@pytest.fixture
def console():
    return Console()


@pytest.fixture
def page(browser, studio, console):
    page = browser.new_page()
    page.on("console", lambda m: console.record("console", m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.record("pageerror", str(e)))
    open_studio(page, studio)
    yield page
    page.close()
    assert console.errors == [], console.errors


def open_studio(page, studio) -> None:
    """The page as a new user finds it: no key kept from an earlier test (the history stays: it is shared)."""
    page.add_init_script(  # once per tab (sessionStorage survives a reload): forget an earlier test's key
        "if (!sessionStorage.getItem('fresh')) { localStorage.clear(); sessionStorage.setItem('fresh', '1'); }"
    )
    page.goto(studio.url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)


# -- what a user does ----------------------------------------------------------------------------------------------
def enter_key(page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#key-form button[type=submit]")
    page.wait_for_function("document.querySelector('#credits').textContent.startsWith('Credits')")


def credits(page) -> int:
    return int(page.inner_text("#credits").split(":")[1])


def choose(page, slug: str) -> None:
    page.click(f"fieldset.methods label:has(input[value='{slug}'])")
    page.wait_for_function(f"document.querySelector('input[name=method][value=\"{slug}\"]').checked")


def upload(page, studio, field: str, *names: str) -> None:
    page.set_input_files(f"#file-{field}", [str(studio.files / n) for n in names])


def set_param(page, name: str, value) -> None:
    control = page.locator(f"#param-{name}")
    if not control.is_visible():
        page.click("#advanced summary")
    if control.evaluate("e => e.tagName") == "SELECT":
        control.select_option(str(value))
    elif isinstance(value, bool):
        control.set_checked(value)
    else:
        control.fill(str(value))


def wait_preview(page, cards: int) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('#preview-faces figure, #preview-extra figure').length >= {cards}",
        timeout=60_000,
    )


def gallery_count(page) -> int:
    return page.locator("#gallery > li").count()


def watch_job(page) -> None:
    """Record every text the job status line shows (a MutationObserver), to see queue and progress afterwards."""
    page.evaluate(
        """() => {
        window.__jobLog = [];
        const target = document.querySelector('#job-status');
        new MutationObserver(() => window.__jobLog.push(target.textContent)).observe(
            target, {childList: true, characterData: true, subtree: true});
    }"""
    )


def job_log(page) -> list[str]:
    return page.evaluate("window.__jobLog")


def generate(page, *, keyboard: bool = False, timeout: float = 120_000) -> list[str]:
    """Click Generate (or press Enter on it) and wait for the job to end; returns the status texts seen."""
    watch_job(page)
    before = gallery_count(page)
    if keyboard:
        page.focus("#generate")
        page.keyboard.press("Enter")
    else:
        page.click("#generate")
    page.wait_for_function("!document.querySelector('#generate').disabled", timeout=timeout)
    page.wait_for_function(
        f"document.querySelectorAll('#gallery > li').length > {before} || !document.querySelector('#error').hidden"
        " || /Canceled|Failed/.test(document.querySelector('#job-status').textContent)",
        timeout=timeout,
    )
    return job_log(page)


def download_png(page, card) -> tuple[dict, np.ndarray]:
    with page.expect_download() as info:
        card.locator("button.download").click()
    path = info.value.path()
    with Image.open(path) as image:
        assert image.format == "PNG"
        recipe = json.loads(image.info["idforge"])
        assert "Seed:" in image.info["parameters"]
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return recipe, pixels


def drop_file(page, data: bytes, name: str, selector: str = "body") -> None:
    """A real drop event carrying a File, as dragging a file from the desktop does."""
    page.evaluate(
        """([b64, name, selector]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: 'image/png'}));
        document.querySelector(selector).dispatchEvent(
            new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""",
        [base64.b64encode(data).decode("ascii"), name, selector],
    )


def small_job(page, steps: int = 20, seed: int | None = 1234) -> None:
    set_param(page, "num_inference_steps", steps)
    set_param(page, "width", 64)
    set_param(page, "height", 64)
    if seed is not None:
        set_param(page, "seed", seed)


# -- the tests -----------------------------------------------------------------------------------------------------
def test_form_comes_from_the_schema_and_every_control_is_labelled(page, studio):
    schema = httpx.get(studio.url + "/openapi.json").json()
    for slug, body in (
        ("instantid", "InstantIDBody"),
        ("faceid", "FaceIDBody"),
        ("insta-depth", "InstaDepthBody"),
    ):
        choose(page, slug)
        properties = schema["components"]["schemas"][body]["properties"]
        steps = page.locator("#param-num_inference_steps")
        assert float(steps.get_attribute("min")) == properties["num_inference_steps"]["minimum"]
        assert float(steps.get_attribute("max")) == properties["num_inference_steps"]["maximum"]
        assert float(steps.input_value()) == properties["num_inference_steps"]["default"]
        shown = set(
            page.eval_on_selector_all(
                "#params [name], #params-advanced [name]", "els => els.map(e => e.name)"
            )
        )
        images = {
            "face_image",
            "extra_face_images",
            "pose_image",
            "kps_image",
            "mask_image",
            "negative_image",
        }
        assert shown == set(properties) - images - {"prompt", "negative_prompt", "base64", "style"} - {
            "samples",
            "steps",
            "guidance",
            "identity_strength",
            "adapter_strength",
            "webhook_url",
        }
        assert page.locator("#params-advanced [name]").count() > 0 or slug == "insta-depth"
        assert not page.locator("#params-advanced").is_visible()  # advanced parameters are folded away
    choose(page, "faceid")
    adapters = page.eval_on_selector_all("#param-adapter option", "els => els.map(e => e.value)")
    assert adapters == schema["components"]["schemas"]["FaceIDBody"]["properties"]["adapter"]["enum"]
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map(e => e.id || e.name)"""
    )
    assert unlabelled == []


def test_keyboard_alone_reaches_the_method_and_generate(page, studio):
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    page.wait_for_function("document.activeElement.id === 'generate'")  # it jumps to Generate
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") != "generate"
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Tab")  # from the top again
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == "method":
            break
    page.keyboard.press("ArrowRight")  # radio group: arrows move between methods
    assert page.is_checked("input[name=method][value=faceid]")
    assert page.locator("#param-adapter").is_visible()  # the form follows the method
    outline = page.evaluate("getComputedStyle(document.activeElement.closest('label')).outlineStyle")
    assert outline != "none"  # the focused method is visibly marked


def test_readable_contrast_and_phone_width(page, studio):
    def luminance(color: str) -> float:
        value = color.strip().lstrip("#")
        channels = [int(value[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    def ratio(a: str, b: str) -> float:
        high, low = sorted((luminance(a), luminance(b)), reverse=True)
        return (high + 0.05) / (low + 0.05)

    var = {
        name: page.evaluate(f"getComputedStyle(document.documentElement).getPropertyValue('--{name}')")
        for name in (
            "text",
            "muted",
            "panel",
            "bg",
            "accent",
            "accent-text",
            "bad",
            "bad-bg",
            "warn",
            "warn-bg",
            "ok",
        )
    }
    pairs = [
        ("text", "panel"),
        ("muted", "panel"),
        ("muted", "bg"),
        ("accent-text", "accent"),
        ("bad", "bad-bg"),
        ("warn", "warn-bg"),
        ("ok", "panel"),
        ("accent", "panel"),
    ]
    for fore, back in pairs:
        assert ratio(var[fore], var[back]) >= 4.5, (fore, back, ratio(var[fore], var[back]))  # WCAG AA text

    page.set_viewport_size({"width": 390, "height": 844})
    enter_key(page, studio.key(5))
    upload(page, studio, "face_image", "face.png")
    wait_preview(page, 1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
    box = page.locator("#generate").bounding_box()
    assert box["width"] >= 44 and box["height"] >= 32  # a thumb-sized button
    studio.shot(page, "studio-phone", full_page=True)


def test_previews_show_faces_keypoints_and_clear_messages(page, studio):
    enter_key(page, studio.key(5))
    choose(page, "instantid")
    upload(page, studio, "face_image", "face.png", "dark.png")
    upload(page, studio, "pose_image", "pose.png")
    wait_preview(page, 4)  # two references, the pose, the keypoint image
    captions = page.locator("#preview-faces figcaption").all_inner_texts()
    assert "Reference 1 (main)\nOK: one face found; it is used" in captions[0]
    assert "Reference 2\nNo face: no face found (detection sizes tried: 640" in captions[1]
    assert "Pose image\nOK: one face found" in captions[2]
    assert "Keypoints IdentityNet sees (from the pose image" in page.inner_text("#preview-extra")
    assert "Generation would fail" in page.inner_text("#preview-status")
    assert credits(page) == 5  # previews are free
    studio.shot(page, "studio-previews", full_page=True)

    # A second face in one photo: the message says which one is used.
    two = synthetic_face(size=(320, 192), box=(20, 40, 100, 120))
    from PIL import ImageDraw

    ImageDraw.Draw(two).rectangle((180, 40, 290, 150), fill=(255, 255, 255))
    two.save(studio.files / "two.png")
    page.locator("#zone-face_image button", has_text="Remove").nth(1).click()
    page.locator("#zone-face_image button", has_text="Remove").first.click()
    upload(page, studio, "face_image", "two.png")
    page.wait_for_function("document.querySelector('#preview-faces').textContent.includes('Several faces')")
    assert "the largest (#1, green) is used" in page.inner_text("#preview-faces")

    choose(page, "insta-depth")
    wait_preview(page, 4)
    page.wait_for_function("document.querySelector('#preview-extra').textContent.includes('Depth map')")
    depth = page.locator("#preview-extra figure img").last
    assert depth.evaluate("img => img.complete && img.naturalWidth") > 0


@pytest.mark.parametrize("slug", ["instantid", "faceid", "insta-depth", "pulid"])
def test_the_whole_flow(page, studio, slug):
    key = studio.key(50)
    enter_key(page, key)
    choose(page, slug)
    upload(page, studio, "face_image", "face.png")
    takes_pose = slug in ("instantid", "insta-depth")
    if takes_pose:
        upload(page, studio, "pose_image", "pose.png")
    wait_preview(page, 3 if takes_pose else 1)
    page.fill("#prompt", f"a studio portrait, {slug}")
    styles = [s["name"] for s in httpx.get(studio.url + "/v1/styles").json()]
    assert page.eval_on_selector_all("#style option", "els => els.map(e => e.value)") == styles
    page.select_option("#style", "watercolor")
    small_job(page, steps=20, seed=1234)
    start = credits(page)
    seen = generate(page, keyboard=slug == "insta-depth")  # Insta Depth is started from the keyboard
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert any(re.fullmatch(r"Generating: step \d+ / 20", text) for text in seen), seen  # the progress bar
    assert any(text.startswith("Done") for text in seen)

    card = page.locator("#gallery > li").first
    assert card.locator("img").evaluate("img => img.complete && img.naturalWidth") == 64
    assert card.locator(".meta-seed").inner_text() == "1234"
    assert re.search(r"\d+\.\d\d s", card.locator(".meta-time").inner_text())
    assert credits(page) == start - 2  # 20 steps: two started blocks of ten
    studio.shot(page, f"studio-{slug}", full_page=True)

    recipe, pixels = download_png(page, card)
    # The identity score, when the server reports one (the shared `identity` object), is shown on the card.
    served = httpx.get(
        f"{studio.url}/v2/requests/{recipe['request']['request_id']}", headers={"x-api-key": key}
    ).json()
    identity = served.get("identity") or served["recipe"].get("identity")
    if identity:
        score = identity["images"][0]["score"]
        expected = f"Identity {score:.3f}" if score is not None else "Identity: no face"
        assert card.locator(".meta-score").inner_text().startswith(expected)
        assert recipe["identity"]["images"] == identity["images"][:1]
    else:
        assert card.locator(".meta-score").count() == 0
    if slug == "instantid":  # again with this seed: the same picture
        count = gallery_count(page)
        card.locator("button.again").click()
        page.wait_for_function(
            f"document.querySelectorAll('#gallery > li').length > {count}", timeout=120_000
        )
        page.wait_for_function(
            "/Done/.test(document.querySelector('#job-status').textContent)", timeout=120_000
        )
        again = page.locator("#gallery > li").first
        assert again.locator(".meta-seed").inner_text() == "1234"
        assert np.abs(download_png(page, again)[1] - pixels).max() <= 1
    assert recipe["seed"] == 1234 and recipe["request"]["method"] == slug
    assert recipe["request"]["body"]["prompt"] == f"a studio portrait, {slug}"
    assert recipe["request"]["body"]["num_inference_steps"] == 20
    assert recipe["request"]["body"]["style"] == "watercolor"  # the server applies the template
    assert recipe["params"]["seed"] == 1234
    assert recipe["method"] in (slug, slug.replace("-", "_"))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0


def test_faceid_batch_again_vary_compare_and_history_after_reload(page, studio):
    key = studio.key(50)
    enter_key(page, key)
    choose(page, "faceid")
    page.select_option("#param-adapter", "faceid-sd15")
    upload(page, studio, "face_image", "face.png", "face2.png")
    wait_preview(page, 2)
    set_param(page, "batch", True)
    small_job(page, steps=4, seed=77)
    before = gallery_count(page)
    generate(page)
    assert gallery_count(page) == before + 2  # batch: one image per reference
    seeds = page.locator("#gallery > li .meta-seed").all_inner_texts()[:2]
    assert sorted(seeds) == ["77", "78"]

    # "Again" on a batch image runs its batch again (output i = reference i at seed + i): the same pictures.
    first = page.locator("#gallery > li").first
    first_seed = first.locator(".meta-seed").inner_text()
    _, first_pixels = download_png(page, first)
    first.locator("button.again").click()
    page.wait_for_function(
        f"document.querySelectorAll('#gallery > li').length === {before + 4}", timeout=120_000
    )
    again = page.locator("#gallery > li").first
    assert again.locator(".meta-seed").inner_text() == first_seed
    again_recipe, again_pixels = download_png(page, again)
    assert np.abs(again_pixels - first_pixels).max() <= 1  # the same seed and parameters: the same picture
    assert again_recipe["request"]["body"]["seed"] == 77 and again_recipe["seed"] == int(first_seed)
    assert page.input_value("#param-seed") == "77"

    again.locator("button.vary").click()
    page.wait_for_function(
        f"document.querySelectorAll('#gallery > li').length === {before + 6}", timeout=120_000
    )
    varied = page.locator("#gallery > li .meta-seed").all_inner_texts()[:2]
    assert not {"77", "78"} & set(varied) and int(varied[0]) == int(varied[1]) + 1

    page.locator("#gallery > li").nth(0).locator("button.compare-toggle").click()
    page.locator("#gallery > li").nth(1).locator("button.compare-toggle").click()
    compare = page.locator("#compare")
    assert compare.is_visible() and compare.locator("figure").count() == 2
    assert "seed" in compare.locator("table.diff").inner_text()
    studio.shot(page, "studio-compare", full_page=True)

    shown = page.locator("#gallery > li .meta-seed").all_inner_texts()
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#gallery > li .meta-seed").all_inner_texts() == shown  # history survives a reload
    assert page.input_value("#api-key") == key and credits(page) > 0  # the key is entered once
    assert page.locator("#gallery > li img").first.evaluate("img => img.complete && img.naturalWidth") == 64


def test_queue_position_and_cancel(page, studio, console):
    key = studio.key(100)
    enter_key(page, key)
    choose(page, "instantid")
    upload(page, studio, "face_image", "face.png")
    wait_preview(page, 2)
    small_job(page, steps=100, seed=5)
    start = credits(page)

    # A running job: cancel stops it at its next step, and nothing is charged.
    watch_job(page)
    page.click("#generate")
    page.wait_for_function(
        "/step [1-9]\\d* \\/ 100/.test(document.querySelector('#job-status').textContent)", timeout=120_000
    )
    page.click("#cancel")
    page.wait_for_function(
        "/Canceled/.test(document.querySelector('#job-status').textContent)", timeout=60_000
    )
    page.wait_for_function("!document.querySelector('#generate').disabled")
    assert any("Generating: step" in t for t in job_log(page))

    # A queued job behind someone else's: the page shows its position, and cancel removes it.
    other = studio.key(100)
    blocker = blocking_job(studio, other)
    watch_job(page)
    page.click("#generate")
    page.wait_for_function(
        "/Queued: position/.test(document.querySelector('#job-status').textContent)", timeout=30_000
    )
    studio.shot(page, "studio-queued")
    page.click("#cancel")
    page.wait_for_function(
        "/Canceled/.test(document.querySelector('#job-status').textContent)", timeout=60_000
    )
    httpx.post(blocker["cancel_url"], headers={"x-api-key": other})
    page.wait_for_function("!document.querySelector('#generate').disabled")
    page.click("#key-form button[type=submit]")  # refresh the balance
    page.wait_for_function(f"document.querySelector('#credits').textContent === 'Credits: {start}'")
    assert credits(page) == start  # both canceled jobs released their credits


def blocking_job(studio, key: str) -> dict:
    """A long job submitted by someone else, straight to the API."""
    body = {
        "prompt": "blocker",
        "face_image": base64.b64encode(png_bytes(synthetic_face())).decode(),
        "num_inference_steps": 100,
        "width": 64,
        "height": 64,
    }
    response = httpx.post(studio.url + "/v2/instantid", headers={"x-api-key": key}, json=body)
    assert response.status_code in (200, 201, 202), response.text
    return response.json()


def test_a_full_queue_is_a_clear_503(page, studio, console):
    console.allow(503)
    other = studio.key(100)
    blockers = [blocking_job(studio, other) for _ in range(2)]  # the queue holds two
    try:
        enter_key(page, studio.key(10))
        upload(page, studio, "face_image", "face.png")
        small_job(page, steps=4)
        page.click("#generate")
        page.locator("#error").wait_for(state="visible")
        text = page.inner_text("#error")
        assert "The server is busy" in text and re.search(r"Try again in \d+ s", text), text
        assert not page.locator("#generate").is_disabled()
    finally:
        for job in blockers:
            httpx.post(job["cancel_url"], headers={"x-api-key": other})


def test_a_400_is_shown_at_its_field(page, studio, console):
    console.allow(400)
    enter_key(page, studio.key(20))
    choose(page, "instantid")
    upload(page, studio, "face_image", "face.png")
    set_param(page, "width", 64)  # and no height: the server names "height"
    page.fill("#param-height", "")
    page.click("#generate")
    error = page.locator("#error-height")
    error.wait_for(state="visible")
    assert "give both width and height" in error.inner_text()
    assert page.get_attribute("#param-height", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "param-height"
    studio.shot(page, "studio-error-400")

    # A job that fails in the worker (no face in the reference) is shown at the reference images.
    page.locator("#zone-face_image button", has_text="Remove").click()
    upload(page, studio, "face_image", "dark.png")
    small_job(page, steps=4)
    generate(page)
    assert "no face found" in page.inner_text("#error-face_image")


def test_406_with_a_drained_key_and_401_with_a_wrong_one(page, studio, console):
    console.allow(401, 406)
    enter_key(page, studio.key(0))
    assert credits(page) == 0
    choose(page, "faceid")
    upload(page, studio, "face_image", "face.png")
    small_job(page, steps=4)
    page.click("#generate")
    page.locator("#error").wait_for(state="visible")
    assert "Not enough credits" in page.inner_text("#error") and "0 left" in page.inner_text("#error")
    studio.shot(page, "studio-error-406")

    page.fill("#api-key", "idf_not_a_key")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("document.querySelector('#error').textContent.includes('refused')")
    assert page.evaluate("document.activeElement.id") == "api-key"


def test_dropping_an_idforge_png_restores_its_parameters(page, studio, tiny_kit, tmp_path):
    # A PNG written by the CLI's code path (GenerationResult.save), FaceID with non-default parameters.
    from idforge.engine.params import GenerationParams
    from idforge.engine.session import Engine, ModelChoice
    from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
    from idforge.methods.faceid.generate import generate_faceid

    result = generate_faceid(
        Engine(ModelChoice(models_dirs=[str(tiny_kit)])),
        FaceIDRequest(
            faces=[png_bytes(synthetic_face())],
            generation=GenerationParams(
                prompt="cli prompt",
                negative_prompt="cli negative",
                steps=6,
                guidance=4.5,
                seed=4242,
                width=64,
                height=64,
            ),
            faceid=FaceIDParams(weight=0.7, weight_type="ease in", lora_strength=0.3),
            adapter="faceid-plus-sd15",
        ),
    )
    cli_png = result.save(tmp_path / "cli.png")[0].read_bytes()

    choose(page, "instantid")
    drop_file(page, cli_png, "cli.png")
    page.wait_for_function("document.querySelector('input[name=method][value=faceid]').checked")
    assert (
        page.input_value("#prompt") == "cli prompt" and page.input_value("#negative_prompt") == "cli negative"
    )
    assert page.input_value("#param-num_inference_steps") == "6"
    assert page.input_value("#param-guidance_scale") == "4.5"
    assert page.input_value("#param-seed") == "4242"
    assert page.input_value("#param-adapter") == "faceid-plus-sd15"
    assert page.input_value("#param-weight") == "0.7" and page.input_value("#param-weight_type") == "ease in"
    assert page.input_value("#param-lora_strength") == "0.3"
    assert "Restored" in page.inner_text("#job-status")

    # A PNG the studio itself wrote (the recipe's API body), dropped while another method is shown.
    from idforge.engine.result import save_png_with_recipe

    studio_recipe = {
        "method": "insta_depth",
        "seed": 99,
        "params": {"steps": 12},
        "request": {
            "method": "insta-depth",
            "body": {
                "prompt": "from the studio",
                "seed": 99,
                "num_inference_steps": 12,
                "guidance_scale": 2.5,
                "return_depth_map": True,
            },
        },
    }
    save_png_with_recipe(Image.new("RGB", (8, 8)), tmp_path / "studio.png", studio_recipe)
    drop_file(page, (tmp_path / "studio.png").read_bytes(), "studio.png")
    page.wait_for_function("document.querySelector('input[name=method][value=\"insta-depth\"]').checked")
    assert page.input_value("#prompt") == "from the studio" and page.input_value("#param-seed") == "99"
    assert page.input_value("#param-guidance_scale") == "2.5"
    assert page.locator("#param-return_depth_map").is_checked()

    # A PNG without a recipe says so.
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    drop_file(page, buffer.getvalue(), "plain.png")
    page.wait_for_function("document.querySelector('#error').textContent.includes('no idforge recipe')")


def test_a_cli_png_of_any_method_opens_the_method_its_recipe_names(page, studio, tmp_path):
    """A CLI recipe has no API body: the page finds the method by the recipe `method` names the registry declares
    (PuLID's included), and says when only a part of a combined recipe is restored."""
    from idforge.engine.result import save_png_with_recipe

    pulid = {
        "method": "pulid",
        "seed": 31,
        "params": {"prompt": "a pulid portrait", "steps": 9, "weight": 0.65},
    }
    save_png_with_recipe(Image.new("RGB", (8, 8)), tmp_path / "pulid.png", pulid)
    choose(page, "instantid")
    drop_file(page, (tmp_path / "pulid.png").read_bytes(), "pulid.png")
    page.wait_for_function("document.querySelector('input[name=method][value=pulid]').checked")
    assert page.input_value("#prompt") == "a pulid portrait" and page.input_value("#param-seed") == "31"
    assert (
        page.input_value("#param-num_inference_steps") == "9" and page.input_value("#param-weight") == "0.65"
    )

    both = {"method": "instantid+faceid", "seed": 5, "params": {"prompt": "both", "weight": 0.9}}
    save_png_with_recipe(Image.new("RGB", (8, 8)), tmp_path / "both.png", both)
    drop_file(page, (tmp_path / "both.png").read_bytes(), "both.png")
    page.wait_for_function("document.querySelector('input[name=method][value=faceid]').checked")
    assert page.input_value("#param-weight") == "0.9"
    assert "made as instantid+faceid" in page.inner_text("#job-status")


def test_a_registered_method_appears_in_the_form_with_its_fields(browser, console, tmp_path):
    """The registry is the studio's only list of methods: a method registered on the server gets its radio and
    a form built from its body, with nothing changed in the page."""
    from idforge.methods.registry import register, unregister
    from server_fixtures import running_server
    from test_method_registry import DUMMY

    register(DUMMY)
    try:
        with running_server(tmp_path / "s.db", None, warm_up=()) as (url, _keys):
            page = browser.new_page()
            page.on("pageerror", lambda e: console.record("pageerror", str(e)))
            try:
                page.goto(url + "/")
                page.wait_for_selector("body[data-ready=true]", timeout=30_000)
                titles = page.eval_on_selector_all(
                    "fieldset.methods label", "els => els.map(e => e.textContent.trim())"
                )
                assert titles == ["InstantID", "FaceID", "Insta Depth", "PuLID", "Dummy"]
                choose(page, "pulid")  # a built-in method's form comes from its body the same way
                assert (
                    page.locator("#param-method").count() == 1
                    and page.locator("#param-fidelity").count() == 1
                )
                choose(page, "dummy")
                shade = page.locator("#param-shade")
                assert (shade.get_attribute("min"), shade.get_attribute("max"), shade.input_value()) == (
                    "0",
                    "255",
                    "128",
                )
                assert page.eval_on_selector_all("#param-tint option", "els => els.map(e => e.value)") == [
                    "grey",
                    "red",
                ]
                assert page.title().endswith("Dummy")
            finally:
                page.close()
    finally:
        unregister("dummy")
    assert console.errors == []


WORKFLOWS = Path(__file__).parent / "data" / "workflows"


def test_a_dropped_comfyui_workflow_is_planned_for_free_and_runs_with_a_face(page, studio, console):
    console.allow(400)  # Run before the face is given
    key = studio.key(20)
    enter_key(page, key)
    before = credits(page)
    drop_file(page, (WORKFLOWS / "instantid_advanced_ui04.json").read_bytes(), "advanced.json")
    page.wait_for_selector("#workflow-zone-8", timeout=30_000)
    panel = page.inner_text("#workflow-panel")
    assert "advanced.json (ui-0.4)" in panel and "KSampler 10" in panel and "InstantID" in panel
    assert "Node 8:" in page.inner_text("#workflow-zone-8 label") and "instantid.face_image" in panel
    assert page.locator("#workflow-zones .zone").count() == 1  # node 8 alone
    assert "9.ip_weight" in panel  # each parameter names the node input it came from
    assert page.inner_text("#workflow-price") == "Costs 1 credit"
    assert not page.locator("#generate").is_visible()  # the panel takes the method form's place
    assert credits(page) == before  # planning is free
    page.click("#workflow-run")
    page.wait_for_selector("#workflow-error:not([hidden])", timeout=30_000)
    assert "images.8" in page.inner_text("#workflow-error")
    assert page.get_attribute("#workflow-zone-8", "aria-invalid") == "true"
    drop_file(page, (studio.files / "face.png").read_bytes(), "face.png", "#workflow-zone-8")
    page.wait_for_selector("#workflow-zone-8 .thumbs img")
    studio.shot(page, "studio-workflow")
    gallery = gallery_count(page)
    page.click("#workflow-run")
    page.wait_for_function(f"document.querySelectorAll('#gallery > li').length > {gallery}", timeout=180_000)
    card = page.locator("#gallery > li").first
    assert "12 (" in card.locator(".meta-node").inner_text()
    assert card.locator(".meta-method").inner_text() == "ComfyUI workflow"
    assert card.locator("button.again").count() == 0
    assert "Done: 1 image(s) from advanced.json" in page.inner_text("#job-status")
    page.wait_for_function(f"document.querySelector('#credits').textContent === 'Credits: {before - 1}'")
    studio.shot(page, "workflow-result")


def test_a_workflow_png_with_an_unsupported_node_says_which(page, studio, console):
    from PIL.PngImagePlugin import PngInfo

    console.allow(400)
    enter_key(page, studio.key(5))
    graph = json.loads((WORKFLOWS / "instantid_lightning_api.json").read_text())
    graph["30"] = {
        "class_type": "UpscaleModelLoader",
        "inputs": {"model_name": "x4.pth"},
        "_meta": {"title": "Upscaler"},
    }
    info = PngInfo()
    info.add_text("prompt", json.dumps(graph))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    drop_file(page, buffer.getvalue(), "ComfyUI_00001_.png")
    page.wait_for_selector("#workflow-error:not([hidden])", timeout=30_000)
    message = page.inner_text("#workflow-error")
    studio.shot(page, "workflow-error")
    assert "30.class_type" in message and "node 30 'Upscaler' (UpscaleModelLoader)" in message
    assert page.locator("#workflow-run").count() == 0
    page.click("#workflow-panel button:has-text('Close workflow')")
    assert page.locator("#generate").is_visible() and not page.locator("#workflow-panel").is_visible()
