"""Who listens where: the machine's TCP socket table (``/proc/net/tcp*``) mapped to processes."""

from __future__ import annotations

import os
import socket


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` in the process tree (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def socket_owners(pids: set[int]) -> dict[int, int]:
    """Socket inode -> pid, for the sockets the given processes hold open."""
    owners = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[int(target[8:-1])] = pid
    return owners


def _address(hex_addr: str, family: socket.AddressFamily) -> str:
    raw = bytes.fromhex(hex_addr)
    # /proc prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words)


def listening() -> list[tuple[str, int, int]]:
    """(address, port, inode) of every TCP socket in LISTEN state, IPv4 and IPv6."""
    rows = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            addr, port = fields[1].split(":")
            rows.append((_address(addr, family), int(port, 16), int(fields[9])))
    return rows


def is_loopback(address: str) -> bool:
    return address.startswith(("127.", "::ffff:127.")) or address == "::1"


def listeners_of(root: int) -> list[tuple[str, int, str]]:
    """(address, port, command) of every listening TCP socket of ``root`` and its descendants."""
    pids = descendants(root) | {root}
    owners = socket_owners(pids)
    found = []
    for address, port, inode in listening():
        pid = owners.get(inode)
        if pid is not None:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            found.append((address, port, comm))
    return found
