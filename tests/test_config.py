"""Settings: defaults, environment, YAML file, precedence and clear errors."""

from pathlib import Path

import pytest

from tastebud.config import Settings, build_settings
from tastebud.errors import ConfigError


def test_defaults_put_everything_under_one_home() -> None:
    settings = Settings()
    assert settings.home == Path(".tastebud")
    for sub in (settings.data_dir, settings.cache_dir, settings.runs_dir):
        assert sub.parent == settings.home


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TASTEBUD_HOME", str(tmp_path))
    monkeypatch.setenv("TASTEBUD_DATA__ALLOW_DOWNLOAD", "false")
    settings = build_settings()
    assert settings.home == tmp_path
    assert settings.data.allow_download is False


def test_yaml_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "tastebud.yaml"
    cfg.write_text("seed: 7\nhome: from-yaml\ndata:\n  download_timeout_s: 3.5\n")
    monkeypatch.setenv("TASTEBUD_CONFIG", str(cfg))
    monkeypatch.setenv("TASTEBUD_HOME", str(tmp_path / "from-env"))
    settings = build_settings()
    assert settings.seed == 7
    assert settings.data.download_timeout_s == 3.5
    assert settings.home == tmp_path / "from-env"


def test_explicit_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TASTEBUD_SEED", "5")
    assert build_settings(seed=9).seed == 9


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("seed: [1, 2", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("sede: 3\n", "sede"),
        ("data:\n  download_timeout_s: -1\n", "download_timeout_s"),
    ],
)
def test_bad_yaml_gives_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str, fragment: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    monkeypatch.setenv("TASTEBUD_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=fragment):
        build_settings()


def test_missing_yaml_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TASTEBUD_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        build_settings()


def test_bad_environment_value_gives_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASTEBUD_SEED", "not-a-number")
    with pytest.raises(ConfigError, match="seed"):
        build_settings()
