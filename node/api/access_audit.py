"""What the HTTP API tells the audit trail: who read which list, and credentials refused.

The endpoints that name one study (its page, a re-run) and the login form record their own messages in
``app.py``; these helpers are the ones every reading endpoint shares through its dependency.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from node.api.auth import Authenticator, Permission, Principal
from node.audit import AuditTrail
from node.audit import messages as audit_messages


def trail(request: Request) -> AuditTrail:
    found: AuditTrail = request.app.state.audit
    return found


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def checked(request: Request, auth: Authenticator, permission: Permission) -> Principal:
    """``auth.require``, with a failed login in the audit trail when credentials were presented and refused
    (a request without any is a browser's first try, not a login)."""
    try:
        return auth.require(request, permission)
    except HTTPException as exc:
        if exc.status_code == 401 and request.headers.get("authorization"):
            audit = trail(request)
            audit.record(
                audit_messages.user_authentication(
                    audit.source, user=None, address=client_address(request), success=False
                )
            )
        raise


def audited(request: Request, principal: Principal) -> Principal:
    """A read of a list (studies, series, jobs, deliveries...): a Query message with its path and query string."""
    audit = trail(request)
    audit.record(
        audit_messages.http_query(
            audit.source,
            user=principal.name,
            address=client_address(request),
            path=request.url.path,
            query=request.url.query,
        )
    )
    return principal
