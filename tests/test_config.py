"""Settings precedence (flag > env > file > default) and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from grokwatch.config import Settings, resolve_settings
from grokwatch.errors import ConfigError


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    s = resolve_settings(tmp_path, {}, environ={})
    assert (s.tau, s.max_tokens, s.pair_bound, s.device) == (0.7, 2048, 512, "auto")


def test_flag_beats_env_beats_file_beats_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    (tmp_path / "grokwatch.toml").write_text(
        'tau = 0.6\npair-bound = 100\nbatch_size = 4\nprobe = "p.jsonl"\n'
    )
    env = {"GROKWATCH_PAIR_BOUND": "200", "GROKWATCH_BATCH_SIZE": "8"}
    s = resolve_settings(tmp_path, {"batch_size": 32, "tau": None}, environ=env)
    assert s.tau == 0.6  # file
    assert s.pair_bound == 200  # env over file
    assert s.batch_size == 32  # flag over env
    assert s.max_tokens == 2048  # default
    assert s.probe == tmp_path / "p.jsonl"  # relative to the config file
    assert s.config == tmp_path / "grokwatch.toml"


def test_user_config_dir_is_the_fallback(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg" / "grokwatch"
    cfg.mkdir(parents=True)
    (cfg / "grokwatch.toml").write_text("device = 'cpu'\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    run = tmp_path / "run"
    run.mkdir()
    assert resolve_settings(run, {}, environ={}).device == "cpu"


def test_bool_env_and_secrets_stay_out_of_public(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    env = {
        "GROKWATCH_TRUST_REMOTE_CODE": "yes",
        "GROKWATCH_NOTIFY_URLS": "slack://secret-token@chan, ntfy://t",
        "GROKWATCH_ON_ALERT": "curl -d @- https://hooks/secret",
    }
    s = resolve_settings(tmp_path, {}, environ=env)
    assert s.trust_remote_code is True
    assert s.notify_urls == ("slack://secret-token@chan", "ntfy://t")
    public = s.public()
    assert "notify_urls" not in public and "on_alert" not in public
    assert "secret-token" not in repr(public) and "hooks/secret" not in repr(public)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("tau = 'high'\n", "not a valid"),
        ("tau = 1.5\n", "between 0 and 1"),
        ("colour = 'red'\n", "unknown key 'colour'"),
        ("tau = \n", "fix the TOML syntax"),
    ],
)
def test_bad_config_is_one_line_naming_the_file(tmp_path, monkeypatch, toml, message):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    (tmp_path / "grokwatch.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_settings(tmp_path, {}, environ={})
    assert "\n" not in str(info.value)


def test_missing_explicit_config(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_settings(tmp_path, {"config": Path(tmp_path / "nope.toml")}, environ={})


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().tau = 0.5  # type: ignore[misc]
