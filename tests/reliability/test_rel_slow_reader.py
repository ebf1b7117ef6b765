"""A slow reader: a raw-socket client queues large replies and stops reading. It keeps its
connection, and other clients are served meanwhile."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import threading
import time

from jeepney import DBusAddress, MessageType, Parser, message_bus, new_method_call
from jeepney.auth import BEGIN, Authenticator

from keyagent import protocol
from reliability import kit
from reliability.conftest import KEY, Agent

BIG = 2 * 1024 * 1024
QUEUED = 12  # replies of ~2 MiB each left unread: far more than any socket buffer
OTHERS = 8
OTHER_CALLS = 25


def unread(sock: socket.socket) -> int:
    """Bytes waiting in a socket's receive queue (SIOCINQ: nothing is consumed)."""
    count: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    return count


class RawClient:
    """A D-Bus client on a bare socket: we decide when (and whether) to read."""

    def __init__(self, socket_path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(socket_path)
        auth = Authenticator()
        for req in auth:
            self.sock.sendall(req)
            auth.feed(self.sock.recv(1024))
        self.sock.sendall(BEGIN)
        self.parser = Parser()
        self.serial = 0
        self.send(message_bus.Hello())
        self.unique_name = self.receive().body[0]

    def send(self, msg: object) -> int:
        self.serial += 1
        self.sock.sendall(msg.serialise(serial=self.serial))  # type: ignore[attr-defined]
        return self.serial

    def receive(self, timeout: float = 30.0) -> object:
        self.sock.settimeout(timeout)
        while True:
            msg = self.parser.get_next_message()
            if msg is not None:
                return msg
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the bus closed our connection")
            self.parser.add_data(data)

    def close(self) -> None:
        self.sock.close()


def test_slow_reader_keeps_connection_and_does_not_stall_others(agent: Agent) -> None:
    pid = agent.pid()
    raw = RawClient(str(agent.bus.socket_path))
    manager = DBusAddress(protocol.MANAGER_PATH, protocol.BUS_NAME, protocol.MANAGER_INTERFACE)
    payload = os.urandom(BIG)
    serials = [
        raw.send(new_method_call(manager, "Encrypt", "asaya{sv}", ([agent.recipient], payload, {})))
        for _ in range(QUEUED)
    ]
    # The agent answers: the replies reach our (small) socket buffer and pile up unread.
    assert kit.wait_until(lambda: unread(raw.sock) > 0, 60, 0.005), "no reply arrived"

    failures: list[str] = []
    done = [0]

    def other(i: int) -> None:
        with agent.client(timeout=20) as c:
            for j in range(OTHER_CALLS):
                data = f"{i}/{j}".encode()
                try:
                    if c.decrypt(c.encrypt([agent.recipient], data)) != (data, KEY):
                        failures.append(f"{i}/{j}: wrong result")
                    done[0] += 1
                except Exception as e:
                    failures.append(f"{i}/{j}: {type(e).__name__}: {e}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=other, args=(i,)) for i in range(OTHERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    others_s = time.monotonic() - t0
    # First: a restarted agent has every key locked, which would look like failing Decrypts.
    assert agent.pid() == pid, "the agent lost its connection or restarted"
    if failures:
        with agent.client() as c:
            state = c.key(KEY)
        raise AssertionError(f"{len(failures)} failed: {failures[:3]}; key now: {state}")

    # Now read: every queued reply is there, complete, and the connection still works.
    got: dict[int, int] = {}
    while len(got) < QUEUED:
        msg = raw.receive()
        hdr = msg.header  # type: ignore[attr-defined]
        if hdr.message_type == MessageType.method_return:
            got[hdr.fields.get(5)] = len(msg.body[0])  # type: ignore[attr-defined]
        elif hdr.message_type == MessageType.error:
            raise AssertionError(f"queued call failed: {msg.body}")  # type: ignore[attr-defined]
    assert sorted(got) == serials
    assert all(n > BIG for n in got.values())
    raw.send(message_bus.GetId())
    assert raw.receive().header.message_type == MessageType.method_return  # type: ignore[attr-defined]
    raw.close()
    kit.record(
        "slow_reader",
        queued_replies=QUEUED,
        queued_mib=QUEUED * BIG // (1024 * 1024),
        other_clients=OTHERS,
        other_calls=done[0],
        other_seconds=round(others_s, 2),
        failures=len(failures),
    )
