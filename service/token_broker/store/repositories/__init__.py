"""All SQL lives here. Repositories work inside the caller's transaction and never commit.

One module per table (or pair of tables that change together); import from here.
"""

from token_broker.store.repositories.accounts import (
    DATABASE_NOW,
    MAX_SUBJECTS_LISTED,
    AccountRepository,
)
from token_broker.store.repositories.api_clients import ApiClientRepository
from token_broker.store.repositories.audit import AuditRepository
from token_broker.store.repositories.authorizations import (
    AuthorizationRepository,
    OAuthStateRepository,
)
from token_broker.store.repositories.change_notices import ChangeNotices
from token_broker.store.repositories.replicas import ReplicaRepository
from token_broker.store.repositories.risc import RiscEventRepository
from token_broker.store.repositories.webhooks import WebhookRepository

__all__ = [
    "DATABASE_NOW",
    "MAX_SUBJECTS_LISTED",
    "AccountRepository",
    "ApiClientRepository",
    "AuditRepository",
    "AuthorizationRepository",
    "ChangeNotices",
    "OAuthStateRepository",
    "ReplicaRepository",
    "RiscEventRepository",
    "WebhookRepository",
]
