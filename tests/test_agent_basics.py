"""The agent on a real private bus: activation, introspection, and every method and property."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
from jeepney import HeaderFields, MatchRule, message_bus

from agent_support import (
    FAST_ARGS,
    KI,
    MANAGER,
    MI,
    PROPS,
    CallError,
    Client,
    gdbus,
    module_bus,
    wait_until,
)
from conftest import ROOT, PrivateBus
from keyagent import protocol
from keyagentd import age

MAX_PAYLOAD = 256 * 1024
BAD_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----\n!!!!\n-----END AGE ENCRYPTED FILE-----\n"


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    args = (*FAST_ARGS, "--max-payload", str(MAX_PAYLOAD), "--max-streams", "2")
    with module_bus(tmp_path_factory.mktemp("basics"), agent_args=args) as b:
        yield b


@pytest.fixture
def client(bus: PrivateBus) -> Iterator[Client]:
    with Client(bus.address) as c:
        yield c


def err(exc: pytest.ExceptionInfo[CallError]) -> str:
    return exc.value.short


# --- activation and introspection --------------------------------------------------------


def test_activation_with_gdbus_busctl_and_dbus_send(bus: PrivateBus) -> None:
    out = gdbus(
        bus,
        "--object-path",
        MANAGER,
        "--method",
        "org.freedesktop.DBus.Properties.Get",
        MI,
        "Version",
    )
    assert out.stdout.strip() == "(<'0.1.0'>,)"
    out = bus.run(["busctl", "--user", "get-property", protocol.BUS_NAME, MANAGER, MI, "Version"])
    assert out.stdout.strip() == 's "0.1.0"'
    out = bus.run(
        [
            "dbus-send",
            "--session",
            "--print-reply",
            f"--dest={protocol.BUS_NAME}",
            MANAGER,
            "org.freedesktop.DBus.Properties.Get",
            f"string:{MI}",
            "string:Version",
        ]
    )
    assert 'string "0.1.0"' in out.stdout


def _interfaces(xml: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml)  # noqa: S314 - our own agent's and our own file's XML
    return {i.attrib["name"]: i for i in root.findall("interface")}


EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"


def _emits(prop: ET.Element) -> str:
    values = [a.attrib["value"] for a in prop.findall("annotation") if a.attrib["name"] == EMITS]
    return values[0] if values else "true"


def _shape(iface: ET.Element) -> dict[str, object]:
    """Methods (argument names and types, in and out) and properties (type, access, whether
    they signal changes)."""
    methods = {}
    for m in iface.findall("method"):
        args = m.findall("arg")
        ins = [
            (a.attrib.get("name"), a.attrib["type"])
            for a in args
            if a.attrib.get("direction", "in") == "in"
        ]
        outs = [
            (a.attrib.get("name"), a.attrib["type"])
            for a in args
            if a.attrib.get("direction") == "out"
        ]
        methods[m.attrib["name"]] = (ins, outs)
    props = {
        p.attrib["name"]: (p.attrib["type"], p.attrib["access"], _emits(p))
        for p in iface.findall("property")
    }
    signals = sorted(s.attrib["name"] for s in iface.findall("signal"))
    return {"methods": methods, "properties": props, "signals": signals}


def test_introspection_matches_the_contract(client: Client) -> None:
    contract = _interfaces((ROOT / "dbus" / "org.example.KeyAgent.xml").read_text())
    client.create("introspected")
    live_manager = _interfaces(
        client.call(MANAGER, "org.freedesktop.DBus.Introspectable", "Introspect")[0]
    )
    live_key = _interfaces(
        client.call(
            protocol.key_path("introspected"),
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
        )[0]
    )
    assert _shape(live_manager[MI]) == _shape(contract[MI])
    assert _shape(live_key[KI]) == _shape(contract[KI])
    assert "org.freedesktop.DBus.ObjectManager" in live_manager
    assert KI not in live_manager and MI not in live_key


def test_the_contract_documents_every_member() -> None:
    contract = _interfaces((ROOT / "dbus" / "org.example.KeyAgent.xml").read_text())
    for name in (MI, KI):
        for member in contract[name]:
            if member.tag in ("method", "property", "signal"):
                docs = [
                    a.attrib["value"]
                    for a in member.findall("annotation")
                    if a.attrib["name"] == "org.gtk.GDBus.DocString"
                ]
                assert docs and docs[0].strip(), f"{name}.{member.attrib['name']} has no doc"


# --- keys --------------------------------------------------------------------------------


def test_create_key_and_its_properties(client: Client) -> None:
    path, recipient = client.m("CreateKey", "ssa{sv}", "props", "pw", {"label": ("s", "My key")})
    assert path == protocol.key_path("props")
    assert recipient.startswith("age1") and pyrage.x25519.Recipient.from_str(recipient)
    allp = dict(client.call(path, "org.freedesktop.DBus.Properties", "GetAll", "s", KI)[0])
    values = {k: v[1] for k, v in allp.items()}
    assert values["Name"] == "props" and values["Label"] == "My key"
    assert values["Type"] == "x25519" and values["Recipient"] == recipient
    assert values["Locked"] is True and values["UnlockedUntil"] == 0
    assert values["IdleTimeout"] == 600 and values["MaxTimeout"] == 7200
    assert values["Created"] > 1_600_000_000
    keys = client.prop(MANAGER, MI, "Keys")
    assert path in keys and keys == sorted(keys)
    managed = client.call(MANAGER, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")[0]
    assert managed[path][KI]["Recipient"] == ("s", recipient)
    with pytest.raises(CallError) as e:
        client.create("props")
    assert err(e) == "KeyExists"


def test_managed_objects_follow_every_change(bus: PrivateBus, client: Client) -> None:
    """GetManagedObjects answers from cached property values: after create, unlock, a use,
    lock, an expiry and delete, each key's entry equals what its own getters say (GetAll)."""
    om = "org.freedesktop.DBus.ObjectManager"

    def managed() -> dict[str, Any]:
        objects = client.call(MANAGER, om, "GetManagedObjects")[0]
        return {p: {k: v[1] for k, v in i[KI].items()} for p, i in objects.items() if KI in i}

    def live(path: str) -> dict[str, Any]:
        return {k: v[1] for k, v in client.call(path, PROPS, "GetAll", "s", KI)[0].items()}

    paths = [protocol.key_path(n) for n in ("gmo1", "gmo2")]
    recipient = client.create("gmo1", label=("s", "first"))
    client.create("gmo2")
    for path in paths:
        assert managed()[path] == live(path)
    assert managed()[paths[0]]["Recipient"] == recipient
    assert managed()[paths[0]]["Label"] == "first" and managed()[paths[0]]["Locked"] is True
    client.unlock_for("gmo1", 300, 900)
    now = managed()[paths[0]]
    assert now["Locked"] is False and (now["IdleTimeout"], now["MaxTimeout"]) == (300, 900)
    assert now == live(paths[0]) and managed()[paths[1]]["Locked"] is True
    assert client.decrypt(client.encrypt(["gmo1"], b"use"))[1] == "gmo1"
    assert managed()[paths[0]] == live(paths[0])  # a use may move UnlockedUntil
    client.k("gmo1", "Lock")
    assert managed()[paths[0]] == live(paths[0]) and managed()[paths[0]]["Locked"] is True
    client.unlock_for("gmo2", 1)
    assert managed()[paths[1]]["Locked"] is False
    assert wait_until(lambda: managed()[paths[1]]["Locked"] is True)  # expired by its timer
    assert managed()[paths[1]] == live(paths[1])
    client.m("DeleteKey", "sa{sv}", "gmo1", {"passphrase": ("s", "pw")})
    assert paths[0] not in managed() and paths[1] in managed()
    out = gdbus(bus, "--object-path", MANAGER, "--method", f"{om}.GetManagedObjects").stdout
    assert paths[1] in out and paths[0] not in out  # a C client parses the reply too


def test_create_refuses_bad_names_types_and_options(client: Client) -> None:
    for bad in ["", "a b", "x" * 65, "../etc", "é"]:
        with pytest.raises(CallError) as e:
            client.create(bad)
        assert err(e) == "InvalidName", bad
    with pytest.raises(CallError) as e:
        client.m("CreateKey", "ssa{sv}", "rsa", "pw", {"type": ("s", "rsa")})
    assert err(e) == "Unsupported"
    with pytest.raises(CallError) as e:
        client.m("CreateKey", "ssa{sv}", "badopt", "pw", {"type": ("u", 1)})
    assert e.value.name == protocol.INVALID_ARGS
    with pytest.raises(CallError) as e:
        client.m("CreateKey", "ssa{sv}", "badopt", "pw", {"colour": ("s", "red")})
    assert e.value.name == protocol.INVALID_ARGS
    with pytest.raises(CallError) as e:
        client.m("CreateKey", "ss", "badsig", "pw")
    assert e.value.name == protocol.INVALID_ARGS
    with pytest.raises(CallError) as e:
        client.create("emptypass", "")
    assert err(e) == "BadPassphrase"


def test_unlock_lock_and_properties_follow(client: Client) -> None:
    path = protocol.key_path("ul")
    client.create("ul")
    with pytest.raises(CallError) as e:
        client.unlock("ul", "wrong")
    assert err(e) == "BadPassphrase"
    client.unlock_for("ul", 100, 200)
    assert client.prop(path, KI, "Locked") is False
    assert client.prop(path, KI, "IdleTimeout") == 100
    assert client.prop(path, KI, "MaxTimeout") == 200
    assert client.prop(path, KI, "UnlockedUntil") > 1_600_000_000
    client.k("ul", "Lock")
    assert client.prop(path, KI, "Locked") is True
    assert client.prop(path, KI, "UnlockedUntil") == 0
    with pytest.raises(CallError) as e:
        client.unlock_for("ul", 0)
    assert e.value.name == protocol.INVALID_ARGS
    with pytest.raises(CallError) as e:
        client.k("ul", "Unlock", "sa{sv}", "pw", {"idle-timeout": ("s", "5")})
    assert e.value.name == protocol.INVALID_ARGS


def test_unlock_from_fd_reads_a_pipe(client: Client) -> None:
    client.create("viafd", "secret words")
    r, w = os.pipe()
    os.write(w, b"secret words\n")
    os.close(w)
    client.k("viafd", "UnlockFromFd", "ha{sv}", r, {})
    os.close(r)
    assert client.prop(protocol.key_path("viafd"), KI, "Locked") is False
    r, w = os.pipe()
    os.write(w, b"x" * (protocol.MAX_SECRET_BYTES + 1))  # fits in the pipe buffer
    os.close(w)
    with pytest.raises(CallError) as e:
        client.k("viafd", "UnlockFromFd", "ha{sv}", r, {})
    os.close(r)
    assert err(e) == "TooLarge"


def test_lock_all(client: Client) -> None:
    for name in ("la1", "la2"):
        client.create(name)
        client.unlock(name)
    client.m("LockAll")
    for name in ("la1", "la2"):
        assert client.prop(protocol.key_path(name), KI, "Locked") is True


def test_change_passphrase(client: Client) -> None:
    client.create("cp", "old")
    with pytest.raises(CallError) as e:
        client.k("cp", "ChangePassphrase", "ss", "not it", "new")
    assert err(e) == "BadPassphrase"
    client.k("cp", "ChangePassphrase", "ss", "old", "new")
    with pytest.raises(CallError):
        client.unlock("cp", "old")
    client.unlock("cp", "new")


def test_delete_key(client: Client) -> None:
    client.create("del1")
    with pytest.raises(CallError) as e:
        client.m("DeleteKey", "sa{sv}", "del1", {})
    assert err(e) == "Locked" and "'del1'" in e.value.text
    with pytest.raises(CallError) as e:
        client.m("DeleteKey", "sa{sv}", "del1", {"passphrase": ("s", "bad")})
    assert err(e) == "BadPassphrase"
    client.m("DeleteKey", "sa{sv}", "del1", {"passphrase": ("s", "pw")})
    assert protocol.key_path("del1") not in client.prop(MANAGER, MI, "Keys")
    with pytest.raises(CallError) as e:
        client.m("DeleteKey", "sa{sv}", "del1", {})
    assert err(e) == "NoSuchKey"
    with pytest.raises(CallError) as e:
        client.unlock("del1")
    assert e.value.name == "org.freedesktop.DBus.Error.UnknownMethod"
    client.create("del2")
    client.unlock("del2")
    client.m("DeleteKey", "sa{sv}", "del2", {})  # unlocked: no passphrase needed
    assert protocol.key_path("del2") not in client.prop(MANAGER, MI, "Keys")


def test_import_and_export_interoperate_with_pyrage(client: Client) -> None:
    ident = pyrage.x25519.Identity.generate()
    path = client.m("ImportKey", "sssa{sv}", "imported", str(ident), "pw", {})[0]
    assert client.prop(path, KI, "Recipient") == str(ident.to_public())
    with pytest.raises(CallError) as e:
        client.m("ImportKey", "sssa{sv}", "junk", "AGE-SECRET-KEY-1NOTAKEY", "pw", {})
    assert err(e) == "Malformed"
    with pytest.raises(CallError) as e:
        client.k("imported", "Export", "s", "wrong")
    assert err(e) == "BadPassphrase"
    exported = bytes(client.k("imported", "Export", "s", "pw")[0])
    assert exported.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    assert pyrage.passphrase.decrypt(exported, "pw").decode().strip() == str(ident)


def test_encrypt_decrypt_round_trips(client: Client) -> None:
    recipient = client.create("rt")
    client.unlock("rt")
    for data in [b"", b"hello", os.urandom(200_000)]:
        for target in ("rt", recipient):
            for armor in (False, True):
                ct = client.encrypt([target], data, armor=("b", armor))
                assert ct.startswith(b"-----BEGIN AGE") == armor
                assert client.decrypt(ct) == (data, "rt")
    # interop: pyrage encrypts to the key, the agent decrypts; and the other way
    ct = pyrage.encrypt(b"from pyrage", [pyrage.x25519.Recipient.from_str(recipient)])
    assert client.decrypt(ct) == (b"from pyrage", "rt")
    ident = pyrage.x25519.Identity.generate()
    ct = client.encrypt([str(ident.to_public())], b"to pyrage")
    assert pyrage.decrypt(ct, [ident]) == b"to pyrage"


def test_hybrid_key(client: Client) -> None:
    path, recipient = client.m(
        "CreateKey", "ssa{sv}", "pq", "pw", {"type": ("s", "mlkem768x25519")}
    )
    assert recipient.startswith("age1pq1")
    assert client.prop(path, KI, "Type") == "mlkem768x25519"
    client.unlock("pq")
    ct = client.encrypt(["pq"], b"post-quantum")
    assert client.decrypt(ct) == (b"post-quantum", "pq")
    with pytest.raises(CallError) as e:
        client.encrypt(["pq", "age1" + "q" * 58], b"x")
    assert err(e) in ("Malformed", "Unsupported")


def test_import_and_export_a_hybrid_identity(client: Client) -> None:
    identity = age.generate_identity("mlkem768x25519")
    path = client.m("ImportKey", "sssa{sv}", "pqimport", identity.encode(), "pw", {})[0]
    assert client.prop(path, KI, "Type") == "mlkem768x25519"
    assert client.prop(path, KI, "Recipient") == identity.recipient().encode()
    client.unlock("pqimport")
    ct = age.encrypt_bytes([identity.recipient()], b"pq import")
    assert client.decrypt(ct, key=("s", "pqimport")) == (b"pq import", "pqimport")
    exported = bytes(client.k("pqimport", "Export", "s", "pw")[0])
    text = age.decrypt_bytes([age.ScryptIdentity("pw")], exported).decode()
    assert text.strip() == identity.encode()


def test_passphrase_files(client: Client) -> None:
    ct = client.encrypt([], b"by passphrase", passphrase=("s", "open sesame"))
    assert pyrage.passphrase.decrypt(ct, "open sesame") == b"by passphrase"
    with pytest.raises(CallError) as e:
        client.decrypt(ct)
    assert err(e) == "BadPassphrase" and "give the passphrase option" in e.value.text
    with pytest.raises(CallError) as e:
        client.decrypt(ct, passphrase=("s", "wrong"))
    assert err(e) == "BadPassphrase"
    assert client.decrypt(ct, passphrase=("s", "open sesame")) == (b"by passphrase", "")
    with pytest.raises(CallError) as e:
        client.encrypt(["age1x"], b"x", passphrase=("s", "p"))
    assert e.value.name == protocol.INVALID_ARGS


def test_decrypt_names_locked_candidates_and_pins(client: Client) -> None:
    r1 = client.create("cand1")
    client.create("cand2")
    ct = client.encrypt([r1], b"for cand1")
    with pytest.raises(CallError) as e:
        client.decrypt(ct)
    assert err(e) == "Locked"
    names = protocol.parse_locked_names(e.value.text)
    assert "cand1" in names and "cand2" in names  # every locked X25519 key could match
    # The candidates travel as data too: (s message, as names), the sentence unchanged.
    assert e.value.data == (sorted(names),)
    assert e.value.text == protocol.locked_message(tuple(sorted(names)))
    parsed = protocol.error_from_wire(e.value.name, e.value.text, *e.value.data)
    assert isinstance(parsed, protocol.Locked) and parsed.names == tuple(sorted(names))
    client.unlock("cand2")
    with pytest.raises(CallError) as e:
        client.decrypt(ct)
    assert err(e) == "Locked" and "cand2" not in protocol.parse_locked_names(e.value.text)
    with pytest.raises(CallError) as e:
        client.decrypt(ct, key=("s", "cand2"))
    assert err(e) == "NoMatch"
    with pytest.raises(CallError) as e:
        client.decrypt(ct, key=("s", "nosuch"))
    assert err(e) == "NoSuchKey"
    client.unlock("cand1")
    assert client.decrypt(ct, key=("s", "cand1")) == (b"for cand1", "cand1")


def test_no_match_when_every_candidate_is_unlocked(private_bus: PrivateBus) -> None:
    with Client(private_bus.address) as client:
        client.create("only")
        other = pyrage.x25519.Identity.generate()
        ct = client.encrypt([str(other.to_public())], b"nobody here")
        with pytest.raises(CallError) as e:
            client.decrypt(ct)
        assert err(e) == "Locked" and protocol.parse_locked_names(e.value.text) == ("only",)
        assert e.value.data == (["only"],)
        client.unlock("only")
        with pytest.raises(CallError) as e:
            client.decrypt(ct)
        assert err(e) == "NoMatch"
        # a hybrid file: no key of that type exists, so nothing locked could open it
        client.m("LockAll")
        pq = client.m("CreateKey", "ssa{sv}", "pq2", "pw", {"type": ("s", "mlkem768x25519")})[1]
        client.m("DeleteKey", "sa{sv}", "pq2", {"passphrase": ("s", "pw")})
        with pytest.raises(CallError) as e:
            client.decrypt(client.encrypt([pq], b"pq"))
        assert err(e) == "NoMatch"


def test_malformed_inputs_get_named_errors(client: Client) -> None:
    recipient = client.create("mal")
    client.unlock("mal")
    good = client.encrypt([recipient], b"payload " * 1000)
    cases = {
        b"": "Malformed",
        os.urandom(500): "Malformed",
        b"age-encryption.org/v1\n": "Malformed",
        good[:40]: "Malformed",
        BAD_ARMOR: "Malformed",
        good[:-10]: "Integrity",
        good[:-1] + bytes([good[-1] ^ 1]): "Integrity",
    }
    for data, expected in cases.items():
        with pytest.raises(CallError) as e:
            client.decrypt(data)
        assert err(e) == expected, data[:60]
    assert client.decrypt(good)[0] == b"payload " * 1000  # still serving
    with pytest.raises(CallError) as e:
        client.encrypt(["age1notarecipient"], b"x")
    assert err(e) == "Malformed"
    with pytest.raises(CallError) as e:
        client.encrypt(["no such key"], b"x")
    assert err(e) == "InvalidName"
    with pytest.raises(CallError) as e:
        client.encrypt(["nosuchkey"], b"x")
    assert err(e) == "NoSuchKey"
    with pytest.raises(CallError) as e:
        client.encrypt([], b"x")
    assert e.value.name == protocol.INVALID_ARGS


def test_payload_cap(client: Client) -> None:
    recipient = client.create("cap")
    client.unlock("cap")
    assert len(client.encrypt([recipient], b"x" * MAX_PAYLOAD)) > MAX_PAYLOAD
    with pytest.raises(CallError) as e:  # over the cap: refused by the method
        client.encrypt([recipient], b"x" * (MAX_PAYLOAD + 1))
    assert err(e) == "TooLarge"
    with pytest.raises(CallError) as e:  # far over: refused by the gate before anything
        client.encrypt([recipient], b"x" * (MAX_PAYLOAD * 2 + 2 * 1024 * 1024))
    assert err(e) == "TooLarge"
    armored = client.encrypt([recipient], b"x" * MAX_PAYLOAD, armor=("b", True))
    assert client.decrypt(armored)[0] == b"x" * MAX_PAYLOAD
    with pytest.raises(CallError) as e:
        client.decrypt(b"x" * (MAX_PAYLOAD * 3 // 2 + 64 * 1024 + 1))
    assert err(e) == "TooLarge"


def test_keys_survive_a_restart(bus: PrivateBus, client: Client) -> None:
    client.create("persist", label=("s", "kept"))
    for odd in ("my-key", "a_b", "-"):  # '-' and '_' are escaped in object paths
        client.create(odd)
        assert protocol.key_path(odd) in client.prop(MANAGER, MI, "Keys")
        assert client.prop(protocol.key_path(odd), KI, "Name") == odd
    pid = bus.agent_pid()
    assert pid is not None
    os.kill(pid, 15)
    assert bus.wait_agent_gone()
    with Client(bus.address) as again:
        path = protocol.key_path("persist")
        assert again.prop(path, KI, "Label") == "kept"  # activated afresh, read from disk
        assert again.prop(path, KI, "Locked") is True
        assert again.prop(protocol.key_path("my-key"), KI, "Name") == "my-key"
    assert Path(bus.home, "persist.key").exists() or any(Path(bus.home).iterdir())


def test_every_error_name_is_reachable(client: Client) -> None:
    """Each of protocol.AGENT_ERROR_NAMES, provoked over the bus."""
    seen: set[str] = set()

    def expect(short: str, fn: object, *args: object, **kw: object) -> None:
        with pytest.raises(CallError) as e:
            fn(*args, **kw)  # type: ignore[operator]
        assert e.value.short == short, e.value
        seen.add(e.value.name)

    recipient = client.create("errs")
    ct = client.encrypt([recipient], b"secret")
    expect("Locked", client.decrypt, ct, key=("s", "errs"))
    expect("NoSuchKey", client.decrypt, ct, key=("s", "nope"))
    expect("KeyExists", client.create, "errs")
    expect("BadPassphrase", client.unlock, "errs", "wrong")
    client.unlock("errs")
    other = pyrage.x25519.Identity.generate()
    expect(
        "NoMatch", client.decrypt, client.encrypt([str(other.to_public())], b"x"), key=("s", "errs")
    )
    expect("Malformed", client.decrypt, b"garbage")
    expect("Integrity", client.decrypt, ct[:-1])
    expect("Unsupported", client.m, "CreateKey", "ssa{sv}", "u", "pw", {"type": ("s", "rsa")})
    expect("TooLarge", client.encrypt, [recipient], b"x" * (MAX_PAYLOAD + 1))
    expect("InvalidName", client.create, "not/a/name")
    # RateLimited: more concurrent streams than --max-streams (2) from one caller
    held = client.hold_decrypt_streams(2)
    r, w = os.pipe()
    expect("RateLimited", client.m, "DecryptFd", "hha{sv}", r, w, {})
    for fd in (r, w, *(fd for pair in held for fd in pair)):
        os.close(fd)

    def stream_slot_free() -> bool:  # the held streams end once their pipes close
        probe_r, probe_w = os.pipe()
        os.close(probe_w)  # empty input: Malformed once a slot is free
        try:
            client.m("DecryptFd", "hha{sv}", probe_r, probe_w_out, {})
        except CallError as exc:
            return exc.short != "RateLimited"
        finally:
            os.close(probe_r)
        return True

    probe_out_r, probe_w_out = os.pipe()
    assert wait_until(stream_slot_free)
    os.close(probe_out_r)
    os.close(probe_w_out)
    # Failed: the output of a stream is closed before anything is written
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.close(out_r)
    os.write(in_w, ct)
    os.close(in_w)
    expect("Failed", client.m, "DecryptFd", "hha{sv}", in_r, out_w, {})
    os.close(in_r)
    os.close(out_w)
    assert seen == set(protocol.AGENT_ERROR_NAMES)


def test_object_manager_signals_come_from_the_manager_path(client: Client) -> None:
    om = "org.freedesktop.DBus.ObjectManager"
    rule = MatchRule(type="signal", interface=om, path=MANAGER)
    client.conn.send_and_get_reply(message_bus.AddMatch(rule))
    with client.conn.filter(rule, bufsize=10) as signals:
        _path, recipient = client.m("CreateKey", "ssa{sv}", "omkey", "pw", {})
        added = client.conn.recv_until_filtered(signals, timeout=10)
        assert added.header.fields[HeaderFields.member] == "InterfacesAdded"
        path, interfaces = added.body
        assert path == protocol.key_path("omkey")
        assert interfaces[KI]["Recipient"] == ("s", recipient)
        client.m("DeleteKey", "sa{sv}", "omkey", {"passphrase": ("s", "pw")})
        removed = client.conn.recv_until_filtered(signals, timeout=10)
        assert removed.header.fields[HeaderFields.member] == "InterfacesRemoved"
        assert removed.body == (protocol.key_path("omkey"), [KI])


def test_error_text_bounds_what_the_caller_sent(client: Client) -> None:
    """A huge option name must not come back whole in the error (issue 13). (Under the test
    agent's payload cap: anything above it is TooLarge before any parsing.)"""
    huge = "x" * (256 * 1024)
    with pytest.raises(CallError) as e:
        client.m("Encrypt", "asaya{sv}", ["age1x"], b"data", {huge: ("b", True)})
    assert e.value.name == protocol.INVALID_ARGS
    assert "Unknown option 'xxxx" in e.value.text and len(e.value.text) < 300
    with pytest.raises(CallError) as e:
        client.m("CreateKey", "ssa{sv}", "bounded", "pw", {"type": ("s", huge)})
    assert e.value.short == "Unsupported" and len(e.value.text) < 300
