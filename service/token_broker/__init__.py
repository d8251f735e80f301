"""Token Broker: Google OAuth 2.0 offline access and Gmail listings for internal services."""
