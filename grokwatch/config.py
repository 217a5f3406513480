"""Settings: command-line flag > GROKWATCH_* environment variable > grokwatch.toml > default.

Every watch option has all three spellings: `--pair-bound 256`, `GROKWATCH_PAIR_BOUND=256`, and
`pair_bound = 256` (or `pair-bound`) in grokwatch.toml. The config file is `--config FILE`, else
`grokwatch.toml` in the run directory, else the one in the user's config directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from grokwatch.errors import ConfigError
from grokwatch.paths import config_dir

CONFIG_NAME = "grokwatch.toml"
ENV_PREFIX = "GROKWATCH_"


@dataclass(frozen=True)
class Settings:
    """Everything a watch needs, resolved from flags, environment, file and defaults."""

    run_dir: Path = Path(".")
    probe: Path | None = None
    db: Path | None = None
    device: str = "auto"
    headless: bool = False
    once: bool = False
    poll: float | None = None  # seconds between scans in polling mode; None = filesystem events
    ready_marker: str | None = None
    tau: float = 0.7
    max_tokens: int = 2048
    pair_bound: int = 512
    batch_size: int = 16
    threads: int | None = None
    on_alert: str | None = None
    trust_remote_code: bool = False
    config: Path | None = None
    debug: bool = False
    # File/environment-only settings (no flag): secrets never go on a command line.
    notify_urls: tuple[str, ...] = ()
    settle_s: float = 60.0
    rescan_s: float = 30.0
    heartbeat_s: float = 2.0
    max_memory_bytes: int | None = None
    memorization_eps: float | None = None
    theme: str | None = None
    # Detector overrides (onset.DetectorConfig fields), e.g. [detector] window = 12.
    detector: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """Settings safe to store with a run: no webhook URLs or command strings."""
        hidden = {"notify_urls", "on_alert", "extra"}
        return {
            f.name: (str(v) if isinstance(v, Path) else v)
            for f in dataclasses.fields(self)
            if f.name not in hidden and (v := getattr(self, f.name)) is not None
        }


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    default = _FIELDS[name].default
    annotation = str(_FIELDS[name].type)
    try:
        if value is None:
            return None
        if "bool" in annotation:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        if "Mapping" in annotation:
            if isinstance(value, str):
                import json

                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return dict(value)
        if "tuple[str" in annotation:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        if "Path" in annotation:
            return Path(str(value)).expanduser()
        if "float" in annotation:
            return float(value)
        if "int" in annotation:
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__ if default is not None else annotation
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {kind}") from None


def find_config_file(run_dir: Path, explicit: Path | None) -> Path | None:
    """The config file in effect: --config, else the run directory's, else the user's."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: config file not found; fix the --config path")
        return explicit
    for candidate in (run_dir / CONFIG_NAME, config_dir() / CONFIG_NAME):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a grokwatch.toml (keys with dashes or underscores); unknown keys are an error."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc}); fix the TOML syntax") from None
    section = data.get("grokwatch", data)
    values: dict[str, Any] = {}
    for key, value in section.items():
        name = key.replace("-", "_")
        if name not in _FIELDS or name in {"run_dir", "config"}:
            known = ", ".join(sorted(n for n in _FIELDS if n not in {"run_dir", "config", "extra"}))
            raise ConfigError(f"{path}: unknown key {key!r}; known keys: {known}")
        values[name] = value
    if isinstance(values.get("probe"), str):
        # A relative probe path in a config file is relative to that file.
        values["probe"] = str((path.parent / values["probe"]).expanduser())
    return values


def resolve_settings(
    run_dir: Path,
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge flags (only those given on the command line), environment, config file, defaults."""
    environ = os.environ if environ is None else environ
    explicit_config = flags.get("config")
    if explicit_config is None and environ.get(ENV_PREFIX + "CONFIG"):
        explicit_config = Path(environ[ENV_PREFIX + "CONFIG"])
    config_path = find_config_file(run_dir, explicit_config)
    from_file = read_config_file(config_path) if config_path else {}
    merged: dict[str, Any] = {"run_dir": run_dir, "config": config_path}
    for name in _FIELDS:
        if name in {"run_dir", "config", "extra"}:
            continue
        env_name = ENV_PREFIX + name.upper()
        if flags.get(name) is not None:
            merged[name] = _coerce(name, flags[name], f"--{name.replace('_', '-')}")
        elif env_name in environ:
            merged[name] = _coerce(name, environ[env_name], env_name)
        elif name in from_file:
            merged[name] = _coerce(name, from_file[name], str(config_path))
    settings = Settings(**merged)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if not 0.0 < s.tau < 1.0:
        raise ConfigError(f"tau = {s.tau}: must be between 0 and 1 (the paper uses 0.5-0.8)")
    if s.max_tokens < 2:
        raise ConfigError(f"max_tokens = {s.max_tokens}: must be at least 2")
    if s.pair_bound < 2:
        raise ConfigError(f"pair_bound = {s.pair_bound}: must be at least 2")
    if s.batch_size < 1:
        raise ConfigError(f"batch_size = {s.batch_size}: must be at least 1")
    if s.poll is not None and s.poll <= 0:
        raise ConfigError(f"poll = {s.poll}: must be a positive number of seconds")
    if s.threads is not None and s.threads < 1:
        raise ConfigError(f"threads = {s.threads}: must be at least 1")
    if s.detector:
        import dataclasses as dc

        from grokwatch.onset import DetectorConfig

        known = {f.name for f in dc.fields(DetectorConfig)}
        unknown = sorted(set(s.detector) - known)
        if unknown:
            raise ConfigError(
                f"detector: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        DetectorConfig(**s.detector)  # its own checks raise ConfigError with the fix
