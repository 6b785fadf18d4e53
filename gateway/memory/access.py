"""Who may see and change which memories: a caller's team and namespace grants, as plain values.

The memory layer does not know about keys (``gateway.auth`` is a sibling): the handlers and the
request service translate the authenticated caller into a ``MemoryAccess``; ``None`` instead of
one means open mode, where nothing is checked (every memory is everyone's, as before issue 11).

The rules (README "Memory access control"):

* Every row carries its ``owner``: the team that wrote it (``None``: written in open mode, or
  before owners existed).
* A team sees its own memories in every namespace it may read (``read=None``: any namespace).
* Another team's memories, and ownerless ones, are seen only in a namespace the team is granted
  *explicitly* (named in ``read``): an unrestricted team is not granted anyone else's memories.
* Changing or deleting follows the same rule with ``write``.
* A trusted namespace (``memory.namespaces.NAME.trusted``: its memories are system text in every
  reader's chats) is written, changed and deleted only with a grant naming it, own memories too.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import NotFound, PermissionDenied, quoted

# Separates a namespace from its owner in an index partition's name ("ns<US>team"). The API's
# namespace pattern ([A-Za-z0-9_.-]) cannot contain it, so the first one splits unambiguously.
_OWNER_SEPARATOR = "\x1f"


def partition_of(namespace: str, owner: str | None) -> str:
    """The index partition holding ``owner``'s vectors of ``namespace``: the namespace itself for
    ownerless rows (so an index persisted before owners existed stays valid)."""
    return namespace if owner is None else f"{namespace}{_OWNER_SEPARATOR}{owner}"


def split_partition(partition: str) -> tuple[str, str | None]:
    """``(namespace, owner)`` of an index partition."""
    namespace, separator, owner = partition.partition(_OWNER_SEPARATOR)
    return namespace, owner if separator else None


@dataclass(frozen=True, slots=True)
class MemoryAccess:
    """A caller's team (the owner of what it writes) and its namespace grants (None: any)."""

    team: str
    read: frozenset[str] | None = None
    write: frozenset[str] | None = None

    # Ids a client chooses are its team's: stored as ``<team>:<id>`` (a team name has no colon,
    # so the first one splits it off) and shown without the prefix to that team, so two teams
    # may each have a memory ``doc-1``, and one team's create can neither tell that another's
    # ``acme-merger`` exists (a 400 ``memory_exists`` said so, where GET said 404) nor take an id
    # from it (an outside probe). Ids the gateway makes (uuids, ingested chunks') are stored as made.

    def stored_id(self, given: str) -> str:
        """The id under which this caller's memory named ``given`` is stored."""
        return f"{self.team}:{given}"

    def shown_id(self, memory_id: str) -> str:
        """``memory_id`` as this caller sees it: its own team's prefix taken off."""
        prefix = f"{self.team}:"
        return memory_id[len(prefix) :] if memory_id.startswith(prefix) else memory_id

    def sees(self, namespace: str, owner: str | None) -> bool:
        """Whether rows of ``owner`` in ``namespace`` are visible to this caller."""
        if owner == self.team:
            return self.read is None or namespace in self.read
        return self.read is not None and namespace in self.read

    def may_change(self, namespace: str, owner: str | None, by_name: bool = False) -> bool:
        """Whether rows of ``owner`` in ``namespace`` may be changed or deleted by this caller.
        ``by_name``: the namespace is written only with a grant naming it (``check_write``)."""
        if owner == self.team and not by_name:
            return self.write is None or namespace in self.write
        return self.write is not None and namespace in self.write

    def check_read(self, namespaces: list[str] | tuple[str, ...], param: str = "namespaces") -> None:
        """Raise ``PermissionDenied`` for the first namespace this caller may not read, naming
        it as the client wrote it (``namespaces[1]``)."""
        for k, namespace in enumerate(namespaces):
            if self.read is not None and namespace not in self.read:
                raise PermissionDenied(
                    f"This API key may not read memory namespace '{namespace}'.",
                    param=f"{param}[{k}]",
                    code="namespace_not_granted",
                )

    def check_write(self, namespace: str, param: str = "namespace", by_name: bool = False) -> None:
        """Raise ``PermissionDenied`` when this caller may not write in ``namespace`` (``param``:
        the field as the client wrote it, ``memories[2].namespace`` in a batch). ``by_name``: a
        namespace only a grant naming it may write (a trusted one: its memories go into every
        reader's chats as system text, so an unrestricted team, which may write anywhere else,
        may not plant them there: an outside probe)."""
        if (self.write is None and by_name) or (self.write is not None and namespace not in self.write):
            raise PermissionDenied(
                f"This API key may not write memory namespace '{namespace}'."
                + (
                    " It is trusted: only a key or team granted it by name (write: [...]) may."
                    if by_name
                    else ""
                ),
                param=param,
                code="namespace_not_granted",
            )


def not_found(memory_id: str) -> NotFound:
    """The one answer for a memory that does not exist or that the caller may not see."""
    return NotFound(f"No memory with id {quoted(memory_id)}.", param="id", code="memory_not_found")
