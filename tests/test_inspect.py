"""Inspection: the attention the model sows is its own, and `--mode=inspect` writes what it
shows from the model's own forward pass."""

from __future__ import annotations

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import run_main
from tinytx_jax.inference import inspection, trained
from tinytx_jax.text import dialogs


def test_a_reply_view_holds_the_models_own_odds_and_losses(trained_workdir):
    model = trained.load_trained(trained_workdir, log=lambda _: None)
    view = inspection.reply_view(model, dialogs.render_prompt("what is 2+2?"), "4</assistant>")
    text = dialogs.render_prompt("what is 2+2?") + "4</assistant>"
    assert "".join(view.chars) == text and "".join(view.chars[view.first :]) == "4</assistant>"
    logits = np.asarray(
        jax.jit(model.model.apply)({"params": model.params}, model.vocab.encode(text))
    )
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    for i, char in enumerate(view.chars[view.first :]):
        row = probs[view.first + i - 1]  # the position that wrote this character
        best = int(row.argmax())
        assert view.top[i][0][0] == model.vocab.chars[best]
        assert view.top[i][0][1] == pytest.approx(row[best], rel=1e-5)
        expected = -np.log(row[model.vocab.chars.index(char)])
        assert view.loss[i] == pytest.approx(expected, rel=1e-4, abs=1e-5)
        for head in view.attention[0]:
            assert len(head[i]) == view.first + i  # every key up to the query, none after
            assert sum(head[i]) == pytest.approx(1.0, rel=1e-5)
    assert view.top[0][0][0] == "4"  # the trained model's answer, from its own odds


@pytest.mark.e2e
def test_inspect_writes_the_page_and_the_picture_of_a_reply(trained_workdir, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(trained_workdir, workdir)
    result = run_main("--mode=inspect", f"--workdir={workdir}", "--prompt=what is 2+2?")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "4"
    assert lines[1:] == [
        f"Wrote {workdir / 'inspect' / 'inspect.html'}",
        f"Wrote {workdir / 'inspect' / 'attention.png'}",
    ]
    page = (workdir / "inspect" / "inspect.html").read_text()
    assert "<script src" not in page and "http" not in page.split("<script")[1]  # no network
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S)[1])
    assert "".join(data["chars"][data["first"] :]).startswith("4</assistant>")
    assert data["top"][0][0][0] == "4" and len(data["top"][0]) == inspection.TOP
    png = (workdir / "inspect" / "attention.png").read_bytes()
    assert png.startswith(b"\x89PNG")


@pytest.mark.e2e
def test_inspect_of_a_text_model_shows_the_loss_of_every_character(text_run, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(text_run[0], workdir)
    long_text = "what does it say? " * 40  # longer than max_len: cut as chat cuts
    result = run_main("--mode=inspect", f"--workdir={workdir}", f"--prompt={long_text}")
    assert result.returncode == 0, result.stderr
    assert "its first" in result.stderr and "characters were cut, as chat does" in result.stderr
    page = (workdir / "inspect" / "inspect.html").read_text()
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S)[1])
    assert data["kind"] == "text" and len(data["loss"]) == len(data["chars"]) - 1
    assert len(data["worst"]) == inspection.WORST
    assert (workdir / "inspect" / "loss.png").read_bytes().startswith(b"\x89PNG")
    default = run_main("--mode=inspect", f"--workdir={workdir}")  # its validation split
    assert default.returncode == 0, default.stderr


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt=   "], "needs --prompt with some text of its vocabulary"),
        (["--prompt=hi", "--text=/etc/hostname"], "--text is for a text model"),
    ],
)
def test_inspect_refuses_what_it_cannot_show_in_one_line(trained_workdir, args, message):
    result = run_main("--mode=inspect", f"--workdir={trained_workdir}", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.e2e
def test_inspect_of_a_workdir_without_a_checkpoint_is_one_line(tmp_path):
    result = run_main("--mode=inspect", f"--workdir={tmp_path}", "--prompt=hi")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.e2e
def test_the_inspect_endpoint_shows_one_reply_and_refuses_the_rest(server):
    from tests.test_serve import post

    asked = [{"role": "user", "content": "what is 2+2?"}]
    status, view = post(server.url, {"messages": asked, "reply": "4"}, path="/v1/inspect")
    assert status == 200, view
    assert "".join(view["chars"][view["first"] :]) == "4</assistant>"
    assert view["top"][0][0][0] == "4" and len(view["top"][0]) == inspection.TOP
    assert all(abs(sum(row) - 1) < 1e-4 for row in view["attention"][0][0])
    for body, param in [
        ({"messages": asked, "reply": "4", "stream": True}, "stream"),
        ({"messages": asked, "reply": "4", "n": 2}, "n"),
        ({"messages": asked, "reply": 4}, "reply"),
        ({"messages": asked, "reply": "x" * 100_000}, "reply"),
        ({"messages": [], "reply": "4"}, "messages"),
        ([1, 2], None),
    ]:
        status, error = post(server.url, body, path="/v1/inspect")
        assert status == 400, (body, error)
        assert error["error"]["param"] == param and error["error"]["message"]


CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.e2e
@pytest.mark.skipif(
    not (CHROMEDRIVER and CHROMIUM), reason="needs chromium and chromium-driver (apt)"
)
def test_the_web_pages_toggle_shows_inside_a_reply(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_web_page import open_browser

    browser = open_browser()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 30)
        browser.find_element(By.ID, "prompt").send_keys("what is 2+2?", Keys.ENTER)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".inside-toggle"))
        assert browser.find_element(By.CSS_SELECTOR, ".message.assistant").text == "4"
        browser.find_element(By.CSS_SELECTOR, ".inside-toggle").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".inside table tr"))
        rows = browser.find_elements(By.CSS_SELECTOR, ".inside table tr")
        assert len(rows) == inspection.TOP and rows[0].text.startswith('"4"')
        picks = browser.find_elements(By.CSS_SELECTOR, ".inside .pick span")
        assert "".join(p.text for p in picks) == "4</assistant>"
        picks[1].click()  # "<": what it writes after the reply
        wait.until(
            lambda b: b.find_elements(By.CSS_SELECTOR, ".inside .pick span.on")[0].text == "<"
        )
        assert browser.find_elements(By.CSS_SELECTOR, ".inside table tr")[0].text.startswith('"<"')
    finally:
        browser.quit()


@pytest.mark.e2e
@pytest.mark.skipif(
    not (CHROMEDRIVER and CHROMIUM), reason="needs chromium and chromium-driver (apt)"
)
def test_the_inspect_page_works_opened_from_disk(trained_workdir, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.test_web_page import open_browser

    workdir = tmp_path / "w"
    shutil.copytree(trained_workdir, workdir)
    result = run_main("--mode=inspect", f"--workdir={workdir}", "--prompt=what is 2+2?")
    assert result.returncode == 0, result.stderr
    browser = open_browser()
    try:
        browser.get((workdir / "inspect" / "inspect.html").as_uri())
        odds = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "table tr")][1:]
        assert len(odds) == inspection.TOP and odds[0].startswith('"4"')
        picks = browser.find_elements(By.CSS_SELECTOR, ".reply span")
        assert "".join(p.text for p in picks) == "4</assistant>"
        picks[1].click()
        odds = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "table tr")][1:]
        assert odds[0].startswith('"<"')
        assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        browser.quit()
