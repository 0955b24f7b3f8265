"""Failing together: agreed checks and a prompt abort across the processes of one job.

A pod job is many processes that meet in collectives. If one of them raises and exits, the others
wait in their next collective (or in the shutdown barrier) for minutes. Two mechanisms prevent that,
both over the key-value store of `jax.distributed`'s coordination service (no device collective,
so they work before the mesh exists and while a peer is stuck):

- `agree(name, error)`: every process posts the outcome of a check that can fail (its own error or
  None) and reads everyone's; if any process failed, all raise, the failed ones their own error, the
  others `PeerFailed` naming the process and its message, with the same exit code.
- `abort(code, message)`: a process that fails outside an agreed check posts an abort record and
  exits; a watchdog thread in every other process sees it within a second and exits too.

Every process leaves through jax's own shutdown (bounded), so each one exits with its own code
whatever the timing: none is aborted by process 0's coordination service going away under it.

A process killed outright (SIGKILL, a lost host) cannot post anything: the coordination service
notices its missing heartbeat after `distributed.heartbeat_timeout_s` and stops the others.
Single-process runs skip all of this.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time

import jax

from jz3_jax.errors import UserError

ABORT_KEY = "jz3/abort"
_POLL_MS = 1000
_EXIT_GRACE_S = 20.0  # how long a failing process waits for its peers in the shutdown barrier
TEST_EXIT_DELAY_ENV = "JZ3_TEST_EXIT_DELAY_S"  # tests only: processes other than 0 pause before exiting
_exiting = threading.Lock()
_counter = itertools.count()
_watchdog: threading.Thread | None = None


class PeerFailed(UserError):
    """Another process failed a check that this process passed; `exit_code` is the failed one's."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_of(error: BaseException) -> int:
    """The launcher's exit code for an exception: its own code, 2 for bad input, else 1."""
    if isinstance(error, PeerFailed):
        return error.exit_code
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return 2 if isinstance(error, UserError) else 1


def _client():
    """The coordination-service client, or None in a single-process run."""
    if jax.process_count() == 1:
        return None
    from jax._src import distributed

    return distributed.global_state.client


def _encode(code: int, message: str) -> str:
    return f"{code}\n{message}"


def _decode(value: str) -> tuple[int, str]:
    code, _, message = value.partition("\n")
    return int(code), message


def _peer_abort(client) -> tuple[int, str] | None:
    try:
        value = client.key_value_try_get(ABORT_KEY)
    except Exception:  # not set (the client raises NOT_FOUND)
        return None
    return _decode(value)


def agree(name: str, error: BaseException | None) -> None:
    """Every process calls this at the same point with its own outcome; raises if any process failed.

    Waits for every process (a slow peer is fine; a dead one is caught by the heartbeat, an aborted
    one by its abort record). `error` itself is re-raised in the process that had it.
    """
    client = _client()
    if client is None:
        if error is not None:
            raise error
        return
    seq = next(_counter)  # every process makes the same calls in the same order
    me, count = jax.process_index(), jax.process_count()
    outcome = "ok" if error is None else _encode(exit_code_of(error), f"{type(error).__name__}: {error}")
    client.key_value_set(f"jz3/agree/{seq}/{name}/{me}", outcome)
    failures = []
    for peer in range(count):
        value = _blocking_get(client, f"jz3/agree/{seq}/{name}/{peer}")
        if value != "ok":
            failures.append((peer, *_decode(value)))
    if error is not None:
        raise error
    if failures:
        peer, code, message = failures[0]
        raise PeerFailed(f"process {peer} failed ({name}): {message}", code)


def _blocking_get(client, key: str) -> str:
    while True:
        try:
            return client.blocking_key_value_get(key, _POLL_MS)
        except Exception:  # timed out: a peer is still working, unless it aborted
            if _exiting.locked():  # the watchdog is shutting the client down: it exits this process
                threading.Event().wait()
            aborted = _peer_abort(client)
            if aborted is not None:
                _exit_now(*aborted, reason="a peer aborted")


def abort(code: int, message: str) -> None:
    """Tell the other processes this one failed, then leave with them (`_exit_now`) and exit."""
    client = _client()
    if client is not None:
        try:
            client.key_value_set(ABORT_KEY, _encode(code, f"process {jax.process_index()}: {message}"))
        except Exception:  # another process aborted first
            pass
    _exit_now(code, message, reason="failed")


def _exit_now(code: int, message: str, reason: str) -> None:
    """Leave the job together with the other processes, then exit with `code`. Only the first caller
    (main thread or watchdog) decides the code; a later one waits here for that exit."""
    if not _exiting.acquire(blocking=False):
        threading.Event().wait()
    logger = logging.getLogger("jz3_jax")
    logger.error("process %d %s (%s); exiting with %d", jax.process_index(), reason, message, code)
    for handler in logger.handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    _leave_together()
    delay = os.environ.get(TEST_EXIT_DELAY_ENV, "")
    if delay and jax.process_index() != 0:
        time.sleep(float(delay))
    os._exit(code)


def _leave_together() -> None:
    """Shut the distributed runtime down the way a normal exit does (`jax.distributed.shutdown`).

    Process 0 hosts the coordination service. Once it exits, a peer whose client is still connected
    notices the lost service and the runtime aborts it (SIGABRT) before it reaches its own exit code;
    how soon is a matter of scheduling. In jax's shutdown every process waits in a barrier until all
    have arrived, and each one's client has stopped heartbeats and error polling when it returns:
    after that no timing of process 0's exit can abort a peer. The wait is bounded: a peer that is
    stuck or gone cannot hold this process for more than `_EXIT_GRACE_S` (a dead peer is reported
    by the heartbeat anyway)."""
    if _client() is None:
        return
    done = threading.Event()

    def shutdown():
        try:
            jax.distributed.shutdown()
        except Exception:  # a peer that is gone, or the service itself
            pass
        done.set()

    threading.Thread(target=shutdown, name="jz3-shutdown", daemon=True).start()
    done.wait(_EXIT_GRACE_S)


def start_watchdog() -> None:
    """Start (once) the thread that exits this process when a peer posts an abort."""
    global _watchdog
    client = _client()
    if client is None or _watchdog is not None:
        return

    def watch():
        while True:
            aborted = _peer_abort(client)
            if aborted is not None:
                _exit_now(*aborted, reason="stops because a peer failed")
            time.sleep(_POLL_MS / 1000)

    _watchdog = threading.Thread(target=watch, name="jz3-peer-watchdog", daemon=True)
    _watchdog.start()
