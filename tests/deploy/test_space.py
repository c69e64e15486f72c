"""`python -m phi3lora space build|push`: the Space folder holds the app and nothing else, starts the app by itself,
and a push makes exactly the Hub calls it should, with the network replaced only at huggingface_hub's HTTP layer
(an httpx2 MockTransport answering as the Hub would: the hub cannot be reached here)."""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import httpx
import httpx2
import huggingface_hub
import pytest
import yaml
from app_server import AppServer, _stop, _wait_until_up, free_port
from conftest import REPO, run_cli
from huggingface_hub import SpaceHardware, constants
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook
from packaging.requirements import Requirement

from phi3lora.deploy.space import SpaceError, build_space
from phi3lora.deploy.space_hub import PushOptions, push_space

PUSH_TOKEN = "hf_" + "P" * 34  # the push token: may appear in the Authorization header to the Hub, nowhere else
SPACE_TOKEN = "hf_" + "r" * 34  # a read token the user gives the Space as a secret
JUNK = ["phi3lora_home/runs/x/adapter_model.safetensors", ".env", ".venv/lib/site.py", ".git/config",
        "phi3lora/__pycache__/cli.cpython-311.pyc", "phi3lora/ui/__pycache__/app.cpython-311.pyc",
        "phi3lora/stale.pyc", "phi3lora/.notes.py", "test-artifacts/shot.png", "runs/identity/adapter_config.json"]


# --- build ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the source tree with junk beside it: run data, a .env with a token, a venv, git, caches, tests."""
    root = tmp_path_factory.mktemp("source")
    for name in ("app.py", "requirements.txt", "README.md"):
        shutil.copy(REPO / name, root / name)
    for name in ("phi3lora", "space_config", "tests"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in JUNK:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"HF_TOKEN={PUSH_TOKEN}\n")
    return root


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    return build_space(tmp_path_factory.mktemp("built") / "space", source)


def front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def listing(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def test_card_front_matter_describes_a_gpu_gradio_space(built):
    card = front_matter(built.folder)
    assert card["sdk"] == "gradio"
    gradio = metadata.version("gradio")
    assert card["sdk_version"] == gradio == built.sdk_version
    requirement = next(Requirement(line) for line in (REPO / "requirements.txt").read_text().splitlines()
                       if line.startswith("gradio"))
    assert gradio in requirement.specifier, f"gradio {gradio} outside requirements.txt's {requirement}"
    assert card["python_version"] == "3.11" == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (built.folder / card["app_file"]).is_file()
    flavours = {flavour.value for flavour in SpaceHardware}
    assert card["suggested_hardware"] in flavours
    assert not card["suggested_hardware"].startswith(("cpu", "zero")), "training needs a dedicated GPU"
    assert card["hf_oauth"] is True and 480 <= card["hf_oauth_expiration_minutes"] <= 43200
    assert re.fullmatch(r"\d+[mh]", card["startup_duration_timeout"])
    assert "microsoft/Phi-3-mini-4k-instruct" in card["models"]
    assert set(card.get("preload_from_hub", [])) <= set(card["models"])
    colours = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
    assert card["colorFrom"] in colours and card["colorTo"] in colours
    assert card["title"] and card["emoji"] and card["license"] and card["tags"]
    assert 0 < len(card["short_description"]) <= 60  # the Hub's limit


def test_build_holds_the_app_and_nothing_else(built, source):
    files = listing(built.folder)
    assert files == built.files
    assert {"README.md", "app.py", "requirements.txt", "phi3lora/__init__.py", "phi3lora/ui/app.py",
            "phi3lora/demo_model/model.safetensors", "phi3lora/demo_model/tokenizer.json",
            "phi3lora/demo_model/config.json", "phi3lora/samples/identity.jsonl", "phi3lora/samples/multi_turn.jsonl",
            "phi3lora/samples/tool_calls.jsonl"} <= set(files)
    package = {path.relative_to(source).as_posix() for path in (source / "phi3lora").rglob("*.py")
               if "__pycache__" not in path.parts and not path.name.startswith(".")}
    assert package <= set(files), "every module of the package is in the Space"
    assert (built.folder / "requirements.txt").read_bytes() == (source / "requirements.txt").read_bytes()
    for name in files:
        assert not name.endswith((".pyc", ".pyo")) and "__pycache__" not in name
        assert not name.startswith(("tests/", "phi3lora_home", "runs/", ".venv", ".git", "test-artifacts"))
        assert not any(part.startswith(".") for part in name.split("/")), name
        assert PUSH_TOKEN.encode() not in (built.folder / name).read_bytes()
    assert built.total_bytes == sum((built.folder / name).stat().st_size for name in files)


def small_tree(root: Path) -> Path:
    """The least a build needs: app.py, requirements.txt, the package's __init__, the card."""
    for name in ("app.py", "requirements.txt", "phi3lora/__init__.py", "space_config/card.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    return root


def test_build_refuses_a_non_empty_folder_unless_forced(tmp_path):
    source, out = small_tree(tmp_path / "src"), tmp_path / "out"
    out.mkdir()
    (out / "stale.py").write_text("old")
    with pytest.raises(SpaceError, match="not empty.*--force"):
        build_space(out, source)
    build_space(out, source, force=True)
    assert listing(out) == ["README.md", "app.py", "phi3lora/__init__.py", "requirements.txt"]
    with pytest.raises(SpaceError, match="holds the source tree"):
        build_space(source, source, force=True)  # --force must never empty the source tree
    assert (source / "app.py").is_file()


def test_build_refuses_a_token_in_a_file_it_would_ship(tmp_path):
    source = small_tree(tmp_path / "src")
    (source / "phi3lora" / "settings.py").write_text(f'TOKEN = "{PUSH_TOKEN}"\n')
    with pytest.raises(SpaceError, match=r"phi3lora/settings.py holds what looks like a Hugging Face token") as error:
        build_space(tmp_path / "out", source)
    assert PUSH_TOKEN not in str(error.value)


def test_space_config_extras_go_to_the_space_root(tmp_path):
    source = small_tree(tmp_path / "src")
    (source / "space_config" / "packages.txt").write_text("ffmpeg\n")
    build = build_space(tmp_path / "out", source)
    assert "packages.txt" in build.files and "card.md" not in build.files


def test_cli_build_prints_what_it_wrote(tmp_path):
    done = run_cli("space", "build", tmp_path / "space", timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.search(r"wrote \d+ files \([\d.]+ MB\)", done.stdout)
    again = run_cli("space", "build", tmp_path / "space", timeout=60)
    assert again.returncode == 1 and again.stderr.strip().startswith("error: ") and "Traceback" not in again.stderr


def test_requirements_resolve_offline_against_the_tested_environment(built):
    """Every pin in the Space's requirements.txt is what the tests ran with: pip resolves it with no index at all."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-r",
                           str(built.folder / "requirements.txt")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Would install" not in done.stdout


def test_built_folder_starts_the_app_by_itself(tmp_path):
    """`python app.py` in the built folder, with nothing of the repository on the path, serves the app from the
    package inside the folder (the interpreter: the test environment's, which requirements.txt resolves to)."""
    serve_from(build_space(tmp_path / "space").folder, Path(sys.executable), tmp_path)


@pytest.mark.skipif(os.environ.get("PHI3LORA_FRESH_VENV") != "1",
                    reason="installs requirements.txt into a new virtual environment (minutes; needs a package index): "
                           "set PHI3LORA_FRESH_VENV=1")
def test_built_folder_installs_and_serves_in_a_fresh_venv(tmp_path):
    folder = build_space(tmp_path / "space").folder
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(folder / "requirements.txt")],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    serve_from(folder, python, tmp_path)


def serve_from(folder: Path, python: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", PHI3LORA_HOME=str(tmp_path / "home"),
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"), CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False")
    where = subprocess.run([str(python), "-c", "import phi3lora; print(phi3lora.__file__)"], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).resolve() == (folder / "phi3lora" / "__init__.py").resolve(), where.stderr
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(python), "app.py"], cwd=folder, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = AppServer(f"http://127.0.0.1:{port}", tmp_path / "home", tmp_path / "gradio", log, process)
    try:
        _wait_until_up(server, 120)
        page = httpx.get(server.url + "/", timeout=10)
        assert page.status_code == 200 and "phi3lora" in page.text
    finally:
        _stop(process)
    # the app compiled the modules it imported: the ones in the built folder
    assert list((folder / "phi3lora" / "ui" / "__pycache__").glob("app.*.pyc"))


# --- push: a fake Hub behind huggingface_hub's own HTTP client -------------------------------------------------

@dataclass
class FakeHub:
    """Answers as huggingface.co does for the calls a push makes, and records every request."""
    lfs_suffixes: tuple[str, ...] = (".safetensors",)  # what the Hub's preupload says goes to LFS
    remote_files: tuple[str, ...] = (".gitattributes", "old_module.py")  # already in the Space
    fail: dict[str, int] = field(default_factory=dict)  # path suffix -> status to answer instead
    requests: list[httpx2.Request] = field(default_factory=list)
    lfs_uploads: dict[str, bytes] = field(default_factory=dict)

    def client(self) -> httpx2.Client:  # as huggingface_hub's default factory, but over the fake transport
        return httpx2.Client(transport=httpx2.MockTransport(self.answer), follow_redirects=True,
                             event_hooks={"request": [hf_request_event_hook]})

    def answer(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        self.requests.append(request)
        path = request.url.path
        for suffix, status in self.fail.items():
            if path.endswith(suffix):
                said = f"refused by the fake hub ({status})"
                return httpx2.Response(status, json={"error": said, "errors": [{"message": said}]})
        if request.url.host == "lfs.example":  # the storage LFS uploads go to (presigned URLs)
            self.lfs_uploads[path.strip("/")] = request.content
            return httpx2.Response(200)
        kind = request.headers.get("content-type", "")
        body = json.loads(request.content) if kind in ("application/json", "application/vnd.git-lfs+json") else None
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": f"https://huggingface.co/spaces/{body['organization']}/{body['name']}"})
        if path.startswith("/api/buckets/"):
            return httpx2.Response(200, json={"url": "https://huggingface.co/buckets" + path.removeprefix("/api/buckets")})
        if path.endswith("/hardware"):
            return httpx2.Response(200, json={"stage": "BUILDING", "hardware": {"current": None, "requested": body["flavor"]}})
        if path.endswith("/variables"):
            return httpx2.Response(200, json={body["key"]: {"value": body["value"]}})
        if path.endswith(("/secrets", "/volumes")) or path == "/api/validate-yaml":
            return httpx2.Response(200, json={})
        if "/tree/main" in path:
            return httpx2.Response(200, json=[{"type": "file", "path": name, "oid": "0" * 40, "size": 1}
                                              for name in self.remote_files])
        if path.endswith("/preupload/main"):
            return httpx2.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(self.lfs_suffixes) else "regular",
                 "shouldIgnore": False} for f in body["files"]]})
        if path.endswith(".git/info/lfs/objects/batch"):  # upload to storage, then verify with the Hub
            verify = "https://huggingface.co" + path.replace("/batch", "/verify")
            return httpx2.Response(200, json={"objects": [
                {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"https://lfs.example/{o['oid']}"},
                                                                  "verify": {"href": verify}}}
                for o in body["objects"]]})
        if path.endswith(".git/info/lfs/objects/verify"):
            return httpx2.Response(200, json={})
        if path.endswith("/commit/main"):
            return httpx2.Response(200, json={"commitOid": "a" * 40,
                                              "commitUrl": "https://huggingface.co/spaces/x/y/commit/" + "a" * 40})
        return httpx2.Response(404, json={"error": "the fake hub does not know this call"})

    def to(self, suffix: str, method: str = "POST") -> list[httpx2.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.endswith(suffix)]


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests set HF_HUB_OFFLINE=1 for everything else
    monkeypatch.setenv("PUSH_TOKEN", PUSH_TOKEN)
    monkeypatch.setenv("HF_TOKEN", SPACE_TOKEN)
    huggingface_hub.set_client_factory(fake.client)
    yield fake
    huggingface_hub.set_client_factory(default_client_factory)


def commit_entries(request: httpx2.Request) -> list[dict]:
    body = request.content
    if request.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


@pytest.mark.parametrize("xet", [False, True], ids=["lfs-upload", "xet-pipeline"])
def test_push_creates_configures_and_uploads_exactly_the_build(hub, source, built, monkeypatch, xet):
    # hf_xet's own (Rust) network cannot be faked here: with xet on, the fake Hub sends every file as a regular
    # blob, which still runs huggingface_hub's default (pipelined) upload; with xet off, the LFS protocol runs.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)
    hub.lfs_suffixes = () if xet else (".safetensors",)
    messages = []
    url = push_space(PushOptions(repo="alice/tuner", private=True, hardware="l4x1", storage_bucket="alice/tuner-runs",
                                 variables={"PHI3LORA_MAX_UPLOAD_MB": "200"}, secrets=["HF_TOKEN"],
                                 token_env="PUSH_TOKEN"), source, log=messages.append)
    assert url == "https://huggingface.co/spaces/alice/tuner"

    [create] = hub.to("/api/repos/create")
    assert json.loads(create.content) == {"name": "tuner", "organization": "alice", "type": "space", "sdk": "gradio",
                                          "visibility": "private"}
    [hardware] = hub.to("/api/spaces/alice/tuner/hardware")
    assert json.loads(hardware.content)["flavor"] == "l4x1"
    [bucket] = hub.to("/api/buckets/alice/tuner-runs")
    assert json.loads(bucket.content)["visibility"] == "private"
    [volumes] = hub.to("/api/spaces/alice/tuner/volumes", "PUT")
    assert json.loads(volumes.content) == {"volumes": [{"type": "bucket", "source": "alice/tuner-runs",
                                                        "mountPath": "/data"}]}
    variables = {json.loads(r.content)["key"]: json.loads(r.content)["value"]
                 for r in hub.to("/api/spaces/alice/tuner/variables")}
    assert variables == {"PHI3LORA_HOME": "/data", "PHI3LORA_MAX_UPLOAD_MB": "200"}
    secrets = {json.loads(r.content)["key"]: json.loads(r.content)["value"]
               for r in hub.to("/api/spaces/alice/tuner/secrets")}
    assert secrets == {"HF_TOKEN": SPACE_TOKEN}

    [commit] = hub.to("/api/spaces/alice/tuner/commit/main")
    assert hub.requests.index(commit) > max(hub.requests.index(r) for r in (create, hardware, volumes)), \
        "settings go first: the upload starts the Space's build"
    entries = commit_entries(commit)
    sent = {e["value"]["path"]: e for e in entries if e["key"] in ("file", "lfsFile")}
    assert sorted(sent) == built.files, "the commit holds exactly the built files"
    for path, entry in sent.items():
        expected = (built.folder / path).read_bytes()
        if entry["key"] == "file":
            assert base64.b64decode(entry["value"]["content"]) == expected, path
        else:
            assert entry["value"]["oid"] == hashlib.sha256(expected).hexdigest()
            assert hub.lfs_uploads[entry["value"]["oid"]] == expected
    if not xet:
        assert [e["value"]["path"] for e in entries if e["key"] == "lfsFile"] == ["phi3lora/demo_model/model.safetensors"]
    deleted = [e["value"]["path"] for e in entries if e["key"] in ("deletedFile", "deletedFolder")]
    assert deleted == ["old_module.py"], "files the build no longer has leave the Space; .gitattributes stays"

    for request in hub.requests:
        to_hub = request.url.host == "huggingface.co"
        assert PUSH_TOKEN not in str(request.url) and PUSH_TOKEN.encode() not in request.content
        for name, value in request.headers.items():
            if name.lower() == "authorization" and to_hub:
                assert value == f"Bearer {PUSH_TOKEN}"
            else:
                assert PUSH_TOKEN not in value, f"token in the {name} header of {request.url}"
    assert all(PUSH_TOKEN not in message and SPACE_TOKEN not in message for message in messages)


def test_push_without_a_token_says_so_in_one_line(tmp_path):
    done = run_cli("space", "push", "--repo", "alice/tuner", timeout=60,
                   env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN_PATH": str(tmp_path / "token")})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: no Hugging Face token: set $HF_TOKEN to a write token (https://huggingface.co/settings/tokens) "
        "or run `hf auth login`"]


@pytest.mark.parametrize("fail, message", [
    ({"/api/repos/create": 401}, r"refused the token while creating the Space alice/tuner \(401\)"),
    ({"/api/repos/create": 403}, r"not allowed .* \(403\).*write access"),
    ({"/commit/main": 422}, r"the Hub answered 422 while uploading to alice/tuner \(the Hub says: refused by"),
    ({"/api/validate-yaml": 400}, r"the Hub refused this while uploading.*Invalid metadata in README.md"),
])
def test_hub_refusals_become_one_plain_sentence(hub, source, monkeypatch, fail, message):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    hub.fail = fail
    with pytest.raises(SpaceError, match=message) as error:
        push_space(PushOptions(repo="alice/tuner", token_env="PUSH_TOKEN"), source, log=lambda line: None)
    assert PUSH_TOKEN not in str(error.value) and "\n" not in str(error.value)


def test_an_unreachable_hub_is_named(hub, source, monkeypatch):
    def refuse(request):
        raise httpx2.ConnectError("connection refused", request=request)

    monkeypatch.setattr(hub, "answer", refuse)
    with pytest.raises(SpaceError, match="cannot reach the Hub while creating the Space"):
        push_space(PushOptions(repo="alice/tuner", token_env="PUSH_TOKEN"), source, log=lambda line: None)


@pytest.mark.parametrize("options, message", [
    (PushOptions(repo="tuner"), "not a valid id: expected OWNER/NAME"),
    (PushOptions(repo="alice/tu ner"), "not a valid id"),
    (PushOptions(repo="alice/tuner", hardware="zero-a10g"), "ZeroGPU cannot host training"),
    (PushOptions(repo="alice/tuner", hardware="h100-huge"), "not a Space hardware flavour"),
    (PushOptions(repo="alice/tuner", storage_bucket="runs"), "--storage-bucket 'runs' is not a valid id"),
    (PushOptions(repo="alice/tuner", secrets=["PUSH_TOKEN"]), "holds the token you push with"),
    (PushOptions(repo="alice/tuner", variables={"KEY": PUSH_TOKEN}), "variables are public: use --secret"),
    (PushOptions(repo="alice/tuner", variables={"PHI3LORA_MAX_UPLOAD_MB": "lots"}),
     "--variable PHI3LORA_MAX_UPLOAD_MB=lots: a number above 0"),
    (PushOptions(repo="alice/tuner", variables={"PHI3LORA_MAX_UPLOADS_MB": "200"}),
     "PHI3LORA_MAX_UPLOADS_MB is not a variable phi3lora reads"),
])
def test_push_refuses_bad_options_before_calling_the_hub(hub, source, options, message):
    options.token_env = options.token_env or "PUSH_TOKEN"
    with pytest.raises(SpaceError, match=message):
        push_space(options, source, log=lambda line: None)
    assert hub.requests == []
