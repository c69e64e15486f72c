"""`python app.py`: serve the phi3lora web app (port 7860 or $GRADIO_SERVER_PORT, host $GRADIO_SERVER_NAME or
127.0.0.1). Uploads larger than $PHI3LORA_MAX_UPLOAD_MB (default 100) are refused while they stream.
$PHI3LORA_USERS ("name:password,..."), when set, asks every visitor for a name and password. Every PHI3LORA_*
variable is checked first (phi3lora/settings.py): a bad value stops the app with one line, before gradio loads."""
import os
import sys

from phi3lora import settings

BAD_SETTINGS_EXIT = 2


def check_settings() -> None:
    try:
        settings.check_all()
    except settings.SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(BAD_SETTINGS_EXIT) from None


def main() -> None:
    check_settings()
    # Imported only now: gradio and the UI take seconds to load, and a bad setting should not wait for them.
    from phi3lora.ui import build_app
    from phi3lora.ui.app import app_kwargs
    from phi3lora.ui.common import DOWNLOADS, max_upload_bytes

    build_app().launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),  # the port: gradio reads GRADIO_SERVER_PORT
        max_file_size=max_upload_bytes(),
        # Run folders, private uploads and downloads are never served by Gradio (downloads: by their own route).
        blocked_paths=[str(settings.data_root()), str(DOWNLOADS)],
        app_kwargs=app_kwargs(),
        auth=settings.password_logins(),
        ssr_mode=False,
    )


if __name__ == "__main__":
    main()
