"""Configuration: conf/base merged with the overlay of BUNDLECAST_ENV, state under BUNDLECAST_HOME.

All runtime state lives under one directory, ``BUNDLECAST_HOME`` (default ``./var``):
pointing it elsewhere gives a fully separate world. Secrets are never in the YAML: they are
``${VAR}`` references resolved from the environment when the configuration is loaded.
"""
from __future__ import annotations

import copy
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from bundlecast.jobs.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = Path(os.environ.get("BUNDLECAST_CONF_DIR", PROJECT_ROOT / "conf"))
_ENV_REF = re.compile(r"\$\{([A-Z0-9_]+)(?::-((?:\{home\}|[^}])*))?\}")


def home() -> Path:
    """The state directory: BUNDLECAST_HOME, or ./var relative to the working directory."""
    return Path(os.environ.get("BUNDLECAST_HOME", "var")).expanduser().resolve()


def env_name() -> str:
    return os.environ.get("BUNDLECAST_ENV", "local")


def deep_merge(base: dict, overlay: dict) -> dict:
    """Recursively merge ``overlay`` into a copy of ``base`` (overlay wins, dicts merge)."""
    merged = copy.deepcopy(base)
    for key, value in (overlay or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _resolve(value: Any, state_home: str, environ: dict) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, state_home, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, state_home, environ) for v in value]
    if isinstance(value, str):
        def env_sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ and environ[name] != "":
                return environ[name]
            if default is None:
                raise ConfigError(f"configuration needs environment variable {name}")
            return default
        value = _ENV_REF.sub(env_sub, value)
        return value.replace("{home}", state_home)
    return value


def read_yaml(path: Path) -> dict:
    try:
        with open(path) as fh:
            return yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"missing configuration file {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {str(exc).splitlines()[0]}") from None


def load_config(env: str | None = None, state_home: Path | None = None,
                environ: dict | None = None, conf_dir: Path | None = None) -> dict:
    """Load conf/base/config.yaml merged with conf/<env>/config.yaml, then with the state
    directory's own overlay ``BUNDLECAST_HOME/conf/config.yaml`` when there is one (a user's
    or a tool's setting for this state, e.g. thresholds ``bundlecast replay thresholds``
    proposed, without copying conf/), references resolved."""
    conf_dir = Path(conf_dir or CONF_DIR)
    env = env or env_name()
    overlay_path = conf_dir / env / "config.yaml"
    if not overlay_path.exists():
        known = sorted(p.name for p in conf_dir.iterdir() if (p / "config.yaml").exists() and p.name != "base")
        raise ConfigError(f"unknown BUNDLECAST_ENV {env!r}: expected one of {known}")
    merged = deep_merge(read_yaml(conf_dir / "base" / "config.yaml"), read_yaml(overlay_path))
    state_overlay = state_overlay_path(Path(state_home or home()))
    if state_overlay.exists():
        merged = deep_merge(merged, read_yaml(state_overlay))
    resolved = _resolve(merged, str(state_home or home()), dict(os.environ if environ is None else environ))
    if env != "local":
        check_secrets(resolved.get("secrets") or {}, merged.get("secrets") or {}, conf_dir)
    resolved["env"] = env
    resolved["home"] = str(state_home or home())
    return resolved


KNOWN_DEFAULTS = {"bundlecast-dev-secret", "changeme", "change-me", "secret", "password", "minioadmin", "admin",
                  "airflow", "test", "dev"}
MIN_SECRET_LENGTH = 32


def check_secrets(secrets: dict, raw: dict, conf_dir: Path) -> None:
    """Refuse to start (one line) with a secret that is missing, short or a known default
    (including the development keys of conf/local)."""
    local = _resolve(read_yaml(conf_dir / "local" / "config.yaml").get("secrets") or {}, "", {}) \
        if (conf_dir / "local" / "config.yaml").exists() else {}
    for name, value in secrets.items():
        refs = _ENV_REF.findall(str(raw.get(name, "")))
        where = f"set {refs[0][0]}" if refs else "set it in the environment"
        value = str(value or "")
        if not value:
            raise ConfigError(f"secret secrets.{name} is missing: {where} (required outside BUNDLECAST_ENV=local)")
        if value.lower() in KNOWN_DEFAULTS or value in local.values():
            raise ConfigError(f"secret secrets.{name} is a known default: {where} to a private value")
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(f"secret secrets.{name} is shorter than {MIN_SECRET_LENGTH} characters: {where}")


def state_overlay_path(state_home: Path) -> Path:
    """The state directory's own configuration overlay (merged last when it exists)."""
    return Path(state_home) / "conf" / "config.yaml"


@lru_cache(maxsize=None)
def _cached(env: str, state_home: str, overlay_stamp: float) -> dict:
    return load_config(env, Path(state_home))


def config() -> dict:
    """The configuration for the current BUNDLECAST_ENV and BUNDLECAST_HOME (cached until the
    state directory's overlay changes: a long-lived driver sees a new overlay at once)."""
    overlay = state_overlay_path(home())
    stamp = overlay.stat().st_mtime_ns if overlay.exists() else 0.0
    return copy.deepcopy(_cached(env_name(), str(home()), stamp))


def truthy(value) -> bool:
    """A config switch: a YAML boolean, or a string from the environment ("true", "1", "on"...)."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
