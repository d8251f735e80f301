"""The only code that speaks HTTP to the provider: OAuth endpoints and the Gmail API."""
