"""Configuration files shipped with Loopline: ``gates.yaml`` is the gate policy (see ``loopline.gates``),
``canary.yaml`` the canary rollout policy (see ``loopline.abtest``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "loopline.policy"


def read_policy_file(
    packaged: str, path: str | Path | None, *, kind: str, error: type[Exception]
) -> tuple[dict[str, Any], str]:
    """The sections of a policy YAML (the packaged file ``packaged`` unless ``path``) and where they came from.

    Raises ``error`` naming the file when it cannot be read, is not YAML, or is not a mapping.
    """
    if path is None:
        source = f"{PACKAGE}/{packaged}"
        text = resources.files(PACKAGE).joinpath(packaged).read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as failure:
            raise error(f"cannot read {kind} policy file {source}: {failure.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as failure:
        raise error(f"{kind} policy file {source} is not valid YAML: {failure}") from None
    if not isinstance(data, dict):
        raise error(f"{kind} policy file {source}: expected a mapping of sections, got {type(data).__name__}")
    return data, source
