"""What a web client is told about the server's own files: nothing (issue #23).

Typed errors name the file they are about (``/root/.cache/huggingface/hub/models--x/snapshots/SHA/config.json``),
which is what a terminal user needs; a web client must not learn the server's folders. :func:`scrub_paths` keeps
each absolute path's last part (``…/config.json``): the message still says which file, not where it is.
"""

from __future__ import annotations

import re

__all__ = ["scrub_paths"]

# an absolute path of two or more parts, not inside a URL (``http://host/a/b``) or a reference (``hf-hub:o/n``)
_PATH = re.compile(r"(?<![\w.:/~\-@])/(?:[^\s/'\"`:;,()<>\[\]]+/)+([^\s/'\"`:;,()<>\[\]]*)")


def scrub_paths(message: str) -> str:
    """``message`` with every absolute path of the server shortened to ``…/LAST-PART``."""
    return _PATH.sub(lambda m: "…/" + m.group(1), message)
