"""acmebot run in the test's own process, with a clock the test sets.

`main(argv, services)` takes its clock, sleep and HTTP sessions from a
`Services`; `FakeClock` is a clock a test sets and moves, so renewal windows,
rollover ages, ARI checks and expiry notices are reached by moving the clock
instead of sleeping or editing state files.  `run_main` runs acmebot like
`run_acmebot` does (same arguments, a CompletedProcess-like result), in process.
"""

import contextlib
import datetime
import io
import os
import threading
import time
from types import SimpleNamespace

from lab import acmebot_module

def acmebot():
    """The acmebot module (lab.acmebot_module: one module per process)."""
    return acmebot_module()


class FakeClock:
    """A clock the test sets (an aware UTC datetime) and moves.  sleep() moves
    it instead of waiting; with real_sleep it waits too: the lab's servers
    live in real time, and a run polling them must give them the time it
    asks for.  monotonic() is the seconds slept, so acmebot's deadlines are
    counted in the clock's time."""

    def __init__(self, now=None, real_sleep=False):
        self.now = now or datetime.datetime.now(datetime.timezone.utc)
        self.real_sleep = real_sleep
        self.slept = 0.0
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            return self.now

    def set(self, when):
        with self._lock:
            self.now = when

    def advance(self, **delta):
        with self._lock:
            self.now += datetime.timedelta(**delta)

    def sleep(self, seconds):
        with self._lock:
            self.now += datetime.timedelta(seconds=seconds)
            self.slept += seconds
        if self.real_sleep:
            time.sleep(seconds)

    def monotonic(self):
        with self._lock:
            return self.slept

    def services(self, **more):
        """acmebot's Services with this clock (and ``more`` seams: a session factory, say)."""
        return acmebot().Services(clock=self, sleep=self.sleep, monotonic=self.monotonic, **more)


def run_main(config_path, *args, clock=None, services=None, env=None):
    """acmebot --config CONFIG --accept-terms ARGS in process, with ``services``
    or ``clock``'s (the real ones without); returns (returncode, stdout, stderr)
    as a CompletedProcess-like namespace.  ``env`` is set for the run and put back."""
    ab = acmebot()
    out, err = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in ("ACMEBOT_PASSPHRASE", *(env or {}))}
    os.environ.pop("ACMEBOT_PASSPHRASE", None)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = ab.main(["--config", str(config_path), "--accept-terms", *map(str, args)],
                           services or (clock.services() if clock else None))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue(),
                           args=["acmebot", *map(str, args)])
