"""The ASGI application: ``create_app(settings)`` and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from gateway import __version__, tracing
from gateway.api import admin, console, health, openai, reports, reviews, teachers
from gateway.api.errors import (
    gateway_error_handler,
    http_exception_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from gateway.api.hotpath import GatewayApp
from gateway.api.limits import BodyDeadline
from gateway.api.state import GatewayState
from gateway.clients.students import StudentPool
from gateway.clients.teacher import Teacher
from gateway.clients.upstream import new_session
from gateway.config import Settings, load_settings
from gateway.db.engine import create_engine, plain_dsn
from gateway.db.notify import KEYS_CHANNEL, ROUTES_CHANNEL, STUDENTS_CHANNEL, ChangeListener
from gateway.db.partitions import PartitionMaintainer
from gateway.errors import ConfigError, GatewayError
from gateway.metrics import Metrics, describe_routes, forget_dead_workers
from gateway.services.auth import KeyRing
from gateway.services.control import ControlPlane
from gateway.services.feedback import FeedbackStore
from gateway.services.guardian import Guardian
from gateway.services.proxy import ProxyService
from gateway.services.reports import DriftMonitor
from gateway.services.reviews import ReviewQueue
from gateway.services.rollups import RollupJob
from gateway.services.students import StudentRegistry, StudentState
from gateway.services.teachers import TeacherVersions
from gateway.shadow.analysis import build_analyses
from gateway.shadow.dispatcher import ShadowDispatcher
from gateway.shadow.records import RedactingWriter, route_redactors

_log = logging.getLogger("shadow_gateway")


def create_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    if not settings.database_url:
        raise ConfigError("no database URL: set DATABASE_URL (the CLI starts an embedded one)")
    database_url = settings.database_url
    metrics = metrics or Metrics()
    # Built here, not in the lifespan, so a bad comparator or slice rule stops start-up with a
    # ConfigError the CLI reports in one line.
    analyses = build_analyses(settings.config, settings.config_path.parent)
    describe_routes(settings.config, metrics)
    upstream_keys = {k: v.get_secret_value() for k, v in settings.upstream_keys.items()}
    keys = KeyRing(settings.api_keys, settings.config.rate_limits)
    redactors = route_redactors(settings.config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = settings.config
        forget_dead_workers()
        # This worker's tracer, when the OTEL_* variables ask for traces (a provider set by
        # the process already, a test's, is kept).
        tracer_provider = tracing.from_environment()
        if tracer_provider is not None:
            tracing.configure(tracer_provider)
        engine = create_engine(database_url, config.database)
        writer = RedactingWriter(
            plain_dsn(database_url),
            settings.data_dir / "journal",
            config.log_writer,
            metrics,
            redactors=redactors,
            connect_timeout_s=config.database.connect_timeout_s,
        )
        await writer.start()
        # 0: unlimited. The app bounds the teacher's calls, and each student its own
        # (max_concurrency), which also bounds the students' connections in all.
        teacher_session = new_session(max_connections=0)
        student_session = new_session(max_connections=0)
        teacher = Teacher(teacher_session, config.routes, upstream_keys)

        def secret(name: str) -> str | None:  # a student added later may name a new variable
            return upstream_keys.get(name) or os.environ.get(name)

        pool = StudentPool(student_session, secret)

        def students_changed(route: str, live: list[StudentState]) -> None:
            pool.update(route, [(student.name, student.config) for student in live])
            # the student label's values: the registry's live names, retired ones removed
            metrics.describe_students(route, {student.name: student.status for student in live})

        students = StudentRegistry(engine, config, students_changed)
        for route in config.routes:
            students_changed(route.name, students.live(route.name))
        dispatcher = ShadowDispatcher(pool, writer, metrics, analyses)
        control = ControlPlane(engine, config, metrics)
        teacher_versions = TeacherVersions(engine, metrics)
        writer.observe(teacher_versions.saw)  # new teacher versions, from the rows written
        try:
            await control.seed()
            await students.seed()
            await teacher_versions.seed()
        except Exception as exc:  # Postgres down: serve the config's knobs until it is back
            _log.warning("cannot load route state from Postgres (%s); using the config's", exc)
        listener = ChangeListener(
            plain_dsn(database_url),
            {
                ROUTES_CHANNEL: control.refresh,
                STUDENTS_CHANNEL: students.refresh,
                KEYS_CHANNEL: lambda: keys.refresh(engine),
            },
        )
        listener.start()
        guardian = Guardian(engine, control, config, metrics)
        guardian.start()
        drift = DriftMonitor(engine, config, metrics.drift_psi)
        drift.start()
        partitions = PartitionMaintainer(engine, config.database.partitions)
        partitions.start()  # at once, then every check_interval_s
        rollups = RollupJob(engine, config.database.rollups)
        if config.database.rollups.enabled:
            rollups.start()  # reports read raw rows for any hour it has not computed
        teacher_versions.start()
        app.state.gateway = GatewayState(
            settings=settings,
            metrics=metrics,
            keys=keys,
            proxy=ProxyService(config, teacher, dispatcher, writer, metrics, analyses, control),
            control=control,
            students=students,
            dispatcher=dispatcher,
            writer=writer,
            engine=engine,
            feedback=FeedbackStore(
                engine, redactors, wait_s=max(2.0, 5 * config.log_writer.flush_interval_s)
            ),
            reviews=ReviewQueue(engine, config),
            started_at=int(time.time()),
        )
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # GC's full scans, which otherwise took 50-85 ms under load (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        _log.info("shadow-gateway %s ready: %d route(s)", __version__, len(config.routes))
        try:
            yield
        finally:
            # Requests are finished (the server drained them); now the background work.
            await guardian.stop()
            await drift.stop()
            await partitions.stop()
            await rollups.stop()
            await listener.stop()
            await dispatcher.drain(config.server.drain_timeout_s)
            await writer.close()
            await teacher_versions.stop()  # after the writer: its last rows are counted too
            await student_session.close()
            await teacher_session.close()
            await engine.dispose()
            if tracer_provider is not None:  # after the writer: its last batches' spans too
                tracing.configure(None)
                await asyncio.to_thread(tracer_provider.shutdown)  # exports what is left
            _log.info("shadow-gateway stopped; log queue drained")

    server = settings.config.server
    app = GatewayApp(
        hot=openai.HOT,
        body_timeout_s=server.body_timeout_s,
        body_min_rate=server.body_min_rate_bytes_s,
        title="shadow-gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.router.routes.extend(openai.routes)
    openai.add_to_openapi(app)
    app.add_middleware(
        BodyDeadline, timeout_s=server.body_timeout_s, min_rate=server.body_min_rate_bytes_s
    )
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(reports.router)
    app.include_router(reviews.router)
    app.include_router(teachers.router)
    console.install(app, settings)
    app.add_exception_handler(GatewayError, gateway_error_handler)
    app.add_exception_handler(HTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker runs: config path from the env."""
    return create_app(load_settings(os.environ.get("SHADOW_GATEWAY_CONFIG")))
