"""The reference for the token hot path: a plain FastAPI route returning the same JSON,
served exactly as `token-broker serve` serves the broker."""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

app = FastAPI()

BODY = {
    "access_token": "ya29.sandbox-" + "x" * 64,
    "token_type": "Bearer",
    "expires_at": "2026-11-21T08:00:00+00:00",
    "expires_in": 3599,
    "scopes": [
        "email",
        "https://www.googleapis.com/auth/gmail.readonly",
        "openid",
        "profile",
    ],
}


@app.get("/v1/accounts/{account}/access-token")
async def access_token(account: str) -> dict[str, object]:
    return BODY


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=parser.parse_args().port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
    )
