"""Ctrl-C and SIGTERM as a request to stop at the next safe point.

A KeyboardInterrupt raised wherever a signal happens to land does not always unwind.
Inside ``torch.save`` writing to a Python file object (C++ calling back into Python per
chunk) it comes out as ``RuntimeError: [enforce fail ...] unexpected pos``; inside the
import of a native extension (onnx's, on first use) the process aborts or crashes. Either
way the command ended in a traceback or a core dump instead of exit 130 / 143.

So while a :class:`StopOnSignal` is armed (the CLI arms one around each command), its
handler only records the signal, and the run raises KeyboardInterrupt itself at the next
:func:`checkpoint`: between steps, edits, files, initializers and clips, always in
surgery's own Python code, from where every cleanup path unwinds. Outside the CLI
(surgery used as a library) nothing is armed and Python's own handling is unchanged.
"""

from __future__ import annotations

import signal
from typing import Any

_armed: StopOnSignal | None = None


def checkpoint() -> None:
    """Stop here with KeyboardInterrupt if an armed :class:`StopOnSignal` has recorded a
    signal (once); otherwise return at once. Call it only from surgery's own Python code,
    never from a function that C++ calls back (a file object's ``write``)."""
    if _armed is not None:
        _armed.check()


class StopOnSignal:
    """Records SIGINT and SIGTERM; :func:`checkpoint` turns the first into one
    KeyboardInterrupt while armed. Later signals are recorded and otherwise ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        try:
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._record)
        except ValueError:  # not the main thread: leave Python's own handling
            self.previous.clear()

    def _record(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum

    def arm(self) -> None:
        """From here on, checkpoints stop the run (at once, if a signal came already)."""
        global _armed
        _armed = self
        self.check()

    def check(self) -> None:
        if _armed is self and self.signum is not None:
            self.disarm()
            raise KeyboardInterrupt

    def disarm(self) -> None:
        global _armed
        if _armed is self:
            _armed = None

    def close(self, *, ignore: bool) -> None:
        """Put back the previous handlers, or ignore both signals when the process is
        about to exit (a signal during interpreter shutdown then changes nothing)."""
        self.disarm()
        for signum, previous in self.previous.items():
            if ignore:
                signal.signal(signum, signal.SIG_IGN)
            else:  # None: a handler set outside Python, which Python cannot put back
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)
