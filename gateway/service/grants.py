"""What an authenticated caller may do with memories, as the memory layer's plain values.

``gateway.memory`` does not import ``gateway.auth`` (siblings): the handlers and the request
service translate the ``Caller`` here, once, into a ``MemoryAccess``.
"""

from __future__ import annotations

from gateway.auth.identity import Caller
from gateway.memory.access import MemoryAccess


def memory_access_of(caller: Caller | None) -> MemoryAccess | None:
    """The caller's team and effective namespace grants; None in open mode (nothing checked)."""
    if caller is None:
        return None
    return MemoryAccess(caller.team, caller.read_namespaces, caller.write_namespaces)
