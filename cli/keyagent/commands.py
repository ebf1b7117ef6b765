"""The key-management commands: init, import, export, passwd, delete, unlock, lock, recipient,
list, status, install, uninstall."""

from __future__ import annotations

import sys
import time

from keyagent.context import (
    CommandError,
    Context,
    UsageError,
    askpass_wanted,
    key_name,
    open_output,
    refuse_binary_terminal,
)
from keyagent.prompt import ask_yes_no
from keyagent.protocol import BadPassphrase, Failed
from keyagent.status import list_text, status_document, status_json, status_text

TTY_TRIES = 3
_ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
_ARMOR_END = "-----END AGE ENCRYPTED FILE-----"


def armor(data: bytes) -> bytes:
    """age's ASCII armor (strict PEM: 64-column base64 lines)."""
    import base64  # here: it imports `re`, milliseconds at every start of `status`

    b64 = base64.b64encode(data).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return ("\n".join([_ARMOR_BEGIN, *lines, _ARMOR_END]) + "\n").encode()


def dearmor(data: bytes) -> bytes:
    """The binary age file inside armor made by `armor` (what the agent's Export returns)."""
    import base64

    lines = data.decode("ascii").strip().split("\n")
    if len(lines) < 2 or lines[0] != _ARMOR_BEGIN or lines[-1] != _ARMOR_END:
        raise CommandError("The agent's export is not an armored age file.")
    return base64.b64decode("".join(lines[1:-1]), validate=True)


def cmd_init(ctx: Context) -> int:
    a = ctx.args
    name = key_name(a.name)
    client = ctx.client()
    client.owner()  # fail early, before asking for a passphrase
    passphrase = ctx.passphrases.new(
        f"New passphrase for key '{name}': ", f"Confirm passphrase for key '{name}': "
    )
    recipient = client.create_key(name, passphrase, type=a.type, label=a.label or "")
    print(recipient)
    return 0


def parse_identity_file(text: str, source: str) -> str:
    """The one `AGE-SECRET-KEY-…` line of an identity file; comments and blank lines skipped."""
    found: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("AGE-SECRET-KEY-"):
            raise CommandError(f"{source}: line {number} is not an age identity.")
        found.append(line)
    if not found:
        raise CommandError(f"{source} holds no age identity (AGE-SECRET-KEY-...).")
    if len(found) > 1:
        raise CommandError(f"{source} holds {len(found)} identities: import one at a time.")
    return found[0]


def cmd_import(ctx: Context) -> int:
    from pathlib import Path  # here: pathlib costs milliseconds at every start of `status`

    a = ctx.args
    name = key_name(a.name)
    source = "standard input" if a.file in (None, "-") else f"'{a.file}'"
    try:
        data = sys.stdin.buffer.read() if a.file in (None, "-") else Path(a.file).read_bytes()
        text = data.decode()
    except OSError as e:
        raise CommandError(f"Cannot read {source}: {e.strerror}.") from None
    except UnicodeDecodeError:
        raise CommandError(f"{source} is not an age identity file or SSH key.") from None
    from keyagent import sshtext  # a text check: the agent opens SSH keys itself

    if sshtext.looks_like_private_key(text):
        from keyagent.sshimport import import_ssh_key

        import_ssh_key(ctx, name, text, source)
    elif sshtext.is_public_key(text):
        raise CommandError(f"{source} is an SSH public key: import the private key file.")
    else:
        identity = parse_identity_file(text, source)
        client = ctx.client()
        client.owner()
        passphrase = ctx.passphrases.new(
            f"New passphrase for key '{name}': ", f"Confirm passphrase for key '{name}': "
        )
        client.import_key(name, identity, passphrase, label=a.label or "")
    print(ctx.client().key(name).recipient)
    return 0


def cmd_export(ctx: Context) -> int:
    a = ctx.args
    name = key_name(a.name)
    refuse_binary_terminal(a.output, a.armor)
    client = ctx.client()
    client.key(name)  # NoSuchKey before the prompt
    passphrase = ctx.passphrases.get(f"Passphrase for key '{name}': ")
    data = client.export(name, passphrase)  # always armored
    if not a.armor:
        data = dearmor(data)
    with open_output(a.output, private=True) as sink:
        sink.write(data)
        sink.commit()
    return 0


def cmd_passwd(ctx: Context) -> int:
    name = key_name(ctx.args.name)
    client = ctx.client()
    client.key(name)
    old = ctx.passphrases.get(f"Current passphrase for key '{name}': ")
    new = ctx.passphrases.new(f"New passphrase for key '{name}': ", "Confirm new passphrase: ")
    client.change_passphrase(name, old, new)
    return 0


def cmd_delete(ctx: Context) -> int:
    a = ctx.args
    name = key_name(a.name)
    ask_agent = askpass_wanted(ctx)
    client = ctx.client()
    info = client.key(name)
    if not a.yes:
        if not ctx.passphrases.interactive():
            raise UsageError(
                f"Refusing to delete key '{name}' without confirmation.", "add --yes to confirm"
            )
        if not ask_yes_no(f"Delete key '{name}' for good? This cannot be undone. [y/N] "):
            raise CommandError(f"Key '{name}' was not deleted.")
    passphrase = None
    if info.locked and not ctx.passphrases.from_fd and ask_agent:
        client.unlock_by_askpass(name, idle_timeout=60)  # proves the passphrase; then deleted
    elif ctx.passphrases.from_fd or info.locked:
        passphrase = ctx.passphrases.get(f"Passphrase for key '{name}' (to delete it): ")
    client.delete_key(name, passphrase)
    return 0


def cmd_unlock(ctx: Context) -> int:
    """Unlock each named key in turn (with --passphrase-fd, one line per key, in order)."""
    a = ctx.args
    names = list(dict.fromkeys(key_name(n) for n in a.names))
    if a.askpass and ctx.passphrases.from_fd:
        raise UsageError("Give --askpass or --passphrase-fd, not both.")
    ask_agent = askpass_wanted(ctx)  # a usage error before the agent is asked anything
    client = ctx.client()
    for name in names:
        client.key(name)  # NoSuchKey (and the owner check) before any prompt
    for done, name in enumerate(names):
        try:
            _unlock_one(ctx, name, ask_agent)
        except BadPassphrase as e:
            if len(names) == 1:
                raise
            unlocked = ", ".join(f"'{n}'" for n in names[:done]) or "none"
            raise CommandError(
                f"Key '{name}': {e.message}", f"unlocked before it: {unlocked}"
            ) from None
    return 0


def _unlock_one(ctx: Context, name: str, ask_agent: bool) -> None:
    a, client = ctx.args, ctx.client()
    if ask_agent:
        try:
            client.unlock_by_askpass(name, idle_timeout=a.idle_timeout, max_timeout=a.max_timeout)
        except Failed as e:  # no askpass program: without a terminal, nobody to ask
            if a.askpass:
                raise
            raise UsageError(e.message, "or run on a terminal, or use --passphrase-fd N") from None
        return
    tries = 1 if ctx.passphrases.from_fd else TTY_TRIES
    for attempt in range(tries):
        prompt = f"Passphrase for key '{name}': "
        if attempt:
            prompt = f"Wrong passphrase, try again. Passphrase for key '{name}': "
        passphrase = ctx.passphrases.get(prompt)
        try:
            client.unlock_with_pipe(
                name, passphrase, idle_timeout=a.idle_timeout, max_timeout=a.max_timeout
            )
            return
        except BadPassphrase:
            if attempt == tries - 1:
                raise


def cmd_lock(ctx: Context) -> int:
    a = ctx.args
    if a.name and a.all:
        raise UsageError("Give a key name or --all, not both.")
    if a.name:
        ctx.client().lock(key_name(a.name))
    elif ctx.client().agent_running():  # no agent, no unlocked key: nothing to start
        ctx.client().lock_all()
    return 0


def cmd_recipient(ctx: Context) -> int:
    names = [key_name(n) for n in ctx.args.names]
    client = ctx.client()
    for name in names:
        print(client.key(name).recipient)
    return 0


def cmd_identity(ctx: Context) -> int:
    from keyagent.plugin.encoding import encode_identity

    info = ctx.client().key(key_name(ctx.args.name))
    sys.stdout.write(
        identity_text(info.name, info.type, info.recipient, encode_identity(info.name))
    )
    return 0


def identity_text(name: str, key_type: str, recipient: str, identity: str) -> str:
    """An identity file for age -i: comments, then the plugin identity (a name, no secret)."""
    return (
        f"# keyagent key: {name} ({key_type}); the secret key stays in the agent\n"
        f"# recipient: {recipient}\n"
        f"# use: age -d -i THIS_FILE, or age -e -i THIS_FILE (needs age-plugin-keyagent)\n"
        f"{identity}\n"
    )


def cmd_list(ctx: Context) -> int:
    keys = ctx.client().keys()
    sys.stdout.write(list_text(keys))
    if not keys and sys.stderr.isatty():
        print("keyagent: no keys yet: create one with 'keyagent init NAME'", file=sys.stderr)
    return 0


def cmd_status(ctx: Context) -> int:
    client = ctx.client()
    version = client.version()
    pid = client.agent_pid()
    keys = client.keys()
    now = time.time()
    doc = status_document(version, pid, keys, now)
    sys.stdout.write(status_json(doc) if ctx.args.json else status_text(doc, keys, now))
    return 0


def cmd_install(ctx: Context) -> int:
    from pathlib import Path

    from keyagent import install

    bindir = Path(ctx.args.bindir) if ctx.args.bindir else None
    try:
        paths = install.install(bindir)
    except FileNotFoundError as e:
        raise CommandError(f"Cannot install: {e}.", "give the directory with --bindir") from None
    except OSError as e:
        raise CommandError(f"Cannot install: {e.strerror} ({e.filename}).") from None
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_uninstall(ctx: Context) -> int:
    from keyagent import install

    try:
        paths = install.uninstall()
    except OSError as e:
        raise CommandError(f"Cannot uninstall: {e.strerror} ({e.filename}).") from None
    for p in paths:
        print(f"removed {p}")
    if not paths:
        print("nothing to remove", file=sys.stderr)
    return 0
