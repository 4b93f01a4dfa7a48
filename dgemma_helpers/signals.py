"""Ending cleanly on any signal: SIGTERM and SIGHUP take the path Ctrl-C takes.

SIGTERM is what `timeout`, systemd, docker, CI runners and Jupyter's "shut down kernel" send; SIGHUP
what a closed terminal sends. Python's default for both is to die at once, skipping every `finally`,
so a server's children and temporary files outlive it. Inside `stop_on_signals()` all three raise
`Stopped` (a KeyboardInterrupt, so every `except KeyboardInterrupt` and `finally` cleanup runs),
which records the signal; `exit_code(e)` is then the shell's convention, 128 + its number.

    with stop_on_signals():              # the CLI wraps every command in this
        try:
            for step in steps:
                with deferred():         # a signal here waits for the step's end: nothing half-done
                    work(step)
        except KeyboardInterrupt:
            save()                       # keep what can be kept, then
            raise                        # the caller exits with exit_code(e): 130, 143 or 129

Children go in their own process group (`start_group`), so that a terminal's Ctrl-C reaches only
this process, which then ends the whole group (`end_group`): nothing is left re-parented to PID 1.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived (SIGINT, SIGTERM or SIGHUP): `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def exit_code(e: BaseException) -> int:
    """128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""
    return 128 + getattr(e, "signum", signal.SIGINT)


_deferring = 0  # depth of deferred() blocks now running
_pending: int | None = None  # the signal that arrived inside them


def _raise(signum: int, _frame: Any) -> None:
    global _pending
    if _deferring:
        _pending = _pending or signum
        return
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Stopped inside the block (those not ignored on entry); the previous
    handlers come back after. Signals reach only the main thread: elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal ignored on entry stays ignored: under `nohup` SIGHUP must not stop the command.
    previous = {s: h for s in STOP_SIGNALS if (h := signal.getsignal(s)) != signal.SIG_IGN}
    for s in previous:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            # (getsignal gives None for a handler not set from Python: put Python's default back then.)
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def deferred() -> Iterator[None]:
    """A block that a stop signal does not cut short: one arriving inside is raised when it ends.
    (Within stop_on_signals(); outside it Python's own handlers are in place and nothing is deferred.)"""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            raise Stopped(signum)


def start_group(cmd: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Popen(cmd) as the leader of its own process group (and session), for end_group().

    On Linux the leader also gets SIGTERM if this process dies without ending it (SIGKILL, a crash:
    no handler runs then), so a server never outlives the command that started it. (Only from the
    main thread: the kernel sends it when the forking thread ends, and a worker thread ends early.)"""
    on_main = threading.current_thread() is threading.main_thread()
    preexec = _terminate_with_parent if on_main and _PRCTL is not None else None
    # (preexec_fn runs between fork and exec: it only calls the prctl looked up below, taking no lock.)
    return subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=preexec, **popen_kwargs)  # noqa: PLW1509


# Looked up once, in the parent: after a fork only the call itself is safe.
_PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


def _terminate_with_parent() -> None:
    """In the child, before exec: prctl(PR_SET_PDEATHSIG, SIGTERM)."""
    _PRCTL(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG


def end_group(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """End `process` and every process in its group: SIGTERM, then SIGKILL to whatever is left after
    grace_s (the leader may exit first and leave its children behind). Returns once the leader is reaped."""
    group = process.pid
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with deferred():  # a second signal must not leave the group half-ended
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        while _signal_group(group, 0) and time.monotonic() < deadline:  # signal 0: is anyone left?
            time.sleep(0.1)
        _signal_group(group, signal.SIGKILL)
        process.wait()


def _signal_group(group: int, sig: int) -> bool:
    """Send `sig` to the group; False when the group is gone already."""
    try:
        os.killpg(group, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
