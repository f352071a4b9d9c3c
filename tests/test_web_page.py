"""The web page in a real browser: headless Chromium (Debian's chromium and chromium-driver, which `make test`
installs) driven by Selenium against the deployed app. Chromium's fake microphone plays a real speech file.
Every test saves a screenshot in its output folder and checks that the page asked nothing of another origin."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from serve_app.audio.decode import load_file
from serve_app.core.types import SAMPLE_RATE

CLIP = "en_jfk_inaugural_16k.wav"  # "And so, my fellow Americans, ask not what your country can do for you ..."
WORDS = ("americans", "country", "fellow")


@pytest.fixture(scope="module")
def microphone_file(tmp_path_factory, audio_dir) -> Path:
    """What the fake microphone plays: the clip after half a second of silence, then two seconds of silence."""
    speech = load_file(audio_dir / CLIP)
    silence = np.zeros(SAMPLE_RATE // 2, np.float32)
    path = tmp_path_factory.mktemp("mic") / "speech.wav"
    sf.write(path, np.concatenate([silence, speech, silence, silence, silence, silence]), SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.fixture
def browser(microphone_file):
    """A fresh browser per test: a kept-alive connection from an earlier test may still be held by an HAProxy
    process from before the last deploy's reload, which does not know the newer apps' routes."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromedriver are needed (make install-test installs Debian's packages)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_file}", "--autoplay-policy=no-user-gesture-required",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)
    yield drv
    drv.quit()


@pytest.fixture
def page(browser, request, tmp_path):
    """Opens the page at ``request.param``'s app; afterwards saves a screenshot and checks every request's origin."""
    def open_page(app_url: str):
        browser.get(app_url + "/ui/")
        try:
            WebDriverWait(browser, 30).until(lambda d: len(Select(d.find_element(By.ID, "model")).options) > 0)
        except TimeoutException:
            pytest.fail(f"no models listed at {browser.current_url}: {browser.page_source[:300]!r}")
        return browser

    yield open_page
    browser.save_screenshot(str(tmp_path / f"{request.node.name}.png"))
    assert (tmp_path / f"{request.node.name}.png").stat().st_size > 0
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(browser.current_url))
    requested = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    urls = {m["params"]["request"]["url"] for m in requested if m["method"] == "Network.requestWillBeSent"}
    foreign = {u for u in urls if not u.startswith((origin, "data:", "blob:"))}
    assert urls and not foreign, f"the page asked another origin: {foreign}"


def _wait_text(driver, element_id: str, predicate, timeout: float = 60) -> str:
    WebDriverWait(driver, timeout).until(lambda d: predicate(d.find_element(By.ID, element_id).text))
    return driver.find_element(By.ID, element_id).text


def _has_speech_words(text: str) -> bool:
    return any(w in text.lower() for w in WORDS)


def test_an_uploaded_clip_is_transcribed_with_its_segments_and_timing(page, base_url, audio_dir):
    driver = page(base_url)
    driver.get(base_url + "/")  # the root redirects to the page
    WebDriverWait(driver, 30).until(lambda d: d.current_url == base_url + "/ui/")
    WebDriverWait(driver, 30).until(lambda d: len(Select(d.find_element(By.ID, "model")).options) > 0)
    driver.find_element(By.ID, "file").send_keys(str(audio_dir / CLIP))
    _wait_text(driver, "audio-name", lambda t: CLIP in t)
    driver.find_element(By.ID, "transcribe").click()
    text = _wait_text(driver, "text", _has_speech_words)
    assert "fellow americans" in text.lower()
    assert "real-time factor" in driver.find_element(By.ID, "stats").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#segments tbody tr")) >= 1
    driver.set_window_size(390, 844)  # a phone: nothing wider than the screen
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    driver.set_window_size(1280, 1000)


def test_two_models_are_compared_side_by_side(page, voxtral_url, audio_dir, manifest):
    driver = page(voxtral_url)
    driver.find_element(By.ID, "tab-compare").click()
    driver.find_element(By.ID, "file").send_keys(str(audio_dir / CLIP))
    _wait_text(driver, "audio-name", lambda t: CLIP in t)
    checked = [c.get_attribute("value") for c in driver.find_elements(By.CSS_SELECTOR, "#compare-models input:checked")]
    assert set(checked) == {"voxtral-tiny", "whisper-tiny.en"}
    reference = next(row["transcript"] for row in manifest if row["file"] == CLIP)
    driver.find_element(By.ID, "reference").send_keys(reference)
    driver.find_element(By.ID, "compare").click()
    WebDriverWait(driver, 120).until(lambda d: all("latency" in p.text for p in d.find_elements(By.CSS_SELECTOR, "#comparison .stats")))
    columns = {a.get_attribute("data-model"): a.text for a in driver.find_elements(By.CSS_SELECTOR, "#comparison article")}
    assert set(columns) == {"voxtral-tiny", "whisper-tiny.en"}
    assert _has_speech_words(columns["whisper-tiny.en"]) and "WER" in columns["whisper-tiny.en"]
    assert driver.find_elements(By.CSS_SELECTOR, "#comparison ins, #comparison del"), "the differences are marked"


def test_a_recording_from_the_microphone_is_transcribed(page, base_url):
    driver = page(base_url)
    driver.find_element(By.ID, "record").click()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "record").text == "Stop recording")
    time.sleep(9)  # the fake microphone plays the clip (half a second of silence, then 11 s of speech)
    driver.find_element(By.ID, "record").click()
    _wait_text(driver, "audio-name", lambda t: "recording.webm" in t)
    driver.find_element(By.ID, "transcribe").click()
    assert _has_speech_words(_wait_text(driver, "text", _has_speech_words))


def test_live_mode_shows_speech_and_final_text(page, base_url):
    driver = page(base_url)
    driver.find_element(By.ID, "tab-live").click()
    driver.find_element(By.ID, "live-start").click()
    WebDriverWait(driver, 20).until(EC.text_to_be_present_in_element((By.ID, "live-state"), "speaking"))
    WebDriverWait(driver, 60).until(lambda d: any(_has_speech_words(li.text) for li in d.find_elements(By.CSS_SELECTOR, "#live-finals li")))
    final = driver.find_element(By.CSS_SELECTOR, "#live-finals li").text
    assert "ms after the end of speech" in final
    driver.find_element(By.ID, "live-stop").click()
    WebDriverWait(driver, 10).until(EC.text_to_be_present_in_element((By.ID, "live-state"), "off"))


def test_an_api_error_is_shown_as_the_apis_message(page, base_url, tmp_path):
    driver = page(base_url)
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not audio samples\n" * 20)
    driver.find_element(By.ID, "file").send_keys(str(notes))
    _wait_text(driver, "audio-name", lambda t: "notes.txt" in t)
    driver.find_element(By.ID, "transcribe").click()
    message = _wait_text(driver, "error", lambda t: t.strip() != "", timeout=30)
    assert message.startswith("415:") and "unsupported file type" in message.lower()
