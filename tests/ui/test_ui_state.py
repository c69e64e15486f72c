"""The UI's state lives in the AppState build_app makes, not in module globals; handlers get their share of it,
and their typed form, through state.handler, which keeps what Gradio reads off a handler (gr.Request, streaming)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import SimpleNamespace

import gradio as gr
from gradio.helpers import special_args
from gradio.utils import get_function_params

import phi3lora.ui
from phi3lora.inference.service import ChatService
from phi3lora.ui import build_app, compare_tab, train_tab
from phi3lora.ui.state import AppState, TokenizerCache, handler, input_set, read
from phi3lora.ui.train_progress import RunOnView


def ui_modules():
    return [importlib.import_module(f"phi3lora.ui.{m.name}") for m in pkgutil.iter_modules(phi3lora.ui.__path__)]


def test_no_ui_module_holds_app_state():
    for module in ui_modules():
        for name, value in vars(module).items():
            assert not isinstance(value, (ChatService, TokenizerCache, AppState)), f"{module.__name__}.{name}"
            # A cache the module made itself (functools.lru_cache on its own function) is state; an imported
            # library function that happens to cache (urllib's urlsplit does) is not this module's.
            made_here = getattr(value, "__module__", None) == module.__name__
            assert not (made_here and hasattr(value, "cache_clear")), f"{module.__name__}.{name} is a module-level cache"


def test_each_app_has_its_own_state(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path))
    given = AppState()
    first, second = build_app(given), build_app()
    assert first.phi3lora_state is given
    assert isinstance(second.phi3lora_state, AppState) and second.phi3lora_state is not given
    assert second.phi3lora_state.chat is not given.chat and second.phi3lora_state.tokenizers is not given.tokenizers


def needs_request(service: ChatService, prompt: str, request: gr.Request):
    return service, prompt, request


def streams(service: ChatService, prompt: str, request: gr.Request):
    yield service, prompt, request


def test_a_bound_handler_keeps_what_gradio_reads_off_it():
    service = ChatService()
    for fn in (needs_request, streams):
        bound = handler(fn, service)
        assert list(inspect.signature(bound).parameters) == ["prompt", "request"]
        assert [name for name, *_ in get_function_params(bound)] == ["prompt"]  # the API's parameters
        assert inspect.isgeneratorfunction(bound) == inspect.isgeneratorfunction(fn)
        request = gr.Request()
        args, *_ = special_args(bound, ["hi"], request=request)  # Gradio finds the request by its type hint
        assert args == ["hi", request]
        result = bound(*args)
        assert (next(result) if inspect.isgenerator(result) else result) == (service, "hi", request)


def test_a_handler_with_a_form_gets_it_from_gradios_dict():
    with gr.Blocks():
        first, second = gr.Textbox(), [gr.Number(), gr.Number()]
    components = {"text": first, "numbers": second}
    assert input_set(components) == {first, *second}
    values = {first: "a", second[0]: 1, second[1]: 2}
    assert read(values, components) == {"text": "a", "numbers": [1, 2]}
    bound = handler(lambda service, form, request=None: (service, form), "state", form=lambda v: read(v, components))
    assert bound(values) == ("state", {"text": "a", "numbers": [1, 2]})


def test_the_train_form_is_read_into_a_train_form(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path))
    with gr.Blocks():
        tab = train_tab.build()
        dataset, fmt, drop, eval_size = gr.State(None), gr.Dropdown(), gr.Checkbox(), gr.Number()
    inputs = train_tab.TrainFormInputs(dataset, fmt, drop, eval_size, tab.method, tab.fields)
    values = {dataset: {"path": "d.jsonl"}, fmt: "auto", drop: False, eval_size: 0.1, tab.method: "qlora",
              **{component: f"v{i}" for i, component in enumerate(tab.fields.values())}}
    assert inputs.inputs() == set(values)
    form = inputs.read(values)
    assert (form.dataset, form.data_format, form.drop_invalid, form.eval_size, form.method) == (
        {"path": "d.jsonl"}, "auto", False, 0.1, "qlora")
    assert form.values == tuple(f"v{i}" for i in range(len(tab.fields)))  # in form_keys() order


def test_the_chat_form_is_read_with_or_without_the_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path))
    with gr.Blocks():
        tab = compare_tab.build(AppState())
    components = tab.chat_inputs(with_prompt=False)
    values = {c: None for c in input_set(components)} | {tab.system: "be brief", tab.greedy: True,
                                                          tab.max_new_tokens: 16, tab.chats[0]: [{"role": "user"}]}
    form = tab.chat_form(values)
    assert form.prompt == "" and form.system == "be brief" and form.chats[0] == [{"role": "user"}]
    assert form.sampling.greedy and form.sampling.max_new_tokens == 16 and len(form.chats) == len(tab.chats)
    assert tab.chat_form({**values, tab.prompt: "hi"}).prompt == "hi"


def test_the_run_on_view_remembers_what_it_showed():
    watcher = SimpleNamespace(run_id="20261123-170102-a1b2c3")  # a jobs.RunWatcher, as far as RunOnView goes
    on_view = RunOnView(watcher)
    assert on_view.run_id == "20261123-170102-a1b2c3" and on_view.shown_points is None
    assert vars(watcher) == {"run_id": "20261123-170102-a1b2c3"}  # nothing patched onto the watcher


def test_name_and_maker_edits_are_analysed_in_the_order_typed(tmp_path, monkeypatch):
    """The identity sample's Name and Maker fields: an edit made while the previous one is still being filled in and
    analysed runs after it, never beside it. With a listener per field, a preview of the name alone could land after
    the preview of name and maker (seen in the browser), and stay on screen."""
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path))
    app = build_app()
    labels = {id_: getattr(block, "label", None) for id_, block in app.blocks.items()}
    dependencies = app.config["dependencies"]
    [refill] = [d for d in dependencies if {labels.get(target) for target, _ in d["targets"]} == {"Name", "Maker"}]
    assert sorted(event for _, event in refill["targets"]) == ["blur", "blur", "submit", "submit"]
    [analyse] = [d for d in dependencies if d["trigger_after"] == refill["id"]]
    assert refill["trigger_mode"] == analyse["trigger_mode"] == "always_last"
    assert analyse["trigger_only_on_success"]
