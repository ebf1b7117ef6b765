"""Only the owner gets in: callers of another uid are refused everything but Introspect/Peer."""

from __future__ import annotations

from jeepney import DBusAddress, MessageFlag, new_method_call

from agent_support import KI, MANAGER, MI, Client
from conftest import PrivateBus, as_other_user, requires_root
from keyagent import protocol

DENIED = "org.freedesktop.DBus.Error.AccessDenied"
KEY = protocol.key_path("mine")
OM = "org.freedesktop.DBus.ObjectManager"
PEER = "org.freedesktop.DBus.Peer"
PROPS = "org.freedesktop.DBus.Properties"


def as_other(bus: PrivateBus, *args: str) -> tuple[int, str]:
    out = bus.run(
        ["gdbus", "call", "--session", "--dest", protocol.BUS_NAME, *args],
        check=False,
        preexec_fn=as_other_user,
    )
    return out.returncode, out.stdout + out.stderr


@requires_root
def test_other_uid_is_denied_everything_but_introspect_and_ping(permissive_bus: PrivateBus) -> None:
    bus = permissive_bus
    with Client(bus.address) as me:
        me.create("mine")
        me.unlock("mine")
    props = PROPS
    denied_calls = [
        ("--object-path", MANAGER, "--method", f"{props}.Get", MI, "Version"),
        ("--object-path", MANAGER, "--method", f"{props}.GetAll", MI),
        ("--object-path", MANAGER, "--method", f"{props}.Set", MI, "Version", "<'x'>"),
        ("--object-path", KEY, "--method", f"{props}.Get", KI, "Recipient"),
        (
            "--object-path",
            MANAGER,
            "--method",
            "org.freedesktop.DBus.ObjectManager.GetManagedObjects",
        ),
        ("--object-path", MANAGER, "--method", f"{MI}.CreateKey", "theirs", "pw", "{}"),
        ("--object-path", MANAGER, "--method", f"{MI}.LockAll"),
        ("--object-path", MANAGER, "--method", f"{MI}.Encrypt", "['mine']", "b'x'", "{}"),
        ("--object-path", KEY, "--method", f"{KI}.Lock"),
        ("--object-path", KEY, "--method", f"{KI}.Export", "pw"),
        ("--object-path", KEY, "--method", f"{KI}.Unlock", "pw", "{}"),
    ]
    for call in denied_calls:
        code, text = as_other(bus, *call)
        assert code != 0 and DENIED in text, (call, text)
    code, text = as_other(
        bus, "--object-path", MANAGER, "--method", "org.freedesktop.DBus.Introspectable.Introspect"
    )
    assert code == 0 and "CreateKey" in text
    # ... but sees no children: not even which keys exist (issue 13).
    code, text = as_other(
        bus, "--object-path", f"{MANAGER}/keys", "--method",
        "org.freedesktop.DBus.Introspectable.Introspect",
    )  # fmt: skip
    assert code == 0 and "<node" in text and "mine" not in text, text
    with Client(bus.address) as me:
        mine = me.call(f"{MANAGER}/keys", "org.freedesktop.DBus.Introspectable", "Introspect")[0]
        assert '<node name="mine"' in mine  # the owner sees them
    code, text = as_other(
        bus, "--object-path", MANAGER, "--method", "org.freedesktop.DBus.Peer.Ping"
    )
    assert code == 0, text
    # A fire-and-forget call (no reply expected) is not run either.
    out = bus.run(
        ["dbus-send", "--session", f"--dest={protocol.BUS_NAME}", MANAGER, f"{MI}.LockAll"],
        check=False,
        preexec_fn=as_other_user,
    )
    assert out.returncode == 0
    with Client(bus.address) as me:
        assert me.prop(KEY, KI, "Locked") is False  # LockAll from the other uid did nothing
        assert me.prop(MANAGER, MI, "Keys") == [KEY]


def test_first_calls_of_a_new_caller_are_answered_in_order(private_bus: PrivateBus) -> None:
    """A new sender's calls wait for its credentials lookup, then replay in order."""
    with Client(private_bus.address) as warm:
        warm.prop(MANAGER, MI, "Version")  # activate the agent
    with Client(private_bus.address) as fresh:
        addr = DBusAddress(
            MANAGER, bus_name=protocol.BUS_NAME, interface="org.freedesktop.DBus.Properties"
        )
        serials = list(range(100, 140))
        data = b"".join(
            new_method_call(addr, "Get", "ss", (MI, "Version" if s % 2 else "Keys")).serialise(
                serial=s
            )
            for s in serials
        )
        fresh.conn.sock.sendall(data)
        order: list[int] = []
        while len(order) < len(serials):
            msg = fresh.conn.receive(timeout=10)
            if msg.header.message_type.name == "signal":
                continue
            assert msg.header.message_type.name == "method_return"
            order.append(msg.header.fields[5])  # reply_serial
            expected = ("s", "0.1.0") if order[-1] % 2 else ("ao", [])
            assert msg.body[0] == expected
        assert order == serials


def test_one_way_calls_from_the_owner_run_in_order(private_bus: PrivateBus) -> None:
    """A NO_REPLY_EXPECTED call of a new caller is queued, checked and run like any other.

    (A caller that exits right after a one-way call cannot be checked any more: the bus no
    longer knows its uid, so such a call is dropped, as any unverifiable call is.)
    """
    with Client(private_bus.address) as me:
        me.create("nr")
        me.unlock("nr")
    with Client(private_bus.address) as fresh:
        addr = DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=MI)
        msg = new_method_call(addr, "LockAll")
        msg.header.flags |= MessageFlag.no_reply_expected
        fresh.conn.send(msg)
        # the same connection asks next: the replay keeps the order
        assert fresh.prop(protocol.key_path("nr"), KI, "Locked") is True


def test_a_fire_and_forget_lock_all_from_a_sender_already_gone_locks(
    private_bus: PrivateBus,
) -> None:
    """A hotkey's `dbus-send` (no reply wanted) exits before the agent can read its uid: its
    LockAll must still lock every key (issue 13). Only LockAll is run for such a sender
    (`Method.orphan_safe`); anything else from it is denied, as before."""
    from agent_support import wait_until

    with Client(private_bus.address) as c:
        c.create("hotkey")
        c.unlock("hotkey")
        gone = Client(private_bus.address)
        msg = new_method_call(
            DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=MI), "LockAll"
        )
        msg.header.flags |= MessageFlag.no_reply_expected
        gone.conn.send(msg)
        gone.close()  # before the agent's credentials lookup, as dbus-send does
        assert wait_until(lambda: c.prop(protocol.key_path("hotkey"), KI, "Locked") is True, 10)
