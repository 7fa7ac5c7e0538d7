"""Separate network hosts on one machine, for tests of what crosses a network.

Each host is a Linux network namespace joined to this one by a veth pair. A small TCP
forwarder, listening on this side's veth address, relays the host's connections to a server
on 127.0.0.1 (PostgreSQL listens only there). Taking this side of a host's veth down cuts
that host off, as a partition does: its open connections stall, its packets go nowhere, and
when the link comes back TCP resumes them. Needs root (``ip netns``); :func:`hosts_or_skip`
skips without it, except under ``MAML_TUNE_REQUIRE_NETNS=1`` (as in ``.ci/run``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class _Forwarder:
    """Relay every connection accepted on ``listen`` to ``target`` (one thread per direction)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.server.settimeout(0.2)
        self.sockets: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.server.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class Host:
    """One namespace: ``address`` is where it reaches the forwarded server (``port``)."""

    namespace: str
    link: str  # this side of the veth pair
    address: str
    port: int
    forwarder: _Forwarder | None = field(default=None, repr=False)

    def command(self, args: list[str]) -> list[str]:
        """``args`` run inside the host (its only network is the veth to this machine)."""
        return ["ip", "netns", "exec", self.namespace, *args]

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")


@contextlib.contextmanager
def network_hosts(count: int, target: tuple[str, int]) -> Iterator[list[Host]]:
    """``count`` hosts, each reaching ``target`` (an address of this machine) through its own link."""
    tag = uuid.uuid4().hex[:6]
    subnet = 16 + int(tag, 16) % 200  # 10.<subnet>.<host>.0/24, unlikely to collide between runs
    hosts: list[Host] = []
    try:
        for index in range(1, count + 1):
            namespace, here, there = f"mt{tag}h{index}", f"mt{tag}a{index}", f"mt{tag}b{index}"
            address = f"10.{subnet}.{index}.1"
            _ip("netns", "add", namespace)
            hosts.append(Host(namespace, here, address, target[1]))
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", there, "netns", namespace)
            _ip("addr", "add", f"{address}/24", "dev", here)
            _ip("link", "set", here, "up")
            for args in (
                ("addr", "add", f"10.{subnet}.{index}.2/24", "dev", there),
                ("link", "set", there, "up"),
                ("link", "set", "lo", "up"),
            ):
                _ip("netns", "exec", namespace, "ip", *args)
            hosts[-1].forwarder = _Forwarder((address, target[1]), target)
        yield hosts
    finally:
        for host in hosts:
            if host.forwarder is not None:
                host.forwarder.close()
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", host.link)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.namespace)


def hosts_or_skip() -> None:
    """Skip unless network namespaces can be made here (fail instead under MAML_TUNE_REQUIRE_NETNS=1)."""
    probe = f"mtprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = f"cannot make network namespaces (needs root and iproute2): {exc}"
        if os.environ.get("MAML_TUNE_REQUIRE_NETNS") == "1":
            pytest.fail(f"{reason} (MAML_TUNE_REQUIRE_NETNS=1)")
        pytest.skip(reason)
