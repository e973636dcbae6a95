"""The web chat page in a real headless browser (Debian's chromium and chromium-driver)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import repl_reply

pytestmark = pytest.mark.e2e

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def open_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,640"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.mark.skipif(
    not (CHROMEDRIVER and CHROMIUM), reason="needs chromium and chromium-driver (apt)"
)
def test_typing_hi_and_enter_streams_hello_and_keeps_the_conversation(server, trained_workdir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser = open_browser()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: "epoch" in b.find_element(By.ID, "facts").text)
        assert "val_loss" in browser.find_element(By.ID, "facts").text

        def replies(b):
            return [e.text for e in b.find_elements(By.CSS_SELECTOR, ".message.assistant")]

        browser.find_element(By.ID, "prompt").send_keys("hi", Keys.ENTER)
        wait.until(lambda b: replies(b) == ["hello!"])
        browser.find_element(By.ID, "prompt").send_keys("what is 2+2?", Keys.ENTER)
        in_context = repl_reply(trained_workdir, "what is 2+2?", (("hi", "hello!"),))
        wait.until(lambda b: replies(b) == ["hello!", in_context])
        users = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".message.user")]
        assert users == ["hi", "what is 2+2?"]
        assert browser.find_element(By.ID, "prompt").get_attribute("value") == ""
    finally:
        browser.quit()
