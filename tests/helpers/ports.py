"""Loopback ports for the servers and bridges the tests start: one per caller, across
processes (pytest-xdist workers, other test sessions) as well as within one."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any


def _port_range() -> range:
    """Ports this suite hands out: below the kernel's ephemeral range, so that no port-0 bind
    (a proxy, a client's outgoing connection) can take one between its handing out and its use."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12000), max(2048, low - 12000 + 10000))


_PORTS = _port_range()
_PORT_LOCKS = Path(tempfile.gettempdir()) / f"simvue-otel-test-ports-{os.getuid()}.lock"
_port_lock_file: Any = None  # held open for the life of the process: closing it drops its locks
_handed_out: set[int] = set()
_port_guard = threading.Lock()


def free_port() -> int:
    """A loopback TCP port no other caller gets: not this process (each call a new port, so a
    bridge's HTTP and gRPC ports differ), not another pytest-xdist worker nor another test
    session (each port handed out is locked, a byte of a shared lock file per port, until
    this process exits), and free to bind now. Servers bind it a moment later; as the range lies
    below the ephemeral ports, nothing else on the machine is handed it meanwhile."""
    global _port_lock_file
    with _port_guard:
        if _port_lock_file is None:
            _port_lock_file = _PORT_LOCKS.open("a+b")
        start = (os.getpid() * 97 + len(_handed_out)) % len(_PORTS)
        for i in range(len(_PORTS)):
            port = _PORTS[(start + i) % len(_PORTS)]
            if port in _handed_out:
                continue
            try:  # a byte range lock: held by this process, dropped when it exits
                fcntl.lockf(_port_lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
            except OSError:
                continue  # another worker or session holds this port
            _handed_out.add(port)  # never again in this process, even if it is busy now
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue  # something outside the suite listens here
            return port
    raise RuntimeError(f"no free port left in {_PORTS}")
