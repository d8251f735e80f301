"""`service/` is the source root of two import packages, not a package itself.

Import `token_broker` (the broker) or `google_sandbox` (the stand-in for Google).
"""

raise ImportError(
    "`service` is a source folder, not a package: import token_broker or google_sandbox"
)
