"""What a worker process keeps between tasks: settings, a database engine and the loaded models.

Everything here is created lazily in the process that runs tasks, i.e. after the prefork pool
has forked (FACTS.md: a model run in the parent hangs the children; CUDA must not be touched
before fork; a database connection must not cross a fork).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from pipeline.db.session import make_engine, make_session_factory
from pipeline.settings import Settings

if TYPE_CHECKING:
    from msanet_core import Segmenter

logger = logging.getLogger(__name__)


class Runtime:
    """Per-process resources of a worker; build one with :func:`runtime`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.owner = f"{socket.gethostname()}:{self.pid}"
        self._engine = make_engine(settings.database_url)
        self.sessions: sessionmaker[Session] = make_session_factory(self._engine)
        self._models: dict[str, Segmenter] = {}
        self._lock = threading.Lock()

    def owner_dead(self, owner: str) -> bool:
        """True when ``owner`` (``host:pid``) is a process of this host that no longer exists:
        a pool child killed mid-task, whose lease need not be waited out."""
        host, _, pid = owner.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit() or int(pid) == self.pid:
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def weights_for(self, job_weights: str | None) -> Path | None:
        """The checkpoint a job runs with: its own (reprocess ``--weights``), else the setting,
        else None (the shipped checkpoint)."""
        if job_weights:
            return Path(job_weights)
        return self.settings.weights

    def predictor(self, weights: Path | None) -> Segmenter:
        """The model for ``weights``, loaded once per process (``None`` = shipped weights)."""
        key = str(weights) if weights else ""
        with self._lock:
            model = self._models.get(key)
            if model is None:
                import torch  # noqa: PLC0415

                from msanet_core import Segmenter  # noqa: PLC0415

                # FACTS.md: one process per pool slot; give each its share of the cores.
                cores = len(os.sched_getaffinity(0))
                torch.set_num_threads(max(1, cores // self.settings.worker.concurrency))
                model = Segmenter.load(weights, device=self.settings.device)
                logger.info(
                    "model_loaded version=%s device=%s threads=%d",
                    model.model_version,
                    model.device,
                    torch.get_num_threads(),
                )
                self._models[key] = model
            return model

    def dispose(self) -> None:
        self._engine.dispose()


_runtime: Runtime | None = None


def runtime(settings: Settings) -> Runtime:
    """This process's :class:`Runtime` (a forked child builds its own on first use)."""
    global _runtime  # noqa: PLW0603
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(settings)
    return _runtime
