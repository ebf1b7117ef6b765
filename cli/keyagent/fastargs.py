"""The argparse-free reader of `keyagent.grammar`'s table: the plainly spelled command lines.

Loaded at every start (no `typing` at run time); argparse (`keyagent.args`) reads the rest.
"""

from __future__ import annotations

from keyagent.grammar import APPEND, CHOICE, COMMANDS, DEBUG, DURATION, FD, FLAG, Arg, Args, Opt

TYPE_CHECKING = False  # `typing` costs milliseconds; mypy reads this name as typing's
if TYPE_CHECKING:
    from collections.abc import Sequence


def parse_fast(argv: Sequence[str]) -> Args | None:
    """The arguments of a plainly spelled command line, read without argparse.

    Only the simplest spellings are read: exact option names, each value a separate word that
    does not start with '-', and the positional words in one run. For anything else (help and
    errors included) this returns None and argparse parses the line; where it answers, the
    answer equals argparse's.
    """
    i, debug = 0, False
    while i < len(argv) and argv[i] == "--debug":
        debug, i = True, i + 1
    command = COMMANDS.get(argv[i]) if i < len(argv) else None
    if command is None:
        return None
    values: dict[str, object] = {"debug": debug, "command": command.name, "func": command.run}
    by_flag = {f: o for o in command.options for f in o.flags}
    by_flag["--debug"] = DEBUG
    for o in command.options:
        values[o.dest] = o.default
    words: list[str] = []
    rest, j, run_ended = argv[i + 1 :], 0, False
    while j < len(rest):
        arg = rest[j]
        j += 1
        if arg == "-" or (arg and not arg.startswith("-")):
            if run_ended:
                return None  # positionals split by options: argparse's rules, not ours
            words.append(arg)
            continue
        run_ended = bool(words)
        opt = by_flag.get(arg)
        if opt is None:
            return None
        if opt.kind == FLAG:
            values[opt.dest] = True
            continue
        if j == len(rest) or not rest[j] or rest[j].startswith("-"):
            return None
        value = _value(opt, rest[j])
        j += 1
        if value is None:
            return None
        if opt.kind == APPEND:
            old = values[opt.dest]
            value = [*old, value] if isinstance(old, list) else [value]
        values[opt.dest] = value
    placed = _place(command.args, words)
    if placed is None:
        return None
    values.update(placed)
    return Args(**values)


def _value(opt: Opt, text: str) -> object:
    """An option's value as argparse converts it, or None where argparse would refuse it."""
    if opt.kind == FD:
        return int(text) if text.isascii() and text.isdigit() else None
    if opt.kind == CHOICE:
        return text if text in opt.choices else None
    if opt.kind == DURATION:
        from keyagent.durations import parse_duration

        try:
            return parse_duration(text)
        except ValueError:
            return None
    return text


def _place(args: Sequence[Arg], words: Sequence[str]) -> dict[str, object] | None:
    """The positional words given to their arguments in order, or None when they do not fit."""
    placed: dict[str, object] = {}
    k = 0
    for n, arg in enumerate(args):
        if arg.nargs == "+":
            if n != len(args) - 1 or k == len(words):
                return None
            placed[arg.dest], k = list(words[k:]), len(words)
        elif k < len(words):
            placed[arg.dest], k = words[k], k + 1
        elif arg.nargs == "?":
            placed[arg.dest] = None
        else:
            return None
    return placed if k == len(words) else None
