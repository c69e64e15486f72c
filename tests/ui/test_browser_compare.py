"""The Compare tab in a real browser, on the session's identity run: its adapter picked, send a prompt, watch both
columns fill token by token; then a blind A/B vote that shows up in the run's win rate on the Runs tab, and the
run's held-out evaluation.

Screenshots: test-artifacts/compare-side-by-side.png, compare-blind.png, compare-evaluation.png.
"""
import re

from app_server import app_server
from browser import DEFAULT_TIMEOUT_MS, browser_page, screenshot
from playwright.sync_api import expect

from conftest import IDENTITY_MARKERS, copy_home

ANSWER_MS = 120_000  # the first message loads the model

# Records every text each chat column shows, as it changes: streaming means many growing texts, not one.
WATCH_COLUMNS = """() => {
  window.seen = {base: [], adapter: []};
  for (const [key, id] of [["base", "chat-base"], ["adapter", "chat-adapter-1"]]) {
    const column = document.getElementById(id);
    new MutationObserver(() => {
      const bot = column.querySelectorAll('[data-testid="bot"]');
      const text = bot.length ? bot[bot.length - 1].innerText.trim() : "";
      const seen = window.seen[key];
      if (text && text !== seen[seen.length - 1]) seen.push(text);
    }).observe(column, {subtree: true, childList: true, characterData: true});
  }
}"""


def _without_redraws(texts: list[str]) -> list[str]:
    """The texts a column showed, less the glimpses of a bubble being redrawn: a browser starved of CPU can be seen
    mid-redraw holding only the first words of what it showed before ('I am W', 'I', 'I am Wren')."""
    kept: list[str] = []
    for text in texts:
        if not (kept and len(text) < len(kept[-1]) and kept[-1].startswith(text)):
            kept.append(text)
    return kept


def test_side_by_side_streams_both_columns_and_a_blind_vote_counts(identity_home, tmp_path):
    expect.set_options(timeout=DEFAULT_TIMEOUT_MS)
    home, run_id = copy_home(identity_home, tmp_path / "home")
    with app_server(tmp_path, PHI3LORA_HOME=str(home)) as server, browser_page() as page:
        page.goto(server.url)
        page.get_by_role("tab", name="4 · Compare").click()

        # The identity run's adapter, the newest, is picked already: a second column, named after the run.
        adapter_column = page.locator("#chat-adapter-1")
        expect(adapter_column).to_be_visible()
        expect(adapter_column).to_contain_text(run_id)

        page.evaluate(WATCH_COLUMNS)
        page.locator("#compare-prompt textarea").fill("Who are you?")
        page.locator("#compare-prompt textarea").press("Enter")
        base_answer = page.locator("#chat-base [data-testid='bot']").last
        adapter_answer = adapter_column.locator("[data-testid='bot']").last
        expect(adapter_answer).to_contain_text(re.compile("|".join(map(re.escape, IDENTITY_MARKERS))),
                                               timeout=ANSWER_MS)
        expect(base_answer).to_contain_text("Phi-3 Demo")
        # shown once both answers are whole: on shared cores, well after the adapter's first words
        expect(page.get_by_text(f"In memory: demo_model with adapters {run_id}.")).to_be_visible(timeout=ANSWER_MS)
        seen = page.evaluate("window.seen")
        for column in ("base", "adapter"):  # each column showed its answer growing, several tokens at a time at most
            texts = _without_redraws(seen[column])
            assert len(texts) >= 4, (column, texts)
            assert all(b.startswith(a[: max(1, len(a) - 2)]) for a, b in zip(texts, texts[1:])), (column, texts)
        screenshot(page, "compare-side-by-side")

        # Blind A/B: the base against the adapter, in random order; vote, then see who was who.
        page.get_by_role("tab", name="Blind A/B").click()
        page.locator("#blind-prompt textarea").fill("Who are you?")
        page.get_by_role("button", name="Generate A and B").click()
        expect(page.get_by_text("Which answer is better?")).to_be_visible(timeout=ANSWER_MS)
        a_text = page.locator("#blind-a textarea").input_value()
        adapter_is_a = any(m in a_text for m in IDENTITY_MARKERS)
        page.get_by_role("button", name="A is better").click()
        result = page.locator("#blind-result")
        expect(result).to_contain_text(f"Run {run_id}: win rate {100 if adapter_is_a else 0}% over 1 vote")
        expect(result).to_contain_text(f"A was {run_id if adapter_is_a else 'the base model'}")
        expect(page.get_by_role("button", name="A is better")).to_be_disabled()  # one vote per pair
        screenshot(page, "compare-blind")

        # Held-out evaluation of the run: base against adapted on its 9 eval conversations, with a CSV.
        page.get_by_role("tab", name="Held-out evaluation").click()
        expect(page.get_by_label("Run", exact=True)).to_have_value(run_id)
        page.get_by_role("button", name="Evaluate").click()
        summary = page.locator("#evaluation-summary")
        expect(summary).to_contain_text("on 9 held-out conversations", timeout=ANSWER_MS)
        expect(summary.get_by_role("row", name=re.compile(r"^adapted"))).to_be_visible()
        expect(summary).to_contain_text("On everyday chat (36 general conversations")  # the forgetting check
        csv_link = page.get_by_role("link", name=f"phi3lora-{run_id}-evaluation.csv")
        download = csv_link.evaluate("a => a.href")  # the link's absolute URL (its href is relative)
        csv_text = page.request.get(download).text()
        assert csv_text.lstrip("\ufeff").startswith("prompt,reference,base,adapted"), csv_text[:200]
        assert len(csv_text.strip().splitlines()) >= 9  # a header and 8 sample rows
        screenshot(page, "compare-evaluation")

        # The Runs table shows the win rate beside the run.
        page.get_by_role("tab", name="3 · Runs").click()
        row = page.get_by_role("row", name=re.compile(run_id))
        expect(row.get_by_text(f"{100 if adapter_is_a else 0}% of 1")).to_be_visible()
