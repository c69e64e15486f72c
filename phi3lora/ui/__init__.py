"""The Gradio web app: one module per tab; they build components and wire events to the core, nothing more.
The core (phi3lora.*) never imports gradio."""
from .app import build_app

__all__ = ["build_app"]
