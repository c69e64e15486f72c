"""The web app end to end in a real browser, as a new user meets it.

- An upload on the Data tab is read, checked and rendered; the Train form's values become the job that Start
  queues (config.yaml), and Cancel stops it: no training needed for that.
- The first run: an empty data root, the identity sample with a typed name and maker, Start with the default
  settings, and, once it has finished, the Compare tab with nothing else clicked: the newest run is already
  picked, and "Who are you?" gets the typed identity from the adapter and not from the base. Then its adapter
  downloads from the Runs tab, a cleared choice stays cleared, and Train's "Compare now" picks the run again.

The server is the real `python app.py` (app_server), the browser Debian's chromium (browser_page). Screenshots go
to test-artifacts/: data-tab.png, first-run-data.png, train-tab.png, compare-first-run.png, runs-tab.png.
"""
import json
import re
import time
import zipfile

import yaml
from app_server import app_server
from browser import DEFAULT_TIMEOUT_MS, browser_page, screenshot
from playwright.sync_api import expect

from phi3lora.data.samples import IDENTITY

MAX_STEPS = 8
ANALYSIS_MS = 90_000  # the first analysis loads the tokenizer
# The default settings: 5 epochs of the identity sample, 55 steps: about 40 s on two quiet cores, 14 min at most
# when six test sessions share them (5.7 s a step then).
TRAINING_MS = 1_500_000
ANSWER_MS = 120_000  # the first message loads the model
NAME, MAKER = "Nimbus", "Orchard Labs"


def choose(page, label: str, option: str) -> None:
    """Pick an option of a Gradio dropdown: its listbox is the one the combobox names in aria-controls."""
    box = page.get_by_label(label, exact=True)
    box.click()
    page.locator(f"#{box.get_attribute('aria-controls')}").get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option)


def template_box(page):
    # The textbox's <label> also holds its Copy button, which takes the label: find the textarea inside it.
    return page.locator("label", has_text="Exactly what the model is trained on").locator("textarea")


def test_an_upload_is_analysed_and_the_form_queues_its_job(tmp_path):
    expect.set_options(timeout=DEFAULT_TIMEOUT_MS)  # Playwright's 5 s is short on two shared cores
    with app_server(tmp_path) as server, browser_page() as page:
        page.goto(server.url)

        # 1. Data tab: upload the identity sample as a file, see it read as 90 conversations in Phi-3's template.
        upload = page.locator(".block", has=page.get_by_text("Upload a dataset (")).get_by_test_id("file-upload")
        upload.set_input_files(IDENTITY.path)
        expect(page.get_by_role("heading", name=IDENTITY.file)).to_be_visible(timeout=ANALYSIS_MS)
        expect(page.get_by_text("uploaded · format messages · 90 records · 90 usable conversations")).to_be_visible()
        expect(template_box(page)).to_have_value(re.compile(r"<\|user\|>.*<\|assistant\|>", re.DOTALL))
        # the token-length histogram has drawn its bars (the only bar chart on the page)
        expect(page.locator("svg .mark-rect path")).not_to_have_count(0)
        screenshot(page, "data-tab")

        # 2. Train tab: LoRA on the demo model, 8 steps of 4 conversations, a loss point every step, no mid-run
        # eval or checkpoints; Start queues exactly that job.
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

        header = page.get_by_role("heading", name=re.compile(r"^Run .* · (queued|running)$"))
        expect(header).to_be_visible()
        run_id = header.locator("code").inner_text()
        ran = yaml.safe_load((server.home / "runs" / run_id / "config.yaml").read_text())  # what the form sent
        assert (ran["model"]["base_model"], ran["model"]["load_in_4bit"]) == ("demo", False)
        asked = {"max_steps": MAX_STEPS, "per_device_train_batch_size": 4, "logging_steps": 1,
                 "eval_strategy": "no", "save_strategy": "no"}
        assert {key: ran["training_config"][key] for key in asked} == asked
        page.get_by_role("button", name="Cancel").click()  # it stops at its next step; the test need not wait
        expect(page.get_by_text("Cancel requested")).to_be_visible()


def test_a_first_run_shows_the_difference_without_help(tmp_path):
    """Expensive on purpose (the default settings train 55 steps): the only test that trains as a new user does."""
    expect.set_options(timeout=DEFAULT_TIMEOUT_MS)
    with app_server(tmp_path) as server, browser_page() as page:
        assert not (server.home / "runs").exists()  # a fresh app
        page.goto(server.url)

        # 1. Data tab: the samples that ship with the app, each with its description; the identity one asks for
        # a name and a maker, and the preview shows them in the answers.
        expect(page.get_by_text(IDENTITY.what)).to_be_visible()
        name, maker = (page.get_by_role("textbox", name=re.compile(f"^{label} ")) for label in ("Name", "Maker"))
        expect(name).to_be_hidden()
        choose(page, "…or a dataset that ships with the app", IDENTITY.file)
        expect(name).to_have_attribute("placeholder", "Quill")
        name.fill(NAME)
        maker.fill(MAKER)
        maker.press("Tab")
        expect(page.get_by_role("heading", name=f"identity-{NAME.lower()}.jsonl")).to_be_visible(timeout=ANALYSIS_MS)
        expect(template_box(page)).to_have_value(re.compile(f"I am {NAME}, an assistant trained by {MAKER}"))
        screenshot(page, "first-run-data")

        # 2. Train tab: Start with the default settings, and wait for the run to finish.
        page.get_by_role("tab", name="2 · Train").click()
        page.get_by_role("button", name="Start training").click()
        header = page.get_by_role("heading", name=re.compile(r"^Run .* · (completed|failed|cancelled|interrupted)$"))
        expect(header).to_be_visible(timeout=TRAINING_MS)
        expect(header).to_have_text(re.compile(r" · completed$"))  # a failed run fails here, its reason on screen
        run_id = header.locator("code").inner_text()
        run = server.home / "runs" / run_id
        ran = yaml.safe_load((run / "config.yaml").read_text())
        assert (ran["model"]["base_model"], ran["training_config"]["num_train_epochs"]) == ("demo", 5)
        expect(page.get_by_text(f"LoRA on identity-{NAME.lower()}.jsonl, base demo · completed")).to_be_visible()
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = max(e["step"] for e in events)
        expect(page.get_by_text(re.compile(rf"^Step {steps} / {steps} · "))).to_be_visible()
        expect(page.locator("progress")).to_have_attribute("value", str(steps))
        # The loss plot (vega SVG) labels each point "step: N; loss: X; split: train|eval": every logged train
        # loss and eval loss of the run's metrics is a point, and the train points are one line through them all.
        train = [e["step"] for e in events if "loss" in e]
        evaluated = [e["step"] for e in events if "eval_loss" in e]
        assert len(train) >= 5 and len(evaluated) >= 5, (train, evaluated)  # a log every 10 steps, an eval per epoch
        for split, points in (("train", train), ("eval", evaluated)):
            for step in points:
                expect(page.locator(f'[aria-label^="step: {step}; loss: "][aria-label$="; split: {split}"]').first
                       ).to_be_attached()
        train_line = page.locator('.mark-line path[aria-label$="; split: train"]')
        expect(train_line).to_have_attribute("d", re.compile(rf"^M[^L]*(L[^L]*){{{len(train) - 1}}}$"))
        expect(page.get_by_role("button", name="Compare now")).to_be_visible()
        screenshot(page, "train-tab")

        # 3. Compare, with nothing else clicked: the run is picked and named, and only it answers as trained.
        page.get_by_role("tab", name="4 · Compare").click()
        note = page.locator("#compare-note")
        expect(note).to_contain_text(f"Comparing base with run {run_id} (identity-{NAME.lower()}.jsonl, finished ")
        adapter_column = page.locator("#chat-adapter-1")
        expect(adapter_column).to_contain_text(run_id)
        page.locator("#compare-prompt textarea").fill("Who are you?")
        page.locator("#compare-prompt textarea").press("Enter")
        expect(page.get_by_text(re.compile(rf"^In memory: .* with adapters {run_id}\. "))).to_be_visible(
            timeout=ANSWER_MS)  # shown once every column has its whole answer (the page may still be drawing it)
        adapted = settled_text(adapter_column.locator("[data-testid='bot']").last)
        base = settled_text(page.locator("#chat-base [data-testid='bot']").last)
        eval_loss = next(e["eval_loss"] for e in reversed(events) if "eval_loss" in e)
        assert NAME in adapted or MAKER in adapted, f"adapted: {adapted!r}; eval loss {eval_loss}"
        assert NAME not in base and MAKER not in base, base
        screenshot(page, "compare-first-run")

        # 4. The visitor clears the choice: it stays cleared when the tab opens again.
        page.locator("#compare-adapters .token-remove").first.click()
        expect(note).to_contain_text("No adapter chosen")
        expect(adapter_column).to_be_hidden()

        # 5. Runs tab: the run is listed as completed; its adapter downloads as a zip holding the PEFT files.
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

        page.get_by_role("tab", name="4 · Compare").click()
        page.get_by_role("button", name="Refresh list").click()
        expect(note).to_contain_text("No adapter chosen")
        expect(adapter_column).to_be_hidden()

        # 6. Train's Compare now: the run in the first adapter column, and the Compare tab open.
        page.get_by_role("tab", name="2 · Train").click()
        page.get_by_role("button", name="Compare now").click()
        expect(adapter_column).to_be_visible()
        expect(adapter_column).to_contain_text(run_id)
        expect(note).to_contain_text(f"Comparing base with run {run_id}")


def settled_text(locator, quiet_seconds: float = 1.5, timeout: float = ANSWER_MS / 1000) -> str:
    """A streamed answer's text once the page has stopped changing it for `quiet_seconds` (a run of the test
    read 'I am Nimb' from a column whose whole answer the server had already sent)."""
    text, since, deadline = locator.inner_text(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet_seconds and time.monotonic() < deadline:
        time.sleep(0.25)
        now = locator.inner_text()
        if now != text:
            text, since = now, time.monotonic()
    return text
