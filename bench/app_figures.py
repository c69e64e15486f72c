"""Benchmark: two figures of the web app, each against a baseline measured in the same run.

    python bench/app_figures.py [--quick]

Rows:
  run_status p50 / p95   latency of `/run_status` while a run trains (ours) vs with the machine idle and a finished
                         run to report on (baseline). Each call is plain HTTP through Gradio's queue, as a page's
                         call is: POST /gradio_api/call/run_status, then read its event stream to `complete`, on
                         one keep-alive connection. Target: p95 while training at most 1.5x the idle p95.
  cold start to page     seconds from `python app.py` to the first HTTP 200 on `/` (ours) vs the same for a minimal
                         Gradio Blocks app, one Textbox, launched the same way (baseline). Median of 3 (quick: 1).
  cold start to API      the same, to the first answered API call through the queue: `/run_status` of an unknown
                         id (answered with its "no run" error) vs the baseline's `/echo`.
The app runs as tests/app_server.py starts it: its own data root and port, no GPU, the demo model.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
IDENTITY = REPO / "phi3lora" / "samples" / "identity.jsonl"  # uploaded: a sample of the project's own
NO_IDENTITY = (None, None)  # /start_training's Name and Maker: a raw call sends every input

import httpx
import psutil
from app_server import app_server, launch, stop
from load import percentile  # nearest rank, as the load test reports it

P95_TARGET = 1.5
BLOCK = 20  # calls per block; idle and training blocks alternate
UNKNOWN_RUN = "20000101-000000-000000"  # a well-formed id no data root holds
MINIMAL_APP = """import gradio as gr
with gr.Blocks() as demo:
    box = gr.Textbox()
    box.submit(lambda text: text, box, box, api_name="echo")
demo.launch(ssr_mode=False)
"""


def settings(**training) -> str:
    return json.dumps({"model": {"base_model": "demo"}, "training_config": {"save_strategy": "no", **training}})


SMALL_STEPS = {"per_device_train_batch_size": 2, "max_length": 128}  # a finished run to report on, made quickly
FINISHED_RUN = {quick: settings(max_steps=20 if quick else 40, logging_steps=1, eval_strategy="steps", eval_steps=5,
                                **SMALL_STEPS) for quick in (True, False)}
LONG_RUN = settings(max_steps=100_000, logging_steps=1, eval_strategy="no")


# --- calls through the queue ---------------------------------------------------------------------------------

def call(client: httpx.Client, api: str, *data) -> tuple[str, object]:
    """One API call as a page makes it: join the queue, then follow the event stream to its end.
    Returns ("complete" or "error", the data of the last event)."""
    event_id = client.post(f"/gradio_api/call/{api}", json={"data": list(data)}).raise_for_status().json()["event_id"]
    kind = None
    with client.stream("GET", f"/gradio_api/call/{api}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("complete", "error"):
                payload = json.loads(line[6:])
                return kind, payload[0] if kind == "complete" else payload
    raise RuntimeError(f"/{api}: the event stream ended without an answer")


def upload(client: httpx.Client, path: Path) -> dict:
    """A file as a page uploads it, for one call (the app moves each upload out of Gradio's cache once used)."""
    with path.open("rb") as f:
        cached = client.post("/gradio_api/upload", files={"files": (path.name, f)}).raise_for_status().json()[0]
    return {"path": cached, "meta": {"_type": "gradio.FileData"}}


def answer(client: httpx.Client, api: str, *data):
    kind, result = call(client, api, *data)
    if kind != "complete":
        raise RuntimeError(f"/{api} {data}: {result}")
    return result


def run_status(client: httpx.Client, run_id: str) -> dict:
    return answer(client, "run_status", run_id)


def wait_for(client: httpx.Client, run_id: str, done, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = run_status(client, run_id)
        if done(info):
            return info
        if time.monotonic() > deadline or info["status"] not in ("queued", "running"):
            raise RuntimeError(f"run {run_id} did not get there within {timeout:.0f}s: {info}")
        time.sleep(0.5)


def timed_calls(client: httpx.Client, run_id: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        run_status(client, run_id)
        times.append(time.perf_counter() - start)
    return times


def idle_and_training_latencies(client: httpx.Client, finished: str, training: str, trainer: int, n: int):
    """n calls on the finished run with the trainer paused (SIGSTOP to its process group: the machine as if no
    run trained) and n on the training run while it trains, in alternating blocks: this machine is shared, and
    whatever else loads it then hits both sides alike."""
    for run_id in (finished, training):  # warm the connection and the handler
        timed_calls(client, run_id, 3)
    idle, busy = [], []
    for block in range(0, n, BLOCK):
        size = min(BLOCK, n - block)
        os.killpg(trainer, signal.SIGSTOP)
        try:
            time.sleep(0.3)  # its threads off the cores
            idle += timed_calls(client, finished, size)
        finally:
            os.killpg(trainer, signal.SIGCONT)
        time.sleep(0.5)  # back at full speed
        busy += timed_calls(client, training, size)
    return idle, busy


def summary(times: list[float]) -> str:
    return (f"p50 {percentile(times, 50) * 1000:.1f} ms, p95 {percentile(times, 95) * 1000:.1f} ms, "
            f"max {max(times) * 1000:.1f} ms")


def run_status_latency(quick: bool, **env: str) -> list[dict]:
    """The two latency rows; `env` goes to the app (and so to its trainers), e.g. PHI3LORA_TRAINER_NICE="0"."""
    n = 60 if quick else 200
    with tempfile.TemporaryDirectory() as tmp, app_server(Path(tmp), **env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        finished = answer(client, "start_training", upload(client, IDENTITY), None, FINISHED_RUN[quick], *NO_IDENTITY)
        info = wait_for(client, finished, lambda i: i["status"] == "completed", timeout=300)
        training = answer(client, "start_training", upload(client, IDENTITY), None, LONG_RUN, *NO_IDENTITY)
        first = wait_for(client, training, lambda i: i["status"] == "running" and i["step"] >= 1, timeout=180)
        trainer_nice = psutil.Process(first["pid"]).nice()
        idle, busy = idle_and_training_latencies(client, finished, training, first["pid"], n)
        load = os.getloadavg()[0]
        after = run_status(client, training)
        answer(client, "cancel_training", training)
        if after["status"] != "running":
            raise RuntimeError(f"the training run stopped before the measurement ended: {after}")

    notes = (f"{n} sequential calls each, in alternating blocks of {BLOCK}; idle: finished run of {info['step']} "
             f"steps, trainer paused; training: steps {first['step']} to {after['step']} during the calls, trainer "
             f"nice {trainer_nice}; 1-min load average at the end {load:.1f} on {os.cpu_count()} cores; "
             f"idle {summary(idle)}; training {summary(busy)}")
    rows = []
    for q in (50, 95):
        baseline, ours = percentile(idle, q) * 1000, percentile(busy, q) * 1000
        target = q == 95
        rows.append({"figure": f"/run_status p{q} while training vs idle", "baseline": baseline, "ours": ours,
                     "unit": "ms", "ratio": ours / baseline, "target": f"<= {P95_TARGET}x" if target else None,
                     "met": ours / baseline <= P95_TARGET if target else None, "notes": notes})
    return rows


# --- cold start -----------------------------------------------------------------------------------------------

def cold_start(script: str | Path, api: str, data: list, timeout: float = 180) -> tuple[float, float]:
    """(seconds to the first 200 on `/`, seconds to the first answered call of `api`) from launching `script`."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        server = launch(Path(tmp), script)
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                page = _poll(server, start, timeout, lambda: client.get("/").status_code == 200)
                api_answer = _poll(server, start, timeout, lambda: call(client, api, *data)[0] is not None)
            return page, api_answer
        finally:
            stop(server)


def _poll(server, start: float, timeout: float, ready) -> float:
    while time.perf_counter() - start < timeout:
        if not server.alive():
            raise RuntimeError(f"{server.process.args} exited:\n{server.log_text()[-3000:]}")
        try:
            if ready():
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{server.process.args} did not answer within {timeout:.0f}s:\n{server.log_text()[-3000:]}")


def cold_start_rows(quick: bool) -> list[dict]:
    repeats = 1 if quick else 3
    ours, baseline = [], []
    with tempfile.TemporaryDirectory() as tmp:
        minimal = Path(tmp) / "minimal_app.py"
        minimal.write_text(MINIMAL_APP)
        for _ in range(repeats):  # interleaved, so drift in the machine's load hits both alike
            ours.append(cold_start("app.py", "run_status", [UNKNOWN_RUN]))
            baseline.append(cold_start(minimal, "echo", ["hello"]))
    rows = []
    for index, what in ((0, "HTTP 200 on /"), (1, "first API answer")):
        mine, base = (statistics.median(t[index] for t in runs) for runs in (ours, baseline))
        rows.append({"figure": f"cold start to {what}", "baseline": base, "ours": mine, "unit": "s",
                     "ratio": mine / base, "target": None, "met": None,
                     "notes": f"median of {repeats}; app.py: {_list(ours, index)}; minimal Blocks: "
                              f"{_list(baseline, index)}" + ("; API: /run_status vs /echo" if index else "")})
    return rows


def _list(times: list[tuple[float, float]], index: int) -> str:
    return ", ".join(f"{t[index]:.2f}" for t in times) + " s"


# --- entry points -----------------------------------------------------------------------------------------------

def run(quick: bool = False) -> list[dict]:
    return run_status_latency(quick) + cold_start_rows(quick)


def table(rows: list[dict]) -> str:
    lines = [f"{'figure':<42} {'baseline':>10} {'ours':>10} {'unit':>4} {'ratio':>6} {'target':>8} {'met':>5}  notes"]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"{r['figure']:<42} {r['baseline']:>10.2f} {r['ours']:>10.2f} {r['unit']:>4} {r['ratio']:>6.2f} "
                     f"{r['target'] or '-':>8} {met:>5}  {r['notes']}")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and one cold start each (~2 minutes)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
