"""Ctrl-C that loses no finished trial: Tune's loop ends once the checkpoints in flight are registered.

Tune logs a trial's result (result.json, W&B) before it registers the checkpoint sent with it, and
on Ctrl-C it snapshots its state at once: a trial whose last epoch was logged but whose checkpoint
was not yet registered was saved as running without it, and `resume` trained it again. This
callback holds Tune's stop until no trial is saving (at most GRACE_S); a second Ctrl-C stops now.
`sigint_restored` puts back the handler that was there before Tune's loop, which Tune leaves.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ray import tune

GRACE_S = 10.0  # how long a Ctrl-C waits for checkpoints in flight (each takes milliseconds)


class GracefulInterrupt(tune.Callback):
    """Installed over Tune's own SIGINT handler when Tune's loop starts (in the main thread only,
    where Tune installs one); the handler it wraps is called, unchanged, to stop the loop."""

    def __init__(self) -> None:
        self._tune_handler: Any = None
        self._asked_at: float | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks; a handler is not picklable
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def setup(self, **info: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread() and callable(handler) \
                and handler is not signal.default_int_handler:  # Tune's, as it installs one before setup
            self._tune_handler = handler
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._asked_at is not None:  # the second Ctrl-C: stop now
            self._stop()
            return
        self._asked_at = time.monotonic()
        print(f"\nCtrl-C: stopping once the checkpoints being saved are registered (at most {GRACE_S:.0f} s); "
              "Ctrl-C again stops now.", file=sys.stderr, flush=True)

    def _stop(self) -> None:
        handler, self._tune_handler = self._tune_handler, None
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
            handler(signal.SIGINT, None)  # Tune ends its loop, snapshots its state, restores the default

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._asked_at is None or self._tune_handler is None:
            return
        if not any(trial.is_saving for trial in trials) or time.monotonic() - self._asked_at > GRACE_S:
            self._stop()


@contextlib.contextmanager
def sigint_restored() -> Iterator[None]:
    """Around Tune's loop: Ctrl-C after it (during exports, results.csv) acts as it did before it."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGINT, before)
