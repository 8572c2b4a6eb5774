"""Names instead of paths in what the API answers: the server's file layout is none of a caller's business.

Error messages of deeper code name files (``/srv/home/mlflow/artifacts/.../model/user_factors.npy: sha256
mismatch``); responses keep the message and drop the directories. Logs keep the full paths for operators.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: ``file:`` URIs (their path is then redacted like any other).
_FILE_URI = re.compile(r"\bfile:(?://)?(?=/)")
#: An absolute POSIX or Windows path of at least two components, not part of a URI or a relative path; the
#: last component (group 1) is kept.
_ABS_PATH = re.compile(r"""(?<![\w:/.~\\-])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'"():;,]+[/\\])+([^\s/\\'"():;,]*)""")


def model_uri(name: Any, version: Any) -> str:
    """The name of a registered version: ``models:/<name>/<version>``."""
    return f"models:/{name}/{version}"


def redact_paths(text: str | None, known: Mapping[str | Path, str] | None = None) -> str | None:
    """``text`` with every absolute path replaced by a name.

    Args:
        text: a message (``None`` passes through).
        known: paths with the names to put in their place (a bundle directory -> ``models:/ml/3``); a file
            under one becomes ``<name>/<relative path>``. Any other absolute path becomes its last component.
    """
    if not text:
        return text
    for path, name in (known or {}).items():
        for form in {str(path), str(Path(path).resolve())}:
            if form and form != "/":
                text = text.replace(form, name)
    text = _FILE_URI.sub("", text)
    return _ABS_PATH.sub(lambda m: m.group(1) or "", text)
