"""YAML-backed configuration models.

Every config in tightdistill is a pydantic model with ``extra="forbid"``: a misspelt key in a YAML
file is an error that names the key and the file, never a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

# Which of an encoder's transformer layers a cut keeps (common.text_encoder.kept_layer_indices): here,
# not beside the code, so that configs load without importing torch.
LayerSelection = Literal["first", "spread"]

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message says where and how to fix it."""


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error for a missing file or a non-mapping document."""
    import yaml  # here, not at the top: the light HTTP client imports this module's models, never YAML

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn a pydantic error into short lines such as ``file.yaml: train.lr: ...``."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{where}'")
        else:
            lines.append(f"{source}: {where}: {err['msg']}")
    return "; ".join(lines)


def parse_config(model_cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Validate a mapping into ``model_cls``, raising :class:`ConfigError` with a readable message."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(model_cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load ``model_cls`` from a YAML file, optionally from one top-level ``section`` of it."""
    data = read_yaml(path)
    if section is not None:
        if section not in data:
            raise ConfigError(f"{path}: missing section '{section}'")
        data = data[section]
    return parse_config(model_cls, data, source=str(path))
