"""Run logs: console lines, ``logs/*.txt`` like the reference, a JSON Lines log and wandb.

Only rank 0 writes. wandb is imported lazily and only when enabled (it honours WANDB_MODE, so
``WANDB_MODE=offline`` works without a network)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

LOG = logging.getLogger("moofa")


class RunLogger:
    """Writes ``<run_dir>/logs/train_console.txt``, ``valid_console.txt`` and ``log.jsonl``."""

    def __init__(self, run_dir: str | Path, is_main: bool, tag: str,
                 wandb_cfg: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> None:
        self.dir = Path(run_dir) / "logs"
        self.is_main, self.tag = is_main, tag
        self.wandb = None
        if not is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if wandb_cfg and wandb_cfg.get("use_wandb"):
            try:
                import wandb  # noqa: PLC0415 (optional dependency)
                self.wandb = wandb.init(project=wandb_cfg.get("project_name"), config=dict(config or {}),
                                        dir=str(self.dir), name=tag, reinit=True)
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
