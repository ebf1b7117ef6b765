"""Access: a client of another uid is refused every member of every interface of the agent,
except Introspectable and Peer. The members come from the interface XML (the contract)."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

from conftest import ROOT, PrivateBus, as_other_user, requires_root
from keyagent import protocol
from keyagent.client import Client
from reliability import kit

ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"

#: Runs as uid 65534 with the system Python (the venv's may live where it cannot go) and only
#: jeepney, from the readable copy of `other_user_pythonpath`.
#: Calls every member with well-typed dummy arguments and prints {call: result}.
OTHER_USER_SCRIPT = r"""
import json, os, sys
from jeepney import DBusAddress, MessageType, new_method_call
from jeepney.io.blocking import open_dbus_connection

calls = json.loads(sys.argv[1])
conn = open_dbus_connection(bus="SESSION", enable_fds=True)
fd = os.open("/dev/null", os.O_RDONLY)

def dummy(sig):
    # One argument per complete type of the signature: empty or zero values.
    out, i = [], 0
    while i < len(sig):
        c = sig[i]
        if c == "a":
            j = i + 1
            if sig[j] in "{(":
                depth = 0
                for k in range(j, len(sig)):
                    depth += sig[k] in "{("
                    depth -= sig[k] in "})"
                    if depth == 0:
                        break
                out.append({} if sig[j] == "{" else []); i = k + 1
            else:
                out.append(b"" if sig[j] == "y" else []); i = j + 1
            continue
        out.append({"s": "x", "o": "/x", "u": 0, "t": 0, "b": False, "h": fd}.get(c, "x")
                   if c != "v" else ("s", "x"))
        i += 1
    return tuple(out)

results = {}
for label, path, iface, member, sig, args in calls:
    addr = DBusAddress(path, "org.example.KeyAgent", iface)
    body = tuple(args) if args is not None else dummy(sig)
    msg = new_method_call(addr, member, sig or None, body)
    reply = conn.send_and_get_reply(msg, timeout=30)
    if reply.header.message_type == MessageType.error:
        from jeepney import HeaderFields
        results[label] = reply.header.fields.get(HeaderFields.error_name)
    else:
        results[label] = "OK"
print(json.dumps(results))
"""


def contract_calls(key_path: str) -> list[tuple[str, str, str, str, str, list[object] | None]]:
    """(label, path, interface, member, in-signature, args or None for dummies), all members."""
    tree = ET.parse(ROOT / "dbus" / "org.example.KeyAgent.xml")  # noqa: S314 - our own file
    paths = {protocol.MANAGER_INTERFACE: protocol.MANAGER_PATH, protocol.KEY_INTERFACE: key_path}
    calls: list[tuple[str, str, str, str, str, list[object] | None]] = []
    for iface in tree.getroot().iter("interface"):
        name = iface.attrib["name"]
        path = paths[name]
        for m in iface.iter("method"):
            sig = "".join(
                a.attrib["type"] for a in m.iter("arg") if a.attrib.get("direction", "in") == "in"
            )
            calls.append((f"{name}.{m.attrib['name']}", path, name, m.attrib["name"], sig, None))
        props = "org.freedesktop.DBus.Properties"
        for p in iface.iter("property"):
            calls.append(
                (
                    f"{name} Get {p.attrib['name']}",
                    path,
                    props,
                    "Get",
                    "ss",
                    [name, p.attrib["name"]],
                )
            )
        calls.append((f"{name} GetAll", path, props, "GetAll", "s", [name]))
        calls.append(
            (
                f"{name} Set",
                path,
                props,
                "Set",
                "ssv",
                [name, "Label" if name == protocol.KEY_INTERFACE else "Version", ("s", "x")],
            )
        )
    om = "org.freedesktop.DBus.ObjectManager"
    calls.append(("GetManagedObjects", protocol.MANAGER_PATH, om, "GetManagedObjects", "", None))
    return calls


OPEN_CALLS = [
    (
        "Introspect manager",
        protocol.MANAGER_PATH,
        "org.freedesktop.DBus.Introspectable",
        "Introspect",
        "",
        None,
    ),
    ("Ping manager", protocol.MANAGER_PATH, "org.freedesktop.DBus.Peer", "Ping", "", None),
    ("GetMachineId", protocol.MANAGER_PATH, "org.freedesktop.DBus.Peer", "GetMachineId", "", None),
]


@requires_root
def test_other_uid_is_refused_everything_but_introspection(
    permissive_bus: PrivateBus, other_user_pythonpath: str
) -> None:
    with Client(permissive_bus.address) as c:
        c.create_key("acc", "access passphrase")
        c.unlock_with_pipe("acc", "access passphrase")
        pid = c.agent_pid()
    key_path = protocol.key_path("acc")
    calls = contract_calls(key_path)
    open_calls = [
        *OPEN_CALLS,
        ("Introspect key", key_path, "org.freedesktop.DBus.Introspectable", "Introspect", "", None),
    ]
    out = subprocess.run(
        ["/usr/bin/python3", "-c", OTHER_USER_SCRIPT, json.dumps([*calls, *open_calls])],
        env={**permissive_bus.env, "PYTHONPATH": other_user_pythonpath},
        capture_output=True,
        text=True,
        preexec_fn=as_other_user,
        cwd="/",
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    not_denied = {
        k: v
        for k, v in results.items()
        if k not in dict.fromkeys(c[0] for c in open_calls) and v != ACCESS_DENIED
    }
    assert not not_denied, not_denied
    for label, *_ in open_calls:
        assert results[label] == "OK", (label, results[label])
    # Nothing the other user tried had any effect.
    with Client(permissive_bus.address) as c:
        assert c.agent_pid() == pid
        assert not c.key("acc").locked
        assert c.key_names() == ["acc"]
    kit.record("access", members_refused=len(calls), open_members_ok=len(open_calls))
