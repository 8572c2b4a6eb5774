"""Runtime settings: one :class:`Settings` object, read from ``TASTEBUD_*`` variables and an optional YAML file.

Nothing here runs at import: :func:`get_settings` builds the settings lazily. Hyperparameters are not settings;
they live in each model's config class.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tastebud.errors import ConfigError

#: Environment variable naming an optional YAML settings file.
CONFIG_FILE_ENV = "TASTEBUD_CONFIG"


class DataSettings(BaseModel):
    """Where datasets come from and how they are fetched."""

    allow_download: bool = Field(True, description="Try GroupLens downloads before the offline fallback.")
    download_timeout_s: float = Field(20.0, gt=0, description="Timeout of one download attempt, seconds.")
    recbole_version: str = Field("1.2.1", description="RecBole wheel that carries the offline ML-100K copy.")


class Settings(BaseSettings):
    """Effective settings of a Tastebud installation."""

    model_config = SettingsConfigDict(
        env_prefix="TASTEBUD_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(Path(".tastebud"), description="Directory holding everything Tastebud writes.")
    seed: int = Field(42, description="Default random seed for splits and training.")
    log_level: str = Field("WARNING", description="Logging level of the command line and the server.")
    data: DataSettings = Field(default_factory=DataSettings, description="Dataset fetching.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments > environment > YAML file > defaults.
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @property
    def data_dir(self) -> Path:
        """Fetched and prepared datasets."""
        return self.home / "data"

    @property
    def cache_dir(self) -> Path:
        """Downloads kept for re-use (archives, wheels)."""
        return self.home / "cache"

    @property
    def runs_dir(self) -> Path:
        """Evaluation reports, plots and tuning studies."""
        return self.home / "runs"


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``TASTEBUD_CONFIG`` (if any)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_FILE_ENV)
        if not path:
            return {}
        return load_yaml_settings(Path(path))


def load_yaml_settings(path: Path) -> dict[str, Any]:
    """Read a YAML settings file into a dict, with clear errors."""
    if not path.is_file():
        raise ConfigError(f"{path}: settings file not found (named by {CONFIG_FILE_ENV})")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(
            f"{path}: expected a mapping of settings at the top level, got {type(content).__name__}"
        )
    return content


def build_settings(**overrides: Any) -> Settings:
    """Build settings from overrides, environment and YAML, turning validation errors into ``ConfigError``."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from err


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return build_settings()
