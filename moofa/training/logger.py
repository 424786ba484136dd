"""Run logs: console lines, ``logs/*.txt`` like the reference, a JSON Lines log and wandb.

Only rank 0 writes. wandb is imported lazily and only when enabled, and never prompts
(:func:`wandb_mode`): without a login it logs offline (``wandb sync`` uploads the run later).

``log.jsonl`` holds one JSON object a line: ``tag``, ``time`` (Unix seconds) and the caller's
fields. Accuracies in it (``train_top1``, ``val_acc``, ...) are fractions in [0, 1], losses are
per-sample means (docs/design.md#run-layout)."""
from __future__ import annotations

import json
import logging
import netrc
import os
import time
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import urlparse

from moofa.config import WandbSettings

LOG = logging.getLogger("moofa")
WANDB_HOST = "https://api.wandb.ai"  # wandb's default server (WANDB_BASE_URL overrides it)
WandbMode = Literal["online", "offline", "disabled"]
# WANDB_MODE values that need no login; wandb itself reads "dryrun" as "offline"
_NO_LOGIN_MODES: dict[str, WandbMode] = {"offline": "offline", "disabled": "disabled", "dryrun": "offline"}


def _netrc_has(host: str, env: Mapping[str, str]) -> bool:
    """Whether the netrc file wandb reads (``NETRC``, else ``~/.netrc`` or ``~/_netrc``) holds
    credentials for ``host``; an unreadable or malformed file holds none."""
    home = Path(env.get("HOME") or Path.home())
    paths = [Path(env["NETRC"]).expanduser()] if env.get("NETRC") else \
        [home / ".netrc", home / "_netrc"]
    for path in paths:
        if path.is_file():
            try:
                return netrc.netrc(str(path)).authenticators(host) is not None
            except (OSError, netrc.NetrcParseError):
                return False
    return False


def wandb_mode(env: Mapping[str, str] | None = None) -> tuple[WandbMode, str]:
    """The wandb mode to start with, never one that prompts, and why: ``WANDB_MODE`` when it needs
    no login (offline, disabled, dryrun); else ``"online"`` when credentials exist without asking
    (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE`` or a netrc entry for the server); else
    ``"offline"`` (wandb would wait at its "Enter your choice:" prompt)."""
    env = os.environ if env is None else env
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode in _NO_LOGIN_MODES:
        return _NO_LOGIN_MODES[mode], "WANDB_MODE"
    for key in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if env.get(key):
            return "online", key
    host = urlparse(env.get("WANDB_BASE_URL") or WANDB_HOST).hostname or ""
    if host and _netrc_has(host, env):
        return "online", f"netrc entry for {host}"
    return "offline", f"no wandb login (WANDB_API_KEY or a netrc entry for {host})"


class RunLogger:
    """Writes ``<run_dir>/logs/train_console.txt``, ``valid_console.txt`` and ``log.jsonl``."""

    def __init__(self, run_dir: str | Path, is_main: bool, tag: str,
                 wandb_cfg: WandbSettings | None = None, config: dict[str, Any] | None = None) -> None:
        self.dir = Path(run_dir) / "logs"
        self.is_main, self.tag = is_main, tag
        self.wandb = None
        if not is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if wandb_cfg is not None and wandb_cfg.use_wandb:
            try:
                import wandb  # noqa: PLC0415 (optional dependency)
                mode, why = wandb_mode()
                if mode == "offline":
                    LOG.info("wandb logs offline to %s (%s); upload it later with `wandb sync`",
                             self.dir, why)
                self.wandb = wandb.init(project=wandb_cfg.project_name, config=dict(config or {}),
                                        dir=str(self.dir), name=tag, reinit=True, mode=mode)
            except Exception as err:  # wandb missing or misconfigured: keep training, say so
                LOG.warning("wandb disabled: %s", err)

    def _append(self, name: str, line: str) -> None:
        with open(self.dir / name, "a") as f:
            f.write(line + "\n")

    def info(self, message: str) -> None:
        """A console line, also appended to ``train_console.txt``."""
        if self.is_main:
            LOG.info("[%s] %s", self.tag, message)
            self._append("train_console.txt", f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}")

    def valid(self, message: str) -> None:
        if self.is_main:
            LOG.info("[%s] %s", self.tag, message)
            self._append("valid_console.txt", message)

    def record(self, **fields: Any) -> None:
        """One JSON line in ``log.jsonl`` (and a wandb log entry)."""
        if not self.is_main:
            return
        fields = {"tag": self.tag, "time": round(time.time(), 3), **fields}
        self._append("log.jsonl", json.dumps(fields))
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in fields.items() if k != "time"})

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
