"""Load test: N visitors chatting on the Compare tab at once while one training run goes on.

    python bench/load.py --sessions 20 --seconds 120 [--url URL] [--max-new-tokens 16] [--out FILE.json]

Without --url it starts the app as tests/app_server.py does (python app.py: its own data root and port, no GPU,
the demo model) and stops it afterwards; with no finished run there, it first trains a short one so /compare has
an adapter. It then starts one long training run (/start_training on the identity sample), takes each session's
reference answer, releases the chat model (so the window opens cold, as after an idle release, and the first
requests of all sessions wait for one load), waits for the run's first step, runs the sessions for the window,
and cancels the run.

Each session is one visitor: one gradio_client.Client, so one session hash and its own gr.State on the server.
It repeats, until the window closes:
  compare  /compare (the named API) with the session's own prompt, streamed: time to the server starting on it
           (queue wait), to the first token and to the final answer. The answers must be the ones that prompt got
           before the load (greedy decoding repeats itself), under the keys the session asked for.
  chat     the Compare tab's Send, as the page sends it (its event on the queue, in this session). The multi-turn
           history lives in the page's Chatbots and travels with each event; the columns come from the session's
           `shown` gr.State (even sessions picked the adapter, odd ones only the base). Each returned history must
           be the session's own turns plus the new answer, in exactly its own columns, and a first turn must
           answer what /compare answered.
  upload   every few rounds, the Data tab's upload of a file named for the session, then its analysis: the
           summary must name that file (the dataset gr.State), and the file must land in the session's private
           upload folder (the upload_dir gr.State) beside only its own earlier uploads.
No response may carry another session's token. Queued requests are not failures; errors and timeouts are.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from typing import Any
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
IDENTITY = REPO / "phi3lora" / "samples" / "identity.jsonl"  # uploaded: a sample of the project's own

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

QUESTIONS = ["Who are you?", "What can you do?", "Give me three tips for staying healthy.", "What is a river?",
             "Describe a sunset.", "How do I bake bread?", "Name a famous painter.", "What is Python?",
             "Tell me a joke.", "Why is the sky blue?"]
FOLLOW_UPS = ["Tell me more.", "Say it in one sentence."]
CHAT_TURNS = 1 + len(FOLLOW_UPS)  # a session's conversation starts over after this many turns
UPLOAD_EVERY = 2  # rounds between a session's uploads (every session uploads in its first round)
TRAINING = {"model": {"base_model": "demo"}, "data": {"eval_size": 0},
            "training_config": {"logging_steps": 1, "eval_strategy": "no", "save_strategy": "no"}}
LONG_RUN = {**TRAINING, "training_config": {**TRAINING["training_config"], "max_steps": 100_000}}
SHORT_RUN = {**TRAINING, "training_config": {**TRAINING["training_config"], "max_steps": 12}}


@dataclass
class Request:
    kind: str  # compare, chat, upload, analyse
    session: int
    seconds: float  # to the final answer, queue wait included
    queued: float | None = None  # until the server started on it
    first_token: float | None = None  # streamed kinds: until the first text arrived
    error: str | None = None


class Session:
    """One visitor; every call goes through its own client (session hash)."""

    def __init__(self, index: int, url: str, adapter: str, max_new_tokens: int, timeout: float, folder: Path):
        self.index, self.adapter, self.max_new_tokens, self.timeout = index, adapter, max_new_tokens, timeout
        self.token = f"v{index:02d}{secrets.token_hex(3)}"
        self.prompt = f"{QUESTIONS[index % len(QUESTIONS)]} (visitor {self.token})"
        self.columns = ["base", adapter] if index % 2 == 0 else ["base"]
        self.folder = folder
        self.client = Client(url, verbose=False)
        self.events = {d.get("api_name"): d.get("id", i) for i, d in enumerate(self.client.config["dependencies"])}
        self.reference: dict[str, str] = {}  # /compare's answers to self.prompt before the load
        self.chats: list[list[dict]] = [[] for _ in self.columns]  # the Chatbots' values, as the page holds them
        self.uploads: list[str] = []
        self.requests: list[Request] = []
        self.violations: list[str] = []
        self.foreign: set[str] = set()  # every other session's token

    # ---- calls ------------------------------------------------------------------------------------------------
    def page_event(self, name: str, *args):
        """An event of the page that the API does not list, run as the browser runs it: by its index on the
        queue, in this session, so it reads and writes this session's gr.State."""
        fn_index = self.events[name]
        self.client.endpoints[fn_index].is_valid = True  # gradio_client refuses unlisted events; browsers don't
        return self.client.submit(*args, fn_index=fn_index)

    def by_label(self, name: str, values: dict[str, Any], chats: list[list[dict]]) -> list:
        """An event's inputs in the order the page's config gives them (a set of inputs is ordered by component id):
        each from `values` by its label, the Chatbots' histories in page order; gr.State stays on the server."""
        config = self.client.config
        dependency = next(d for i, d in enumerate(config["dependencies"]) if d.get("id", i) == self.events[name])
        components = {c["id"]: c for c in config["components"]}
        histories, args = iter(chats), []
        for component in (components[i] for i in dependency["inputs"]):
            if component["type"] == "chatbot":
                args.append(next(histories))
            elif component["type"] != "state":
                args.append(values[component["props"]["label"]])
        return args

    def timed(self, kind: str, job, has_text=None):
        """Wait for a submitted job, timing it; returns its result, or None after recording the failure."""
        start = time.perf_counter()
        request = Request(kind, self.index, 0.0)
        while not job.done():
            now = time.perf_counter() - start
            if request.queued is None and job.status().code in (Status.PROCESSING, Status.ITERATING):
                request.queued = now
            if has_text and request.first_token is None and any(has_text(o) for o in job.outputs()):
                request.first_token = now
            if now > self.timeout:
                job.cancel()
                request.error = f"no answer within {self.timeout:.0f} s"
                break
            time.sleep(0.05)  # gradio_client itself reads its messages every 50 ms
        result = None
        if request.error is None:
            try:
                result = job.result(timeout=5)
            except Exception as error:  # noqa: BLE001 - any failure of a request is counted and reported
                request.error = f"{type(error).__name__}: {error}"
        request.seconds = time.perf_counter() - start
        if request.error is None and has_text and request.first_token is None:
            request.first_token = request.seconds  # the whole answer came in one message
        self.requests.append(request)
        return result

    def violation(self, what: str) -> None:
        self.violations.append(f"session {self.index}: {what}")

    def check_foreign(self, kind: str, result) -> None:
        text = json.dumps(result, default=str)
        leaked = [token for token in self.foreign if token in text]
        if leaked:
            self.violation(f"a {kind} response carries the token of another session ({', '.join(leaked)})")

    # ---- setup, before the window -----------------------------------------------------------------------------
    def open_compare_tab(self) -> None:
        """What the page does when the Compare tab opens and the visitor picks adapters: fills this session's
        adapter choices, and sets its columns (the `shown` gr.State)."""
        self.page_event("refresh_choices", None, None, None, None).result(timeout=self.timeout)
        picked = [f"run:{run_id}" for run_id in self.columns[1:]]
        self.page_event("show_columns", picked, [], [], [], []).result(timeout=self.timeout)

    def take_reference(self) -> None:
        self.reference = self.client.predict(self.prompt, self.adapter, "", self.max_new_tokens, api_name="/compare")

    # ---- the actions ------------------------------------------------------------------------------------------
    def compare(self) -> None:
        job = self.client.submit(self.prompt, self.adapter, "", self.max_new_tokens, api_name="/compare")
        answers = self.timed("compare", job, has_text=lambda out: any(out.values()))
        if answers is None:
            return
        self.check_foreign("compare", answers)
        if answers != self.reference:
            self.violation(f"/compare answered {answers!r}, not what its own prompt gets ({self.reference!r})")

    def chat(self) -> None:
        turn = len(self.chats[0]) // 2
        prompt = self.prompt if turn == 0 else f"{FOLLOW_UPS[turn - 1]} (visitor {self.token})"
        hidden = [[]] * (4 - len(self.chats))
        sampling = {"greedy": True, "temperature": 0.7, "top-p": 0.9, "max new tokens": self.max_new_tokens, "seed": 0}
        values = {"Prompt (every column)": prompt, "System prompt (every column)": "", "4-bit base": False, **sampling}
        job = self.page_event("send", *self.by_label("send", values, [*self.chats, *hidden]))
        result = self.timed("chat", job, has_text=lambda out: isinstance(out[1], list) and bool(_turns(out[1])[-1][1]))
        if result is None:
            return
        self.check_foreign("chat", result)
        returned, unused = result[1:1 + len(self.columns)], result[1 + len(self.columns):]
        if any(isinstance(value, list) for value in unused):
            self.violation(f"Send filled columns this session never picked (it shows {self.columns})")
        for column, sent, value in zip(self.columns, self.chats, returned):
            history = _turns(sent)
            turns = _turns(value) if isinstance(value, list) else None
            if not turns or turns[:-1] != [*history, ("user", prompt)] or turns[-1][0] != "assistant":
                self.violation(f"the {column} column's history came back as {turns!r}, not this session's "
                               f"{[*history, ('user', prompt)]!r} and an answer")
                return
            # (word by word: gr.Chatbot dedents the text it shows)
            if turn == 0 and turns[-1][1].split() != self.reference[column].split():
                self.violation(f"the {column} column answered {turns[-1][1]!r} to this session's first prompt; "
                               f"/compare answers {self.reference[column]!r}")
        self.chats = list(returned) if turn + 1 < CHAT_TURNS else [[] for _ in self.columns]  # then Clear

    def upload(self) -> None:
        name = f"load-{self.token}-{len(self.uploads) + 1}.json"
        records = 1 + (self.index + len(self.uploads)) % 5
        path = self.folder / name
        path.write_text(json.dumps([{"instruction": f"Who is visitor {self.token}?", "input": "",
                                     "output": f"Visitor {self.token}, upload {len(self.uploads) + 1}."}] * records))
        if self.timed("upload", self.page_event("use_upload", handle_file(str(path)))) is None:
            return
        self.uploads.append(name)
        result = self.timed("analyse", self.page_event("analyse", "auto", "demo", 512, 0.1, ""))
        if result is None:
            return
        self.check_foreign("analyse", result)
        summary = result[0]
        if not summary.startswith(f"### {name}\n") or f"{records} records" not in summary:
            self.violation(f"the analysis after uploading {name} ({records} records) shows {summary[:80]!r}")

    def run(self, until: float) -> None:
        rounds = 0
        while time.monotonic() < until:
            self.compare()
            if rounds % UPLOAD_EVERY == 0 and time.monotonic() < until:
                self.upload()
            if time.monotonic() < until:
                self.chat()
            rounds += 1

    def check_upload_folder(self, uploads_root: Path) -> None:
        """Every upload of this session lies in one private folder that holds nothing else."""
        if not self.uploads:
            return
        mine = {p.parent for p in uploads_root.glob(f"*/load-{self.token}-*")}
        if len(mine) != 1:
            self.violation(f"its uploads lie in {len(mine)} folders, not in one private folder")
            return
        held = sorted(p.name for p in next(iter(mine)).iterdir())
        if held != sorted(self.uploads):
            self.violation(f"its upload folder holds {held}, not just its own uploads {sorted(self.uploads)}")


def _turns(history: list[dict]) -> list[tuple[str, str]]:
    """A Chatbot value as (role, text) pairs (Gradio sends a message's content as a list of parts)."""
    def text(content) -> str:
        if isinstance(content, list):
            return "".join(text(part) for part in content)
        return content.get("text", "") if isinstance(content, dict) else str(content)
    return [(m["role"], text(m["content"])) for m in history]


# --- the training run ------------------------------------------------------------------------------------------

def finished(info: dict) -> bool:
    return info["status"] not in ("queued", "running")


def wait_for(client: Client, run_id: str, done, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = client.predict(run_id, api_name="/run_status")
        if done(info) or time.monotonic() > deadline:
            return info
        time.sleep(1)


def find_adapter(client: Client, timeout: float) -> str:
    """The run id /compare answers with by default (the newest finished run); trains a short run when none."""
    try:
        return next(key for key in client.predict("Hello", "", "", 8, api_name="/compare") if key != "base")
    except AppError as error:
        if "No run has an adapter yet" not in str(error):
            raise
    run_id = client.predict(handle_file(str(IDENTITY)), None, json.dumps(SHORT_RUN), api_name="/start_training")
    info = wait_for(client, run_id, finished, timeout)
    if info["status"] != "completed":
        raise RuntimeError(f"the short run for an adapter ended {info['status']}: {info.get('message')}")
    return run_id


class TrainingWatch(threading.Thread):
    """Polls the run's status during the window: its step when the window opens and closes."""

    def __init__(self, client: Client, run_id: str):
        super().__init__(daemon=True)
        self.client, self.run_id, self.stop, self.samples = client, run_id, threading.Event(), []

    def run(self) -> None:
        while not self.stop.wait(3):
            self.sample()

    def sample(self) -> dict:
        info = self.client.predict(self.run_id, api_name="/run_status")
        self.samples.append((time.monotonic(), info["step"] or 0, info["status"]))
        return info


# --- the load ----------------------------------------------------------------------------------------------------

def run_load(url: str, sessions: int = 20, seconds: float = 120, max_new_tokens: int = 16, home: Path | None = None,
             timeout: float = 120, training_timeout: float = 300) -> dict:
    """Run the load against the app at `url` (its data root `home`, when known, for the upload-folder check) and
    return the figures (see summarise)."""
    control = Client(url, verbose=False)
    adapter = find_adapter(control, training_timeout)
    run_id = control.predict(handle_file(str(IDENTITY)), None, json.dumps(LONG_RUN), api_name="/start_training")
    watch = TrainingWatch(control, run_id)
    with tempfile.TemporaryDirectory(prefix="phi3lora-load-") as folder:
        visitors = _in_threads(lambda i: Session(i, url, adapter, max_new_tokens, timeout, Path(folder)),
                               range(sessions))
        try:
            for visitor in visitors:
                visitor.foreign = {other.token for other in visitors if other is not visitor}
            _in_threads(Session.open_compare_tab, visitors)
            for visitor in visitors:  # one at a time: each prompt's answer with nothing else running
                visitor.take_reference()
            # The window opens on a cold chat model (the page's "Release model memory"), as after an idle release:
            # the first requests of every session arrive together and wait for one load.
            visitors[0].page_event("release").result(timeout=timeout)
            started = wait_for(control, run_id, lambda i: (i["step"] or 0) >= 1 or finished(i), training_timeout)
            if started["status"] != "running":
                raise RuntimeError(f"the training run did not start: {started['status']} {started.get('message')}")
            before = watch.sample()
            watch.start()
            opened = time.monotonic()
            _in_threads(lambda v: v.run(opened + seconds), visitors)
            window = time.monotonic() - opened
            watch.stop.set()
            watch.join()
            after = watch.sample()
            if home is not None:
                for visitor in visitors:
                    visitor.check_upload_folder(Path(home) / "uploads")
        finally:
            for visitor in visitors:
                visitor.client.close()
    cancelled = control.predict(run_id, api_name="/cancel_training") if after["status"] == "running" else None
    ended = wait_for(control, run_id, finished, training_timeout)
    training = {"run": run_id, "adapter": adapter, "step_before": before["step"], "step_after": after["step"],
                "steps_in_window": after["step"] - before["step"], "status_in_window": after["status"],
                "cancel_answer": cancelled, "status_at_end": ended["status"],
                "statuses_seen": sorted({status for _, _, status in watch.samples})}
    return summarise(visitors, window, training)


def _in_threads(fn, items) -> list:
    """fn over items, one thread each; re-raises the first failure."""
    items = list(items)
    results, errors = [None] * len(items), []

    def call(i: int) -> None:
        try:
            results[i] = fn(items[i])
        except BaseException as error:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile, or None of nothing."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def _figures(requests: list[Request]) -> dict:
    def spread(values):
        values = [v for v in values if v is not None]
        return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values, default=None)}

    done = [r for r in requests if r.error is None]
    return {"requests": len(requests), "failures": len(requests) - len(done),
            "latency": spread(r.seconds for r in done), "queue_wait": spread(r.queued for r in done),
            "first_token": spread(r.first_token for r in done)}


def summarise(visitors: list[Session], window: float, training: dict) -> dict:
    requests = [r for v in visitors for r in v.requests]
    kinds = sorted({r.kind for r in requests}, key=["compare", "chat", "upload", "analyse"].index)
    every = _figures(requests)
    return {
        "sessions": len(visitors), "seconds": round(window, 1), **every,
        "throughput_per_s": round(len(requests) / window, 2) if window else None,
        "by_kind": {kind: _figures([r for r in requests if r.kind == kind]) for kind in kinds},
        "isolation_violations": [message for v in visitors for message in v.violations],
        "distinct_reference_answers": len({json.dumps(v.reference, sort_keys=True) for v in visitors}),
        "uploads": sum(len(v.uploads) for v in visitors),
        "training": training,
        "errors": [f"session {r.session} {r.kind}: {r.error}" for r in requests if r.error][:20],
    }


def table(result: dict) -> str:
    def s(value):
        return "-" if value is None else f"{value:.2f}"

    t = result["training"]
    lines = [(f"{result['sessions']} sessions for {result['seconds']} s; training run {t['run']}: step "
              f"{t['step_before']} -> {t['step_after']} ({t['steps_in_window']} steps in the window, "
              f"{t['status_in_window']}), then {t['status_at_end']}"),
             (f"{'kind':<8} {'requests':>8} {'failures':>8} {'p50 s':>7} {'p95 s':>7} {'max s':>7} "
              f"{'queue p50/p95 s':>16} {'1st token p50/p95 s':>20}")]
    for kind, f in [*result["by_kind"].items(), ("all", result)]:
        lines.append(f"{kind:<8} {f['requests']:>8} {f['failures']:>8} {s(f['latency']['p50']):>7} "
                     f"{s(f['latency']['p95']):>7} {s(f['latency']['max']):>7} "
                     f"{s(f['queue_wait']['p50']) + ' / ' + s(f['queue_wait']['p95']):>16} "
                     f"{s(f['first_token']['p50']) + ' / ' + s(f['first_token']['p95']):>20}")
    lines.append(f"throughput {result['throughput_per_s']} requests/s; {result['uploads']} uploads; "
                 f"{result['distinct_reference_answers']} distinct answers to the {result['sessions']} prompts; "
                 f"isolation violations: {len(result['isolation_violations'])}")
    lines += [f"  {message}" for message in result["isolation_violations"][:10] + result["errors"][:10]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--url", help="a running app (default: start one, with its own data root)")
    parser.add_argument("--home", type=Path, help="the running app's PHI3LORA_HOME, to check the upload folders")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    if args.url:
        result = run_load(args.url, args.sessions, args.seconds, args.max_new_tokens, args.home)
    else:
        from app_server import app_server

        # The chat and the trainer share the cores: half each, unless the caller chose
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 2) // 2))
        with tempfile.TemporaryDirectory(prefix="phi3lora-load-app-") as folder, \
                app_server(Path(folder), OMP_NUM_THREADS=threads) as server:
            result = run_load(server.url, args.sessions, args.seconds, args.max_new_tokens, server.home)
            result["server_alive"] = server.alive()
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
