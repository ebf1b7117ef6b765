"""CreateKey/DeleteKey invalidate `Keys` instead of sending it (issue 13): each CreateKey
sent the whole list, so creating n keys cost O(n²) (bench/create_keys.py measures it)."""

from __future__ import annotations

from jeepney import MatchRule, message_bus
from jeepney.io.blocking import open_dbus_connection

from agent_support import MANAGER, MI, PASS, Client
from conftest import PrivateBus

PROPS = "org.freedesktop.DBus.Properties"


def test_keys_is_invalidated_not_sent(private_bus: PrivateBus) -> None:
    rule = MatchRule(type="signal", interface=PROPS, member="PropertiesChanged", path=MANAGER)
    with open_dbus_connection(bus=private_bus.address) as watcher, Client(private_bus.address) as c:
        watcher.send_and_get_reply(message_bus.AddMatch(rule), timeout=10)
        with watcher.filter(rule) as signals:
            c.create("first")
            c.create("second")
            c.create("third")
            c.m("DeleteKey", "sa{sv}", "third", {"passphrase": ("s", PASS)})
            seen = [watcher.recv_until_filtered(signals, timeout=20).body for _ in range(4)]
        for body in seen:
            assert body == (MI, {}, ["Keys"])
        keys = c.prop(MANAGER, MI, "Keys")
        assert [str(k).rsplit("/", 1)[1] for k in keys] == ["first", "second"]
