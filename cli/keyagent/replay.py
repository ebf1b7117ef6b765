"""A pipe input that can be given to the agent a second time.

`decrypt` learns that a key is locked (or that the file wants a passphrase) only after the agent
has read the file's header. A regular file is then simply rewound; a pipe cannot be. For a pipe,
the data goes to the agent through a pipe of our own, fed by a thread that keeps the first bytes
it read: the header errors come early, so a retry replays those bytes and carries on reading.
"""

from __future__ import annotations

import os
import threading
from typing import Final

#: Bytes kept for a replay: far more than any header plus the agent's read-ahead.
DEFAULT_KEEP: Final = 4 * 1024 * 1024
_CHUNK: Final = 256 * 1024


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ReplayableInput:
    """Feeds ``src`` to the agent through fresh pipes, replaying what an earlier try consumed."""

    def __init__(self, src: int, keep: int = DEFAULT_KEEP) -> None:
        self.src = src
        self.keep = keep
        self._history = bytearray()
        self._overflow = False
        self._eof = False
        self._thread: threading.Thread | None = None
        self.read_error: OSError | None = None

    def can_replay(self) -> bool:
        """True while everything read so far is still kept (and no read failed)."""
        return not self._overflow and self.read_error is None

    def start(self) -> int:
        """A new pipe's read end for the agent; the caller closes it after the call."""
        assert self._thread is None, "finish() the previous try first"
        r, w = os.pipe()
        replay = bytes(self._history)
        self._thread = threading.Thread(target=self._pump, args=(w, replay), daemon=True)
        self._thread.start()
        return r

    def finish(self) -> None:
        """Wait for the feeding thread: it stops at the end of input or when the agent hangs up."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _pump(self, w: int, replay: bytes) -> None:
        try:
            if replay:
                _write_all(w, replay)
            while not self._eof:
                try:
                    chunk = os.read(self.src, _CHUNK)
                except OSError as e:
                    self.read_error = e  # the agent sees a cut-short file and says so
                    return
                if not chunk:
                    self._eof = True
                    return
                if not self._overflow:
                    if len(self._history) + len(chunk) <= self.keep:
                        self._history += chunk  # kept before writing: a failed write loses nothing
                    else:
                        self._overflow = True
                        self._history = bytearray()
                _write_all(w, chunk)
        except BrokenPipeError:
            pass  # the agent stopped reading (an error reply is on its way)
        finally:
            os.close(w)
