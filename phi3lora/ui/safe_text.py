"""Text from datasets and models shown as Markdown, without letting it load anything.

A Chatbot renders Markdown and some HTML: an image in a dataset record or in a model's answer
(`![x](https://tracker.example/pixel.png)`, `<img src=...>`) would make every visitor's browser fetch it, a
tracking beacon. Images become plain links, which load nothing until clicked; image tags are shown as text.
"""
from __future__ import annotations

import re

_MARKDOWN_IMAGE = re.compile(r"!(\[[^\]\n]{0,1000}\])(?=\s*[(\[])")  # ![alt](url) and ![alt][ref]
_HTML_IMAGE = re.compile(r"<(?=\s*/?\s*(?:img|image|picture|source|video|audio|iframe|object|embed|svg)\b)",
                         re.IGNORECASE)


def no_remote_images(text: str) -> str:
    """`text` with every Markdown image turned into a link and every embedding HTML tag escaped."""
    return _HTML_IMAGE.sub("&lt;", _MARKDOWN_IMAGE.sub(r"\1", text))
