"""`python app.py`: serve the phi3lora web app (port 7860 or $GRADIO_SERVER_PORT, host $GRADIO_SERVER_NAME or
127.0.0.1). Uploads larger than $PHI3LORA_MAX_UPLOAD_MB (default 100) are refused while they stream."""
import os

from phi3lora import runs
from phi3lora.ui import build_app
from phi3lora.ui.common import max_upload_bytes


def main() -> None:
    build_app().launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),  # the port: gradio reads GRADIO_SERVER_PORT
        max_file_size=max_upload_bytes(),
        blocked_paths=[str(runs.data_root())],  # run folders and private uploads are never served
        ssr_mode=False,
    )


if __name__ == "__main__":
    main()
