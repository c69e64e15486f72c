"""Attacks through files: an adapter zip that unpacks to far more than an adapter can weigh, uploads straight to
Gradio's cache that would fill the disk, and download links that anyone holding the URL could use for ever.

Each test reproduces the attack as the security review made it: zips built here (one whose headers lie about
its sizes; the same bomb uploaded on the page, and offered from the hub), many anonymous POSTs to
/gradio_api/upload against the real server (python app.py), and download links fetched with no cookies, with
another user's cookies, after their lifetime, and behind a Hugging Face (OAuth) sign-in.
"""
import json
import os
import re
import secrets
import shutil
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urljoin

import httpx
import pytest
from app_server import app_server, page_event

from conftest import copy_home
from phi3lora.inference import service
from phi3lora.policy import limits
from phi3lora.errors import UserError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "config.yaml")
MB = 1024 * 1024


# --- 5. adapter zip bombs ---------------------------------------------------------------------------------------

@pytest.fixture
def home(finished_copy, monkeypatch):
    root, run_id = finished_copy
    for name in ("PHI3LORA_MAX_ADAPTER_MB", "PHI3LORA_ADAPTER_QUOTA_MB", "PHI3LORA_ADAPTER_HOURS"):
        monkeypatch.delenv(name, raising=False)
    return root, root / "runs" / run_id


def adapter_zip(run: Path, target: Path, padding_mb: int = 0) -> Path:
    """The run's adapter zipped as a user would, its weights followed by `padding_mb` MB of zeros (which deflate
    about a thousandfold: the bomb)."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in ADAPTER_FILES:
            if name != "adapter_model.safetensors":
                archive.write(run / name, name)
        with archive.open("adapter_model.safetensors", "w") as weights:
            weights.write((run / "adapter_model.safetensors").read_bytes())
            for _ in range(padding_mb):
                weights.write(bytes(MB))
    return target


def lie_about_size(archive: Path, member: str, claimed: int) -> None:
    """Rewrite the uncompressed size `member` declares, in its local header and in the central directory."""
    data = bytearray(archive.read_bytes())
    name = member.encode()
    local = data.find(b"PK\x03\x04")
    while data[local + 30:local + 30 + len(name)] != name:
        local = data.find(b"PK\x03\x04", local + 4)
    struct.pack_into("<I", data, local + 22, claimed)
    central = data.find(b"PK\x01\x02")
    while data[central + 46:central + 46 + len(name)] != name:
        central = data.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, central + 24, claimed)
    archive.write_bytes(bytes(data))


def uploaded_files(root: Path) -> list[Path]:
    folder = root / "adapters"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def test_an_adapter_zip_bomb_is_refused_while_it_streams(home, tmp_path):
    root, run = home
    bomb = adapter_zip(run, tmp_path / "bomb.zip", padding_mb=48)
    assert bomb.stat().st_size < MB  # under 1 MB on the wire, 48 MB unpacked
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="adapter_model.safetensors unpacks to more than") as refused:
            service.import_adapter_zip(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(refused.value)
    assert "rank 16" in message and str(root) not in message, message
    assert peak < 16 * MB, f"the import held {peak / MB:.0f} MB in memory"
    assert uploaded_files(root) == [], "a refused adapter left files behind"


def test_a_zip_whose_headers_lie_about_sizes_is_refused(home, tmp_path):
    root, run = home
    bomb = adapter_zip(run, tmp_path / "liar.zip", padding_mb=48)
    lie_about_size(bomb, "adapter_model.safetensors", (run / "adapter_model.safetensors").stat().st_size)
    with zipfile.ZipFile(bomb) as archive:  # what the headers say: the size of the real adapter
        assert archive.getinfo("adapter_model.safetensors").file_size < 1.1 * MB
    with pytest.raises(UserError, match="liar.zip"):
        service.import_adapter_zip(bomb)
    assert uploaded_files(root) == [], "a refused adapter left files behind"


def test_an_adapter_for_an_unknown_base_is_held_to_the_operators_limit(home, tmp_path, monkeypatch):
    root, run = home
    folder = tmp_path / "unknown"
    folder.mkdir()
    config = json.loads((run / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someone/else"}))
    bomb = folder / "unknown.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(folder / "adapter_config.json", "adapter_config.json")
        archive.writestr("adapter_model.safetensors", bytes(3 * MB))
    monkeypatch.setenv("PHI3LORA_ALLOWED_BASE_MODELS", "demo,someone/else")  # allowed, but of no shape known here
    monkeypatch.setenv("PHI3LORA_MAX_ADAPTER_MB", "2")
    with pytest.raises(limits.LimitExceeded, match=re.escape("this server's limit of 2 MB (PHI3LORA_MAX_ADAPTER_MB)")):
        service.import_adapter_zip(bomb)
    assert uploaded_files(root) == []


def test_uploaded_adapters_are_kept_per_user_within_a_quota(home, tmp_path, monkeypatch):
    root, run = home
    monkeypatch.setenv("PHI3LORA_ADAPTER_QUOTA_MB", "2")  # one identity adapter (about 1.1 MB) fits, not two
    first = service.import_adapter_zip(adapter_zip(run, tmp_path / "first.zip"), "user:alice")
    quota = r"your uploaded adapters.* \(PHI3LORA_ADAPTER_QUOTA_MB\)"
    with pytest.raises(limits.LimitExceeded, match=quota) as refused:
        service.import_adapter_zip(adapter_zip(run, tmp_path / "second.zip"), "user:alice")
    assert "2 MB" in str(refused.value) and str(root) not in str(refused.value)
    bobs = service.import_adapter_zip(adapter_zip(run, tmp_path / "second.zip"), "user:bob")  # alice's use is hers
    assert first.path.parent != bobs.path.parent
    assert "alice" not in str(first.path) and "bob" not in str(bobs.path)  # folders named by a hash, not the name
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name]  # the refused one is gone


def test_a_hub_adapter_heavier_than_its_config_allows_is_never_downloaded(home, tmp_path, monkeypatch):
    """The same bomb by the other door: a hub repository whose adapter_model.safetensors weighs 50 GB."""
    import huggingface_hub

    _, run = home
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    shutil.copyfile(run / "adapter_config.json", snapshot / "adapter_config.json")
    sizes = {"adapter_config.json": (snapshot / "adapter_config.json").stat().st_size,
             "adapter_model.safetensors": 50 * 1024**3}
    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", lambda self, repo_id, paths, **_: [
        SimpleNamespace(path=path, size=sizes[path]) for path in paths if path in sizes])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **_: str(snapshot / filename))

    def download_everything(*args, **kwargs):
        raise AssertionError("the 50 GB weights were downloaded")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download_everything)
    with pytest.raises(UserError, match="someone/huge: adapter_model.safetensors weighs more than .* rank 16"):
        service.download_hub_adapter("someone/huge")


def test_uploaded_adapters_expire(home, tmp_path):
    root, run = home
    old = service.import_adapter_zip(adapter_zip(run, tmp_path / "old.zip"))
    day_ago = time.time() - 25 * 3600
    os.utime(old.path, (day_ago, day_ago))
    new = service.import_adapter_zip(adapter_zip(run, tmp_path / "new.zip"))
    assert not old.path.exists(), "an adapter uploaded 25 hours ago is kept (PHI3LORA_ADAPTER_HOURS: 24)"
    assert new.path.is_dir()


# --- 6. Gradio's upload cache ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def open_space(tmp_path_factory):
    """A Space-like server that requires sign-in, visited by nobody signed in: Gradio's upload route is open."""
    folder = tmp_path_factory.mktemp("open-space")
    with app_server(folder, PHI3LORA_REQUIRE_LOGIN="1", PHI3LORA_MAX_UPLOAD_MB="0.5", PHI3LORA_CACHE_MAX_MB="1",
                    PHI3LORA_CACHE_SECONDS="3") as server:
        yield server


def upload(server, name: str, size: int) -> Path:
    response = httpx.post(f"{server.url}/gradio_api/upload", files={"files": (name, os.urandom(size))}, timeout=30)
    assert response.status_code == 200, response.text
    [path] = response.json()
    return Path(path)


def cache_bytes(server) -> int:
    return sum(p.stat().st_size for p in server.gradio_cache.rglob("*") if p.is_file())


def test_uploads_straight_to_gradio_cannot_fill_its_cache(open_space):
    for number in range(12):  # 12 x 300 KB, no event ever called: 3.6 MB against a 1 MB cap
        newest = upload(open_space, f"junk-{number}.bin", 300_000)
        assert cache_bytes(open_space) <= 1 * MB, f"after {number + 1} uploads"
        assert newest.is_file(), "the newest upload went first, not the oldest"


def test_cached_uploads_expire(open_space):
    path = upload(open_space, "left-behind.bin", 1000)
    assert path.is_file()
    deadline = time.monotonic() + 30
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not path.exists(), "an upload stayed in Gradio's cache past PHI3LORA_CACHE_SECONDS (3)"


# --- 7. download links ------------------------------------------------------------------------------------------

USERS = {"boss": "pw-boss-1", "alice": "pw-alice-2"}


@pytest.fixture(scope="module")
def downloads(finished_home, tmp_path_factory):
    """A Space-like server with password sign-in: "boss" owns the Space (and sees the identity run, which no user
    started), "alice" is allowed to train but does not own that run."""
    folder = tmp_path_factory.mktemp("downloads")
    home, run_id = copy_home(finished_home, folder / "home")
    temp = folder / "tmp"  # the server's temporary folder, where the app keeps the files it offers
    temp.mkdir()
    with app_server(folder, PHI3LORA_HOME=str(home), TMPDIR=str(temp),
                    PHI3LORA_USERS=",".join(f"{u}:{p}" for u, p in USERS.items()), PHI3LORA_REQUIRE_LOGIN="1",
                    PHI3LORA_OWNER="boss", PHI3LORA_ALLOWED_USERS="boss,alice") as server:
        yield server, run_id, temp


def login(url: str, user: str) -> httpx.Cookies:
    response = httpx.post(f"{url}/login", data={"username": user, "password": USERS[user]})
    assert response.status_code == 200, response.text
    return response.cookies


def page_events(url: str, cookies: httpx.Cookies, *events: tuple[str, list]) -> dict:
    """Run the events buttons of the page trigger, one after another in one session, as the browser does
    (queue/join, then the event stream); returns Gradio's process_completed message of the last."""
    config = httpx.get(f"{url}/config", cookies=cookies).json()
    session = secrets.token_hex(8)
    with httpx.Client(timeout=120, cookies=cookies) as http:
        for button, data in events:
            fn_index = page_event(config, lambda component, _: _label(component) == button, data)
            joined = http.post(f"{url}/gradio_api/queue/join", json={
                "data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})
            assert joined.status_code == 200, joined.text
            with http.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}) as stream:
                done = next(message for line in stream.iter_lines() if line.startswith("data:")
                            for message in [json.loads(line[5:])] if message.get("msg") == "process_completed")
    return done



def _label(component: dict) -> str | None:
    """What the page shows a component as: a button's text, any other component's label."""
    props = component.get("props", {})
    return props.get("value") if component.get("type") == "button" else props.get("label")

def link_in(done: dict, url: str) -> str:
    """The download link a page event returned: a file's URL, or the href of a link shown on the page."""
    assert done["success"], done
    found = []

    def visit(value):
        if isinstance(value, dict):
            if isinstance(value.get("url"), str):
                found.append(value["url"])
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)
        elif isinstance(value, str):
            found.extend(re.findall(r'href="([^"]+)"', value))

    visit(done["output"]["data"])
    assert len(found) == 1, found
    return urljoin(url + "/", found[0])


def offer(url: str, cookies: httpx.Cookies, what: str, run_id: str) -> str:
    """Make the page offer a download of the run (as the browser does: list the runs, pick it, press the button);
    returns the link."""
    if what == "adapter zip":
        events = [("Refresh", [[], None, None, None]), ("Download adapter (.zip)", [run_id])]
    else:
        events = [("Refresh list", [None, True, [], None, None, None]), ("Evaluate", [run_id, 2])]
    return link_in(page_events(url, cookies, *events), url)


DOWNLOADS = {"adapter zip": "-adapter.zip", "evaluation csv": "-evaluation.csv"}


def test_an_adapter_zip_bomb_uploaded_on_the_page_is_refused_and_removed(downloads, finished_home, tmp_path):
    server, _, _ = downloads
    run = finished_home / "runs" / (finished_home / "trained").read_text()
    bomb = adapter_zip(run, tmp_path / "bomb.zip", padding_mb=48)
    boss = login(server.url, "boss")
    uploaded = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("bomb.zip", bomb.read_bytes())},
                          cookies=boss)
    [cached] = uploaded.json()
    done = page_events(server.url, boss, ("Adapter zip (adapter_config.json + adapter_model.safetensors)",
                                          [{"path": cached, "meta": {"_type": "gradio.FileData"}}, {}, []]))
    assert done["success"] is False and "rank 16" in done["output"]["error"], done
    assert not Path(cached).exists(), "the refused zip stays in Gradio's cache"
    assert uploaded_files(server.home) == []


def test_a_download_link_follows_hugging_face_sign_in(home, tmp_path, monkeypatch):
    """On a Space the visitor signs in with Hugging Face (OAuth: the session's oauth_info), not a password."""
    from fastapi import FastAPI, Request
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.testclient import TestClient

    from phi3lora.ui import common, downloads as links

    _, run = home  # started by no user: only the Space's owner may see it
    for name, value in {"PHI3LORA_REQUIRE_LOGIN": "1", "PHI3LORA_OWNER": "boss",
                        "PHI3LORA_ALLOWED_USERS": "boss,alice"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(common, "DOWNLOADS", tmp_path / "downloads")
    target = common.download_path("samples.csv")
    target.write_text("prompt,reference\n")
    [href] = re.findall(r'href="([^"]+)"', links.offer(target, run.name).value)

    app = FastAPI(routes=links.routes())

    @app.get("/sign-in/{user}")
    def sign_in(user: str, request: Request):  # what Gradio's OAuth callback leaves in the session
        request.session["oauth_info"] = {"userinfo": {"preferred_username": user}}

    app.add_middleware(SessionMiddleware, secret_key="test")
    browser = TestClient(app)
    assert browser.get(f"/{href}").status_code == 404
    browser.get("/sign-in/alice")
    assert browser.get(f"/{href}").status_code == 404
    browser.get("/sign-in/boss")
    assert browser.get(f"/{href}").text == "prompt,reference\n"


@pytest.mark.parametrize("what", list(DOWNLOADS))
def test_a_download_link_serves_only_the_runs_owner_and_only_for_its_lifetime(downloads, what):
    server, run_id, temp = downloads
    suffix = DOWNLOADS[what]
    boss = login(server.url, "boss")
    link = offer(server.url, boss, what, run_id)
    assert httpx.get(link, cookies=boss).status_code == 200
    assert not list(server.gradio_cache.rglob(f"*{suffix}")), "a copy waits in Gradio's cache"

    assert httpx.get(link).status_code in (401, 403, 404), "served with no sign-in"
    assert httpx.get(link, cookies=login(server.url, "alice")).status_code in (401, 403, 404), \
        "served to a user who may not see the run"

    # Two hours later (every file the server wrote ages), and after the app made another download:
    two_hours_ago = time.time() - 7200
    for path in [*temp.rglob("*"), *server.gradio_cache.rglob("*")]:
        os.utime(path, (two_hours_ago, two_hours_ago))
    offer(server.url, boss, what, run_id)
    expired = httpx.get(link, cookies=boss)
    assert expired.status_code in (403, 404, 410), "served after its lifetime"
    assert "PHI3LORA_DOWNLOAD_SECONDS" in expired.text and str(temp) not in expired.text
