"""One log line per operation: what, who (pid), which key, and how it ended. Never secrets.

The line is written after the reply has gone out (two `call_soon` hops: dbus-fast sends an
async method's reply from the task's done callback, scheduled after anything the method
scheduled itself). Formatting and writing a record costs ~30 us, a tenth of a small
Decrypt; the caller need not wait for it. Lines keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

from keyagent.protocol import KeyAgentError
from keyagentd.bus.errors import convert
from keyagentd.bus.gate import CURRENT_CALLER
from keyagentd.bus.secretfds import option_fds
from keyagentd.bus.streams import close_fds

log = logging.getLogger("keyagentd.ops")

P = ParamSpec("P")
R = TypeVar("R")

#: The key an operation is about, for its log line (set by the method as it learns it).
_KEY: ContextVar[str] = ContextVar("keyagent_op_key", default="")


#: Called as each operation ends: (operation, key or "", outcome); see `set_operation_hook`.
OperationHook = Callable[[str, str, str], None]
_hook: OperationHook | None = None


def set_operation_hook(hook: OperationHook | None) -> None:
    """Also call ``hook(operation, key, outcome)`` as each operation ends, on the event loop
    and in the method's context (`CURRENT_CALLER` names the caller); None removes it. The
    agent's AccessLog signal uses it. ``outcome`` is "ok", an error's short name, or
    "error" for an unexpected exception."""
    global _hook
    _hook = hook


def note_key(name: str) -> None:
    _KEY.set(name)


def operation(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate an async D-Bus method: map its errors (see errors.py) and log one line.

    `functools.wraps` keeps the annotations dbus-fast reads for the signature.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            fds = option_fds(args)  # the call's option fds live as long as the call
            try:
                with _logged(name, args):
                    return await fn(*args, **kwargs)
            finally:
                close_fds(fds)

        return wrapper

    return decorate


def sync_operation(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """`operation` for a method that runs to completion at once: it takes effect before
    the next message of the same caller is dispatched (LockAll then Get sees it locked)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with _logged(name, args):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


@contextlib.contextmanager
def _logged(name: str, args: tuple[object, ...]) -> Iterator[None]:
    """The body of an operation named ``name`` on ``args[0]``: its errors are mapped (see
    errors.py) and it logs one line as it ends."""
    _KEY.set(getattr(args[0], "key_name", "") if args else "")
    try:
        yield
    except Exception as exc:  # every error is mapped; none escapes raw
        outcome = exc.short_name if isinstance(exc, KeyAgentError) else "error"
        _line(name, outcome)
        raise convert(exc) from None
    _line(name, "ok")


def _line(op: str, outcome: str) -> None:
    hook = _hook
    if hook is not None:
        try:
            hook(op, _KEY.get(), outcome)
        except Exception:  # a broken observer must not change the caller's answer
            log.exception("The operation hook failed")
    if not log.isEnabledFor(logging.INFO):
        return
    caller = CURRENT_CALLER.get()
    pid = caller.pid if caller is not None else None
    args = (op, pid if pid is not None else "-", _KEY.get() or "-", outcome)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on the event loop (unit tests): write it now
        _emit(*args)
        return
    loop.call_soon(loop.call_soon, _emit, *args)


def _emit(op: str, pid: object, key: str, outcome: str) -> None:
    log.info("%s pid=%s key=%s: %s", op, pid, key, outcome)
