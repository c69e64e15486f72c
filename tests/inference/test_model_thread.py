"""model_thread: every model computation of SideBySide runs on the process's one model thread."""
import threading

import pytest
from transformers import LogitsProcessor, LogitsProcessorList

from phi3lora.inference import engine
from phi3lora.inference.model_thread import in_model_thread, on_model_thread
from phi3lora.inference.engine import BASE, SideBySide

WHO = [{"role": "user", "content": "Who are you?"}]


def test_calls_run_there_return_there_and_raise_here():
    assert not in_model_thread()
    names = on_model_thread(lambda: [threading.current_thread().name, on_model_thread(in_model_thread)])
    assert names[0].startswith("phi3lora-model") and names[1] is True  # a call from the thread runs at once
    assert on_model_thread(lambda: threading.get_ident()) == on_model_thread(lambda: threading.get_ident())
    with pytest.raises(ZeroDivisionError):
        on_model_thread(lambda: 1 / 0)


class _Where(LogitsProcessor):
    def __init__(self):
        self.threads = set()

    def __call__(self, input_ids, scores):
        self.threads.add(threading.current_thread().name)
        return scores


def test_loading_and_generating_run_on_the_model_thread(monkeypatch):
    loaded_on = []
    real_load = engine.load_with_adapters
    monkeypatch.setattr(engine, "load_with_adapters",
                        lambda *a, **k: loaded_on.append(threading.current_thread().name) or real_load(*a, **k))
    s = SideBySide("demo")
    where = _Where()
    texts = s.generate([BASE, BASE], [WHO, WHO], max_new_tokens=4, logits_processor=LogitsProcessorList([where]))
    assert len(texts) == 2 and texts[0] == texts[1]
    assert [name.split("_")[0] for name in loaded_on] == ["phi3lora-model"]
    assert {name.split("_")[0] for name in where.threads} == {"phi3lora-model"}
    # reading a stream on the model thread would wait for itself: refused with a message instead
    with pytest.raises(RuntimeError, match="cannot be read on the model thread"):
        on_model_thread(s.generate, [BASE], [WHO], 4)
    s.release()
