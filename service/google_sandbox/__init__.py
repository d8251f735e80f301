"""A stand-in for Google's OAuth and Gmail endpoints, for tests, benchmarks and dev mode."""

from google_sandbox.app import create_sandbox_app
from google_sandbox.risc import new_service_account, register_receiver
from google_sandbox.state import SandboxState

__all__ = ["SandboxState", "create_sandbox_app", "new_service_account", "register_receiver"]
