"""The Blocks app: four tabs (Data, Train, Runs, Compare) and the API endpoints, wired to the core."""
from __future__ import annotations

import os

import gradio as gr
from starlette.middleware import Middleware

from .. import settings

from ..inference import adapter_zip
from . import compare_tab, data_tab, downloads, memory_view, runs_tab, train_tab
from .state import AppState
from .common import UploadCacheBound, prune_uploads, remove_folder, upload_cache_lifetime
from .visitors import policy

TITLE = "phi3lora: fine-tune Phi-3 with LoRA / QLoRA"


def _space_header() -> None:
    """On a Hugging Face Space: the sign-in button when training needs it, and a warning when runs live on the
    Space's own disk, which a restart wipes."""
    if not settings.on_space():
        return
    if policy().login_required and os.environ.get("OAUTH_CLIENT_ID"):  # set by Spaces whose card has hf_oauth
        gr.LoginButton()
    if not settings.is_set("PHI3LORA_HOME"):
        gr.Markdown(f"⚠️ **Runs are kept on this Space's own disk ({settings.data_root()}) and vanish when it "
                    "restarts.** Mount a storage bucket and set PHI3LORA_HOME to its path (README: Deploy as a "
                    "Space).", elem_id="storage-warning")


def build_app(state: AppState | None = None) -> gr.Blocks:
    """The app, its handlers closed over `state` (a new AppState unless given), which it keeps as
    `app.phi3lora_state` for whoever needs to reach it (tests, scripts)."""
    state = state or AppState()
    prune_uploads()
    adapter_zip.prune_expired()
    # Gradio's own clean-up gives every file of its cache a lifetime ($PHI3LORA_CACHE_SECONDS).
    with gr.Blocks(title=TITLE, delete_cache=upload_cache_lifetime()) as demo:
        gr.Markdown(f"## {TITLE}")
        _space_header()
        # Each visitor's uploads go to a private folder of their own, removed when their session ends.
        # (A callable initial value would add a public load endpoint, so the handlers create the folder.)
        upload_dir = gr.State(None, delete_callback=remove_folder)
        with gr.Tabs() as tabs:
            with gr.Tab("1 · Data"):
                data = data_tab.build()
            with gr.Tab("2 · Train"):
                train = train_tab.build()
            with gr.Tab("3 · Runs") as runs_item:
                runs = runs_tab.build()
            with gr.Tab("4 · Compare", id=compare_tab.COMPARE_TAB) as compare_item:
                compare = compare_tab.build(state)
        data_tab.wire(data, state, upload_dir, train.base_model, train.max_length)
        train_tab.wire(train, demo, data.dataset, data.data_format, data.drop_invalid, data.eval_size,
                       [data.samples.name, data.samples.maker], data.columns)
        runs_tab.wire(runs, runs_item, demo)
        compare_tab.wire(compare, compare_item, state, demo)
        # Compare now: the finished run on the Train tab, picked in Compare, which opens.
        train.view.compare_button.click(compare_tab.show_run, [train.view.on_view, compare.added],
                                        [compare.adapters, compare.chosen, tabs], api_visibility="private")
        # A started run appears in the Runs table at once.
        train.start_button.click(runs_tab.refresh, runs.run_pickers, [runs.table, *runs.run_pickers],
                                 api_visibility="private")
        with gr.Group(visible=False):  # API only: gradio_client and scripts call these by name
            data_tab.add_api(state)
            train_tab.add_api()
            memory_view.add_api()
            compare_tab.add_api(state)
    demo.queue(default_concurrency_limit=4)
    demo.phi3lora_state = state
    return demo


def app_kwargs() -> dict:
    """What Gradio's FastAPI app gets besides the Blocks (launch(app_kwargs=...)): the route that serves download
    links, and the bound on the total of Gradio's upload cache."""
    return {"routes": downloads.routes(), "middleware": [Middleware(UploadCacheBound)]}
