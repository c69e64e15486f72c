"""The web app end to end in a real browser: upload a dataset on the Data tab, train a tiny LoRA run of the demo
model on the Train tab and watch it finish, then download its adapter zip from the Runs tab.

The server is the real `python app.py` (app_server), the browser Debian's chromium (browser_page). Screenshots of
the three tabs go to test-artifacts/: data-tab.png, train-tab.png, runs-tab.png.
"""
import re
import zipfile

import yaml
from app_server import app_server
from browser import DEFAULT_TIMEOUT_MS, browser_page, screenshot
from playwright.sync_api import expect
from conftest import REPO

IDENTITY = REPO.parent / "shared" / "datasets" / "identity.json"
MAX_STEPS = 8
ANALYSIS_MS = 90_000  # the first analysis loads the tokenizer
TRAINING_MS = 300_000  # queue, model load and 8 steps on two shared cores: 10-60 s, with room to spare


def choose(page, label: str, option: str) -> None:
    """Pick an option of a Gradio dropdown: its listbox is the one the combobox names in aria-controls."""
    box = page.get_by_label(label, exact=True)
    box.click()
    page.locator(f"#{box.get_attribute('aria-controls')}").get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option)


def test_upload_train_and_download_the_adapter_in_the_browser(tmp_path):
    expect.set_options(timeout=DEFAULT_TIMEOUT_MS)  # Playwright's 5 s is short on two shared cores
    with app_server(tmp_path) as server, browser_page() as page:
        page.goto(server.url)

        # 1. Data tab: upload identity.json, see it read as 91 alpaca records and rendered in Phi-3's template.
        upload = page.locator(".block", has=page.get_by_text("Upload a dataset (")).get_by_test_id("file-upload")
        upload.set_input_files(IDENTITY)
        expect(page.get_by_role("heading", name="identity.json")).to_be_visible(timeout=ANALYSIS_MS)
        expect(page.get_by_text("format alpaca · 91 records · 91 usable conversations")).to_be_visible()
        # The textbox's <label> also holds its Copy button, which takes the label: find the textarea inside it.
        template = page.locator("label", has_text="Exactly what the model is trained on").locator("textarea")
        expect(template).to_have_value(re.compile(r"<\|user\|>.*<\|assistant\|>", re.DOTALL))
        # the token-length histogram has drawn its bars (the only bar chart on the page)
        expect(page.locator("svg .mark-rect path")).not_to_have_count(0)
        screenshot(page, "data-tab")

        # 2. Train tab: LoRA on the demo model, 8 steps of 4 conversations, a loss point every step, no mid-run
        # eval or checkpoints.
        page.get_by_role("tab", name="2 · Train").click()
        page.get_by_role("radio", name="LoRA", exact=True).check()
        page.get_by_text("Advanced settings").click()
        batch = page.get_by_label("per device train batch size", exact=True)
        batch.fill("2")
        batch.press("Tab")  # and leaves it, as a person does: once, under load, the base-model event saw the default
        expect(batch).to_have_value("2")
        choose(page, "base model", "demo")
        expect(batch).to_have_value("2")  # a value typed in the form survives a change of base model
        batch.fill("4")
        page.get_by_label("max steps", exact=True).fill(str(MAX_STEPS))
        page.get_by_label("logging steps", exact=True).fill("1")
        choose(page, "eval strategy", "no")
        choose(page, "save strategy", "no")
        page.get_by_role("button", name="Start training").click()

        header = page.get_by_role("heading", name=re.compile(r"^Run .* · (completed|failed|cancelled|interrupted)$"))
        expect(header).to_be_visible(timeout=TRAINING_MS)
        expect(header).to_have_text(re.compile(r" · completed$"))  # a failed run fails here, its reason on screen
        run_id = header.locator("code").inner_text()
        ran = yaml.safe_load((server.home / "runs" / run_id / "config.yaml").read_text())  # what the form sent
        assert (ran["model"]["base_model"], ran["model"]["load_in_4bit"]) == ("demo", False)
        asked = {"max_steps": MAX_STEPS, "per_device_train_batch_size": 4, "logging_steps": 1,
                 "eval_strategy": "no", "save_strategy": "no"}
        assert {key: ran["training_config"][key] for key in asked} == asked
        expect(page.get_by_text("LoRA on identity.json, base demo · completed")).to_be_visible()
        expect(page.get_by_text(re.compile(rf"^Step {MAX_STEPS} / {MAX_STEPS} · "))).to_be_visible()
        expect(page.locator("progress")).to_have_attribute("value", str(MAX_STEPS))
        # The loss plot (vega SVG) labels each point "step: N; loss: X; split: train|eval": a train point every
        # step, drawn as one line through all of them; and the final eval of the 10% eval split (eval_strategy
        # "no" skips only the mid-run ones), which is in the plot's data but, a line of one point, draws nothing.
        points = [(step, "train") for step in range(1, MAX_STEPS + 1)] + [(MAX_STEPS, "eval")]
        for step, split in points:
            expect(page.locator(f'[aria-label^="step: {step}; loss: "][aria-label$="; split: {split}"]').first
                   ).to_be_attached()
        train_line = page.locator('.mark-line path[aria-label$="; split: train"]')
        expect(train_line).to_have_attribute("d", re.compile(rf"^M[^L]*(L[^L]*){{{MAX_STEPS - 1}}}$"))
        screenshot(page, "train-tab")

        # 3. Runs tab: the run is listed as completed; its adapter downloads as a zip holding the PEFT files.
        page.get_by_role("tab", name="3 · Runs").click()
        expect(page.get_by_role("row").filter(has_text=run_id)).to_contain_text("completed")
        expect(page.get_by_label("Run", exact=True)).to_have_value(run_id)
        page.get_by_role("button", name="Download adapter (.zip)").click()
        link = page.locator(f'a[download="phi3lora-{run_id}-adapter.zip"]')
        with page.expect_download() as download:
            link.click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        with zipfile.ZipFile(saved) as archive:
            assert {"adapter_config.json", "adapter_model.safetensors"} <= set(archive.namelist())
            assert archive.testzip() is None
        screenshot(page, "runs-tab")
