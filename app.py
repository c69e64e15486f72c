"""`python app.py`: serve the phi3lora web app (port 7860 or $GRADIO_SERVER_PORT, host $GRADIO_SERVER_NAME or
127.0.0.1). Uploads larger than $PHI3LORA_MAX_UPLOAD_MB (default 100) are refused while they stream.
$PHI3LORA_USERS ("name:password,..."), when set, asks every visitor for a name and password."""
import os

from phi3lora import runs
from phi3lora.ui import build_app
from phi3lora.ui.app import app_kwargs
from phi3lora.ui.common import DOWNLOADS, max_upload_bytes


def password_logins() -> list[tuple[str, str]] | None:
    """$PHI3LORA_USERS as Gradio's auth list, or None for no password."""
    raw = os.environ.get("PHI3LORA_USERS", "").strip()
    if not raw:
        return None
    pairs = [entry.split(":", 1) for entry in raw.split(",") if entry.strip()]
    if any(len(pair) != 2 or not pair[0].strip() or not pair[1] for pair in pairs):
        raise SystemExit("PHI3LORA_USERS must look like name:password,name2:password2")
    return [(name.strip(), password) for name, password in pairs]


def main() -> None:
    build_app().launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),  # the port: gradio reads GRADIO_SERVER_PORT
        max_file_size=max_upload_bytes(),
        # Run folders, private uploads and downloads are never served by Gradio (downloads: by their own route).
        blocked_paths=[str(runs.data_root()), str(DOWNLOADS)],
        app_kwargs=app_kwargs(),
        auth=password_logins(),
        ssr_mode=False,
    )


if __name__ == "__main__":
    main()
