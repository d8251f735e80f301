"""The consent page: pick an account, untick scopes, Allow or Cancel (a browser posts it back).

Sign-in scopes (openid, email, profile in either spelling) are always granted, as on
Google's screen; the others can be unticked (granular consent).
"""

from __future__ import annotations

import html

from fastapi.responses import HTMLResponse

from google_sandbox.scopes import SIGN_IN_SCOPES, google_name
from google_sandbox.state import SandboxState

_CONSENT_STYLE = """
body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;color:#202124}
label{display:block;margin:.4rem 0}
fieldset{border:1px solid #dadce0;border-radius:8px;margin:1rem 0}
button{padding:.5rem 1.2rem;margin-right:.5rem;border-radius:4px;border:1px solid #1a73e8}
.allow{background:#1a73e8;color:#fff}
"""


def consent_page(state: SandboxState, action: str, params: dict[str, str]) -> HTMLResponse:
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in params.items()
    )
    hint = params.get("login_hint", "").lower()
    accounts = "".join(
        f'<label class="account"><input type="radio" name="email" value="{html.escape(email)}"'
        f"{' checked' if email == hint else ''}> {html.escape(user.name)} "
        f"&lt;{html.escape(email)}&gt;</label>"
        for email, user in sorted(state.users.items())
    )
    scopes = "".join(
        f'<label><input type="checkbox" name="granted_scope" value="{html.escape(scope)}" checked'
        f"{' disabled' if google_name(scope) in SIGN_IN_SCOPES else ''}> "
        f"{html.escape(scope)}</label>"
        + (
            f'<input type="hidden" name="granted_scope" value="{html.escape(scope)}">'
            if google_name(scope) in SIGN_IN_SCOPES
            else ""
        )
        for scope in params.get("scope", "").split()
    )
    client = html.escape(params.get("client_id", ""))
    new_email = html.escape(hint if hint and hint not in state.users else "")
    return HTMLResponse(
        f"""<!doctype html><html><head><meta charset="utf-8">
<title>Sign in - Sandbox Google</title><style>{_CONSENT_STYLE}</style></head><body>
<h1>Sandbox Google</h1><p><b>{client}</b> wants to access your Google Account.</p>
<form method="post" action="{html.escape(action)}">{hidden}
<fieldset><legend>Choose an account</legend>{accounts}
<label>or use another account: <input type="email" name="email_other" value="{new_email}"
 placeholder="someone@example.com"></label></fieldset>
<fieldset><legend>Allow access to</legend>{scopes}</fieldset>
<button class="allow" name="decision" value="allow">Allow</button>
<button name="decision" value="deny">Cancel</button></form>
<p><small>This is the Token Broker sandbox, not Google. Nothing leaves this machine.</small></p>
</body></html>"""
    )
