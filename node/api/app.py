"""The node's HTTP surface (FastAPI): health, metrics, JSON API, STOW-RS, worklist page.

``create_app`` takes the node's own index and store objects; it starts nothing. Endpoints that
touch the index are plain ``def`` functions (FastAPI runs them in its thread pool, and each thread
gets its own SQLite connection from :class:`Database`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node import __version__, metrics
from node.api import actions
from node.api.access_audit import audited, checked, client_address
from node.api.auth import SESSION_COOKIE, SESSION_LIFETIME_S, Authenticator, Permission, Principal
from node.api.metrics import register_index_collector, stow_requests
from node.api.stow import DICOM_JSON, store_parts, warning_header
from node.api.stow_body import StowError, receive_parts
from node.api.worklist import STATUSES, WorklistFilter, build_worklist
from node.audit import Action, AuditTrail, Participant
from node.audit import messages as audit_messages
from node.config import NodeConfig
from node.index import queries
from node.index.db import Database
from node.index.states import DeliveryState, JobState, SeriesState
from node.route.planner import JobPlanner
from node.store.ingest import InstanceStore
from node.uids import validate_uid

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

Limit = Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0)]


def _check_choice(name: str, value: str | None, allowed: Iterable[str]) -> None:
    choices = [str(a) for a in allowed]
    if value is not None and value not in choices:
        raise HTTPException(422, f"{name} must be one of {', '.join(choices)}")


def _uid(value: str, what: str) -> str:
    try:
        return validate_uid(value, what)
    except Exception as exc:
        raise HTTPException(422, str(exc)) from None


def _auth(request: Request) -> Authenticator:
    found: Authenticator = request.app.state.authenticator
    return found


def _reader(request: Request) -> Principal:
    """A reader; the request (path and query string) goes to the audit trail as a Query."""
    return audited(request, checked(request, _auth(request), Permission.READ))


def _identified(request: Request) -> Principal:
    """A reader whose request audits itself (a study's page names the study) or reads no patient data."""
    return checked(request, _auth(request), Permission.READ)


def _operator(request: Request) -> Principal:
    return checked(request, _auth(request), Permission.ACT)


def _health_access(request: Request) -> None:
    _auth(request).require_health(request)


# Module level: FastAPI resolves these annotations by name (this module uses postponed annotations).
Reader = Annotated[Principal, Depends(_reader)]
Identified = Annotated[Principal, Depends(_identified)]
Operator = Annotated[Principal, Depends(_operator)]
HealthAccess = Depends(_health_access)


def create_app(
    config: NodeConfig,
    db: Database,
    store: InstanceStore,
    *,
    workers_alive: Callable[[], int] | None = None,
    audit: AuditTrail | None = None,
) -> FastAPI:
    http = config.http
    auth = Authenticator(http)
    planner = JobPlanner(config.routes)
    register_index_collector(db)
    app = FastAPI(title="PACS AI node", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    app.state.authenticator = auth
    app.state.audit = audit = audit or AuditTrail.off()
    if http.tls is not None:
        hsts = f"max-age={http.tls.hsts_max_age_s}"

        # Every response over HTTPS tells the browser to use nothing else for this host (RFC 6797).
        @app.middleware("http")
        async def strict_transport_security(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            response = await call_next(request)
            response.headers["Strict-Transport-Security"] = hsts
            return response

    # --- health and metrics -----------------------------------------------------------------------
    @app.get("/healthz", dependencies=[HealthAccess])
    @app.get("/health", dependencies=[HealthAccess], include_in_schema=False)  # deploy/Dockerfile's HEALTHCHECK
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", dependencies=[HealthAccess])
    def readyz() -> JSONResponse:
        checks = readiness(config, db, store, workers_alive)
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", dependencies=[HealthAccess])
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # --- JSON API ---------------------------------------------------------------------------------------
    @app.get("/api/me")
    def me(principal: Identified) -> dict[str, Any]:
        return {
            "name": principal.name,
            "role": principal.role,
            "can_act": principal.may(Permission.ACT),
            "priority_threshold": http.priority_threshold,
            "refresh_interval_s": http.refresh_interval_s,
            "show_patient_identity": http.show_patient_identity,
            "auth_mode": auth.mode,
        }

    @app.get("/api/studies")
    def studies(
        _: Reader,
        status: str | None = None,
        flagged: bool | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        _check_choice("status", status, STATUSES)
        rows = build_worklist(db, http, WorklistFilter(status=status, flagged=flagged))
        return {"total": len(rows), "limit": limit, "offset": offset, "items": rows[offset : offset + limit]}

    @app.get("/api/studies/{study_uid}")
    def study(principal: Identified, request: Request, study_uid: str) -> dict[str, Any]:
        uid = _uid(study_uid, "StudyInstanceUID")
        audit.record(
            audit_messages.study_accessed(
                audit.source, user=principal.name, address=client_address(request), study_uid=uid
            )
        )
        rows = build_worklist(db, http, WorklistFilter(study_uid=uid))
        if not rows:
            raise HTTPException(404, "no such study")
        row = rows[0]
        row["series"] = queries.list_series(db, state=None, study_uid=uid, limit=queries.MAX_LIMIT, offset=0)["items"]
        row["jobs"] = queries.list_jobs(
            db, state=None, pipeline=None, study_uid=uid, series_uid=None, limit=queries.MAX_LIMIT, offset=0
        )["items"]
        return row

    @app.post("/api/studies/{study_uid}/rerun", status_code=202)
    def rerun(principal: Operator, request: Request, study_uid: str) -> dict[str, Any]:
        uid = _uid(study_uid, "StudyInstanceUID")
        audit.record(
            audit_messages.study_accessed(
                audit.source, user=principal.name, address=client_address(request), study_uid=uid,
                action=Action.EXECUTE,
            )
        )  # fmt: skip
        try:
            job_ids = actions.rerun_study(db, planner, uid, principal.name)
        except actions.ActionRefused as exc:
            raise HTTPException(exc.status, exc.reason) from None
        log.info("study_rerun_requested", study_uid=uid, user=principal.name, job_ids=job_ids)
        return {"study_uid": uid, "queued_jobs": job_ids}

    @app.get("/api/series")
    def series(
        _: Reader,
        state: str | None = None,
        study_uid: str | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        _check_choice("state", state, SeriesState)
        return queries.list_series(db, state=state, study_uid=study_uid, limit=limit, offset=offset)

    @app.get("/api/jobs")
    def jobs(
        _: Reader,
        state: str | None = None,
        pipeline: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        _check_choice("state", state, JobState)
        return queries.list_jobs(
            db, state=state, pipeline=pipeline, study_uid=study_uid, series_uid=series_uid, limit=limit, offset=offset
        )

    @app.get("/api/jobs/{job_id}")
    def job(_: Reader, job_id: int) -> dict[str, Any]:
        found = queries.get_job(db, job_id)
        if found is None:
            raise HTTPException(404, "no such job")
        return found

    @app.get("/api/deliveries")
    def deliveries(
        _: Reader,
        state: str | None = None,
        destination: str | None = None,
        job_id: int | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        _check_choice("state", state, DeliveryState)
        return queries.list_deliveries(
            db, state=state, destination=destination, job_id=job_id, limit=limit, offset=offset
        )

    @app.get("/api/deliveries/{delivery_id}")
    def delivery(_: Reader, delivery_id: int) -> dict[str, Any]:
        found = queries.get_delivery(db, delivery_id)
        if found is None:
            raise HTTPException(404, "no such delivery")
        return found

    @app.post("/api/deliveries/{delivery_id}/retry")
    def retry(principal: Operator, delivery_id: int) -> dict[str, Any]:
        try:
            actions.retry(db, delivery_id)
        except actions.ActionRefused as exc:
            raise HTTPException(exc.status, exc.reason) from None
        log.info("delivery_retry_requested", delivery_id=delivery_id, user=principal.name)
        return {"delivery_id": delivery_id, "state": DeliveryState.PENDING.value}

    # --- STOW-RS ----------------------------------------------------------------------------------------
    @app.post("/dicom-web/studies")
    async def stow(request: Request) -> Response:
        principal = checked(request, auth, Permission.STOW)
        try:
            body = await receive_parts(
                request.stream(),
                request.headers.get("content-type", ""),
                declared_length=request.headers.get("content-length"),
                limit=http.max_stow_bytes,
                temp_dir=store.spool.incoming,
            )
        except StowError as exc:
            stow_requests.labels(status=str(exc.status)).inc()
            log.warning("stow_refused", user=principal.name, status=exc.status, reason=exc.reason)
            return JSONResponse(
                {"detail": exc.reason}, status_code=exc.status, headers={"Warning": warning_header(exc.reason)}
            )
        try:
            result = await run_in_threadpool(
                store_parts, store, body.parts, calling_ae=principal.ae_title, called_ae=config.dicom.ae_title
            )
        finally:
            body.close()  # its spool file goes with it
        status = result.http_status()
        stow_requests.labels(status=str(status)).inc()
        if result.stored or result.failed:
            sender = Participant(principal.name, True, ae_title=principal.ae_title, address=client_address(request))
            audit.record(
                audit_messages.instances_received(
                    audit.source, config.dicom.ae_title, sender=sender, studies=result.studies(),
                    failed=len(result.failed),
                )
            )  # fmt: skip
        log.info(
            "stow_request",
            user=principal.name,
            calling_ae=principal.ae_title,
            parts=len(body.parts),
            body_bytes=body.size,
            stored=len(result.stored),
            failed=len(result.failed),
            status=status,
        )
        response = JSONResponse(result.dicom_json(), status_code=status, media_type=DICOM_JSON)
        for warning in result.warnings():
            response.headers.append("Warning", warning)
        return response

    # --- the worklist page ---------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/worklist", status_code=303)

    @app.get("/worklist", include_in_schema=False)
    def worklist_page(request: Request) -> Response:
        principal = auth.authenticate(request)
        if principal is None or not principal.may(Permission.READ):
            if principal is not None:
                return HTMLResponse(_page("forbidden.html"), status_code=403)
            # Basic: the browser asks for a user name and password. Token: a form trades the token for a cookie.
            page = "login.html" if auth.mode == "token" else "unauthorized.html"
            return HTMLResponse(_page(page), status_code=401, headers=auth.challenge_headers())
        return HTMLResponse(_page("worklist.html"), headers={"Cache-Control": "no-store"})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        secret = str(form.get("token") or form.get("password") or "")
        principal = auth.login(secret, str(form.get("user") or "") or None)
        if principal is None:
            log.warning("http_login_failed", client=client_address(request))
            audit.record(
                audit_messages.user_authentication(
                    audit.source, user=None, address=client_address(request), success=False
                )
            )
            return HTMLResponse(_page("login.html"), status_code=401)
        audit.record(
            audit_messages.user_authentication(
                audit.source, user=principal.name, address=client_address(request), success=True
            )
        )
        response = RedirectResponse("/worklist", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            auth.session_cookie(principal),
            max_age=SESSION_LIFETIME_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        log.info("http_login", user=principal.name)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        principal = auth.verify_session(cookie) if cookie else None
        if principal is not None:
            audit.record(
                audit_messages.user_authentication(
                    audit.source, user=principal.name, address=client_address(request), success=True, logout=True
                )
            )
        response = RedirectResponse("/worklist", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    return app


def _page(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def readiness(
    config: NodeConfig, db: Database, store: InstanceStore, workers_alive: Callable[[], int] | None
) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    # Index writable: take the write lock and let it go (a short timeout: a probe must answer quickly).
    problem = db.writable_problem()
    checks["index_writable"] = {"ok": True} if problem is None else {"ok": False, "reason": problem}
    free = store.spool.free_bytes()
    checks["disk_above_watermark"] = {
        "ok": free >= store.min_free_bytes,
        "free_bytes": free,
        "watermark_bytes": store.min_free_bytes,
    }
    wanted = config.workers.processes
    alive = workers_alive() if workers_alive is not None else 0
    checks["workers_alive"] = {"ok": alive >= wanted, "alive": alive, "configured": wanted}
    return checks
