"""`keyagent encrypt` and `keyagent decrypt`: files travel to the agent as file descriptors.

Decrypting a file whose key is locked prompts for that key's passphrase, unlocks it through a
pipe and tries again from the start of the input; without a terminal (or with --askpass) the
agent asks at the desktop instead, within the same call. A passphrase-encrypted file prompts
for the file's passphrase. Both read the input a second time: a file is rewound, a pipe is replayed
(keyagent.replay), a terminal cannot be.
"""

from __future__ import annotations

import functools
import os
import sys

from keyagent.context import (
    CommandError,
    Context,
    Sink,
    UsageError,
    askpass_wanted,
    key_name,
    open_input,
    open_output,
    refuse_binary_terminal,
)
from keyagent.output import PROGRESS_THRESHOLD, Progress, fd_position, input_size
from keyagent.prompt import NoPassphraseSource
from keyagent.protocol import BadPassphrase, Locked

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    from keyagent.replay import ReplayableInput

    T = TypeVar("T")

#: Tries for a passphrase typed at the terminal (the agent also slows down guessing).
TTY_TRIES = 3


def read_recipients_file(path: str) -> list[str]:
    """Recipients from a file like age's -R: one per line, '#' comments and blank lines skipped.

    SSH public key lines (an ``authorized_keys`` or ``.pub`` file) go to the agent as they are
    (it skips options and comments, as age does); keys age cannot use (ecdsa, sk-*) are
    skipped here with a warning, as age does. A bad line is reported by number, not quoted
    (it might be secret).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CommandError(f"Cannot read recipients file '{path}': {e.strerror}.") from None
    except UnicodeDecodeError:
        raise CommandError(f"Recipients file '{path}' is not UTF-8 text.") from None
    out = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if (" " not in line and "\t" not in line) or _usable_ssh_line(path, number, line):
            out.append(line)  # age1... (or a key name), or an SSH line the agent parses
    if not out:
        raise CommandError(f"Recipients file '{path}' lists no recipients.")
    return out


def _usable_ssh_line(path: str, number: int, line: str) -> bool:
    """Whether an SSH line of a -R file goes to the agent: a type age cannot use is skipped
    with a warning, a line naming no key is refused (a text check: the agent parses it)."""
    from keyagent import sshtext  # only for such a line

    found = sshtext.line_key_type(line)
    if found is not None and found[0] not in sshtext.SUPPORTED:
        sentence = sshtext.unsupported_sentence(found[0])
        print(f"keyagent: warning: '{path}' line {number}: {sentence} Skipped.", file=sys.stderr)
        return False
    if found is None or not found[1]:
        raise CommandError(f"Recipients file '{path}': malformed recipient at line {number}.")
    return True


def _with_progress(ctx: Context, in_fd: int, sink: Sink, call: Callable[..., T]) -> T:
    """Run a streaming call, with a progress line on a terminal for big or unknown input."""
    total = input_size(in_fd)
    wanted = (
        sys.stderr.isatty()
        and not os.isatty(in_fd)
        and (total is None or total > PROGRESS_THRESHOLD)
        and not ctx.args.quiet
    )
    if not wanted:
        return call(progress=None)
    seekable = fd_position(in_fd) is not None
    start = fd_position(in_fd) or 0

    def done() -> int | None:
        if seekable:
            pos = fd_position(in_fd)
            return None if pos is None else pos - start
        return sink.size()

    bar = Progress(done, None if total is None else total - start)
    try:
        return call(progress=bar)
    finally:
        bar.finish()


def cmd_encrypt(ctx: Context) -> int:
    a = ctx.args
    recipients = list(a.recipient or [])
    for path in a.recipients_file or []:
        recipients.extend(read_recipients_file(path))
    recipients.extend(key_name(k) for k in a.key or [])
    if a.passphrase and recipients:
        raise UsageError("-p/--passphrase cannot be combined with -r, -R or -k.")
    if not a.passphrase and not recipients:
        raise UsageError(
            "Nothing to encrypt to.",
            "give -r RECIPIENT, -k KEY (repeatable) or -p for a passphrase",
        )
    refuse_binary_terminal(a.output, a.armor)
    client = ctx.client()
    client.owner()  # fail early (agent missing, other uid) before prompting
    passphrase = None
    if a.passphrase:
        passphrase = ctx.passphrases.new("Enter passphrase: ", "Confirm passphrase: ")
    with open_input(a.input) as in_fd, open_output(a.output, private=False) as sink:
        call = functools.partial(
            client.encrypt_fd, recipients, in_fd, sink.fd, armor=a.armor, passphrase=passphrase
        )
        tried: set[str] = set()
        while True:
            try:
                _with_progress(ctx, in_fd, sink, call)
                break
            except Locked as e:
                # A key whose recipient the agent has not verified since it started: refused
                # before any input was read, so unlocking it and trying again is safe.
                if not (ctx.passphrases.from_fd or ctx.passphrases.interactive()):
                    hint = f"run 'keyagent unlock {e.names[0]}'" if e.names else ""
                    raise CommandError(e.message, hint) from None
                _unlock_candidates(ctx, e, tried)
        sink.commit()
    return 0


def _rewinder(in_fd: int) -> Callable[[], bool]:
    """A function that puts the input back where it started; False when it cannot."""
    start = fd_position(in_fd)

    def rewind() -> bool:
        if start is None:
            return False
        os.lseek(in_fd, start, os.SEEK_SET)
        return True

    return rewind


def _cannot_retry(err: Locked | BadPassphrase) -> CommandError:
    if isinstance(err, Locked) and err.names:
        hint = f"the input cannot be read twice: run 'keyagent unlock {err.names[0]}' first"
    else:
        hint = "the input cannot be read twice: give the file name instead of a pipe"
    return CommandError(err.message, hint)


def _unlock_candidates(ctx: Context, err: Locked, tried: set[str]) -> None:
    """Prompt for the locked keys that could open the file until one unlocks."""
    names = [n for n in err.names if n not in tried]
    if not names:
        raise err
    client = ctx.client()
    for name in names:
        tried.add(name)
        tries = 1 if ctx.passphrases.from_fd else TTY_TRIES
        for attempt in range(tries):
            prompt = f"Key '{name}' is locked. Passphrase for '{name}': "
            if attempt:
                prompt = f"Wrong passphrase, try again. Passphrase for '{name}': "
            passphrase = ctx.passphrases.get(prompt)
            if not passphrase and len(names) > 1:
                break  # an empty entry skips to the next candidate
            try:
                client.unlock_with_pipe(name, passphrase)
                return
            except BadPassphrase:
                if attempt == tries - 1 and name == names[-1]:
                    raise
    raise err


def cmd_decrypt(ctx: Context) -> int:
    a = ctx.args
    pin = key_name(a.key) if a.key else None
    ask_agent = askpass_wanted(ctx)
    client = ctx.client()
    with open_input(a.input) as in_fd, open_output(a.output, private=True) as sink:
        can_ask = ctx.passphrases.from_fd or ctx.passphrases.interactive()
        replay: ReplayableInput | None = None
        if fd_position(in_fd) is None and can_ask and not os.isatty(in_fd):
            from keyagent.replay import ReplayableInput  # threads: only for pipes

            replay = ReplayableInput(in_fd)  # a pipe: keep its start for a retry
        rewind = _rewinder(in_fd) if replay is None else replay.can_replay
        passphrase: str | None = None
        tried: set[str] = set()
        file_tries = 0
        while True:
            source = in_fd if replay is None else replay.start()
            try:
                try:
                    call = functools.partial(
                        client.decrypt_fd,
                        source,
                        sink.fd,
                        key=pin,
                        passphrase=passphrase,
                        askpass=ask_agent,
                    )
                    _with_progress(ctx, in_fd, sink, call)
                finally:
                    if replay is not None:
                        os.close(source)  # the feeder sees EPIPE if the agent stopped early
                        replay.finish()
                break
            except Locked as e:
                if not can_ask:
                    hint = f"run 'keyagent unlock {e.names[0]}'" if e.names else ""
                    raise CommandError(e.message, hint) from None
                if not rewind():
                    raise _cannot_retry(e) from None
                _unlock_candidates(ctx, e, tried)
            except BadPassphrase as e:
                # Without the passphrase option this means "a passphrase-encrypted file".
                file_tries += 1
                limit = 1 if ctx.passphrases.from_fd else TTY_TRIES
                if passphrase is not None and file_tries > limit:
                    raise
                if not rewind():
                    raise _cannot_retry(e) from None
                prompt = (
                    "Enter passphrase: " if passphrase is None else "Wrong passphrase, try again: "
                )
                try:
                    passphrase = ctx.passphrases.get(prompt)
                except NoPassphraseSource:
                    raise CommandError(
                        "This file is encrypted with a passphrase.",
                        "run on a terminal, or give the passphrase with --passphrase-fd N",
                    ) from None
            sink.reset()
        sink.commit()
    return 0
