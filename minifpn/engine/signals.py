"""Stopping a run politely: Ctrl-C (SIGINT) and SIGTERM become a request checked between steps.

A scheduler or a container stops a job with SIGTERM, a user with Ctrl-C;
either way the training loop should finish the iteration it is in, write a
checkpoint, and exit — not die halfway through. :class:`StopRequest`
installs handlers for both signals for the life of a run:

* the first signal only sets :attr:`StopRequest.signum`; the loop calls
  :meth:`StopRequest.raise_if_requested` between iterations, which raises
  :class:`StopRequested`;
* a second signal raises :class:`StopRequested` at once — except inside
  :meth:`StopRequest.deferred` (the weight update), where it waits for the
  block to end, so that no iteration is left half-applied.

Outside the main thread (where Python cannot install signal handlers) the
signals are left alone.
"""

from __future__ import annotations

import contextlib
import signal

from tqdm import tqdm


class StopRequested(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run; ``signum`` says which."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """Turn the first Ctrl-C or SIGTERM into a polite request, checked between iterations.

    A second one stops at once, except during the weight update (a few
    milliseconds, :meth:`deferred`): stopping halfway through it would leave
    weights of no iteration at all.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._deferring = False
        self._pending = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave the signals alone
            pass
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:  # the second: stop now (or right after the weight update)
            if self._deferring:
                self._pending = signum
                return
            raise StopRequested(f"{name} again: stopped at once", signum)
        self.signum = signum
        tqdm.write(f"{name}: finishing this iteration and writing a checkpoint (send it again "
                   "to stop at once)")

    def raise_if_requested(self, comm=None) -> None:
        """Stop here (``StopRequested``) if a signal came since the last check.

        With ``comm`` (a :class:`~minifpn.engine.distributed.Communicator`), if
        a signal came to *any* of its processes: then every one stops here,
        at the same iteration, and the error is marked ``collective``.
        """
        if comm is None or comm.size == 1:
            if self.requested:
                raise StopRequested(f"{signal.Signals(self.signum).name}: stopped", self.signum)
        elif comm.any(self.requested):
            signum = self.signum or signal.SIGTERM
            why = signal.Signals(self.signum).name if self.requested else "another process"
            error = StopRequested(f"{why}: stopped (all {comm.size} processes)", signum)
            error.collective = True
            raise error

    @contextlib.contextmanager
    def deferred(self):
        """Hold back a 'stop at once' until the block is over."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            raise StopRequested(f"{signal.Signals(self._pending).name} again: stopped at once",
                                self._pending)

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        return False
