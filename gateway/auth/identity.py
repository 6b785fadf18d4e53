"""The caller a request was authenticated as, and what it may do (resolved once per request).

A virtual key belongs to a team; what it may do is the key's own setting where it has one, else its
team's default (the policy's ``auth.teams``), except its models: the key's own within its team's. In ``auth.mode: open`` there are no keys: every caller
is an unlimited ``Caller`` whose team is a hash of the Authorization header it sent (today's tenancy).
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN_KEY_ID = ""  # the key id of callers in open mode


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its key, its team (the tenant) and its effective grants and limits.

    ``None`` means unrestricted for ``models`` and the namespace grants, unlimited for the limits.
    """

    key_id: str  # the key's public id (never the secret); OPEN_KEY_ID in open mode
    team: str  # cache tenant, memory owner, feedback and spend are the team's
    models: frozenset[str] | None = None  # model groups it may call
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens (in + out) per minute
    budget_usd: float | None = None  # spend allowed per budget period
    budget_period_s: float | None = None
    read_namespaces: frozenset[str] | None = None  # memory namespaces it may read and search
    write_namespaces: frozenset[str] | None = None  # memory namespaces it may write and delete
    # Let in with the secret its key replaced, within the rotation's grace (``KeyRing.rotate``):
    # the same key, limits and spend; the response says so (x-gateway-token-deprecated).
    previous_secret: bool = False
    # The id its limits and budget are counted under when not ``key_id``: the first key of its
    # rotations (``KeyRecord.limits_id``), so rotating a key keeps its windows and spend.
    limits_id: str | None = None
    # The team's shared budget (``auth.teams.<team>.shared_budget_usd``), spent by all its keys
    # together and counted under the team's name, per the team's ``budget_period``: None for none.
    team_budget_usd: float | None = None
    team_budget_period_s: float | None = None
    # The team's shared rates (``auth.teams.<team>.shared_rpm`` / ``shared_tpm``): one window each
    # for all its keys together, counted under the team's name alongside the key's own: None for none.
    team_rpm: int | None = None
    team_tpm: int | None = None
    # May it name objects stored with the providers under the gateway's keys (file ids, Gemini
    # Files API URIs: ``wire/provider_files.py``)? Off unless its key or team allows it.
    provider_files: bool = False

    @property
    def counted_as(self) -> str:
        """The id the limiters count its RPM, TPM and budget under (usage rows stay by key id)."""
        return self.limits_id or self.key_id

    @property
    def tenant(self) -> str:
        """The cache and memory tenant: the team, never the raw credential (rotation keeps it)."""
        return f"team:{self.team}"

    @property
    def limited(self) -> bool:
        """Whether any of its limits is set (RPM, TPM, its budget, its team's shared budget and rates)."""
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.budget_usd is not None
            or self.team_budget_usd is not None
            or self.team_rpm is not None
            or self.team_tpm is not None
        )

    @property
    def team_rated(self) -> bool:
        """Whether its team has a shared RPM or TPM."""
        return self.team_rpm is not None or self.team_tpm is not None

    @property
    def token_limited(self) -> bool:
        """Whether its requests reserve tokens: its own TPM or its team's shared one."""
        return self.tpm is not None or self.team_tpm is not None

    @property
    def budgeted(self) -> bool:
        """Whether its spend is limited: its own budget or its team's shared one."""
        return self.budget_usd is not None or self.team_budget_usd is not None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def may_read(self, namespace: str) -> bool:
        return self.read_namespaces is None or namespace in self.read_namespaces

    def may_write(self, namespace: str) -> bool:
        return self.write_namespaces is None or namespace in self.write_namespaces
