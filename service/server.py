"""Wiring: settings, telemetry, store, model client, servicers,
interceptors, health, reflection and the HTTP door; ``Loom`` starts and
stops them together (``run.py`` runs it as a process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from generated.loom.v1 import (
    assistant_pb2,
    assistant_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    thread_pb2,
    thread_pb2_grpc,
)
from service.api.assistants import AssistantServicer
from service.api.context import current_tenant
from service.api.health import DatabaseHealth
from service.api.interceptor import LoomInterceptor
from service.api.limits import LimitsInterceptor
from service.api.memory import MemoryServicer
from service.api.reflection import enable_reflection
from service.api.threads import ThreadServicer
from service.config import Settings
from service.core.assistants import Assistants
from service.core.conversation import Conversation, ReplyPolicy, ReplyServices, ReplyStores
from service.core.errors import Translator
from service.core.forks import Forks
from service.core.jobs import JobRunner
from service.core.keys import KeyService
from service.core.leases import Leases
from service.core.ports import ChatModel, MemoryPort
from service.core.ratelimit import Limiter, Limits
from service.core.shield import Shield
from service.core.summaries import Summarizer
from service.core.threads import Threads
from service.core.usage import Ledger
from service.database import store_from
from service.http.app import TENANT, build_app
from service.http.door import Door
from service.http.server import HttpServer
from service.llm import OpenAIChatModel
from service.llm.tokens import TokenBudgets
from service.memory.index import ChromaMemoryIndex
from service.memory_wiring import build_memory
from service.store import MongoStore
from service.store import errors as store_errors
from service.telemetry import Telemetry, span, tracer
from service.telemetry.http import HttpTelemetry
from service.telemetry.jobs import BacklogSampler
from service.telemetry.rpc import server_interceptors
from service.transport import (
    bind,
    bind_http,
    describe,
    http_tls,
    receive_limit,
    server_options,
)

__all__ = [
    "TRANSLATORS",
    "Loom",
    "build",
    "build_conversation",
    "build_grpc_server",
    "build_http",
    "build_jobs",
    "build_limiter",
    "build_model",
]

log = logging.getLogger(__name__)

# Seconds replies cut by a shutdown get to store their end and tell their caller.
_CUT_MARGIN = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Served:
    """A gRPC server built and bound, not yet started."""

    server: aio.Server
    health: health.aio.HealthServicer
    port: int
    transport: str  # how it serves: plaintext, TLS or mTLS


@dataclass(slots=True, kw_only=True)
class Loom:
    """A built, not yet started, Loom server."""

    settings: Settings
    store: MongoStore
    llm: OpenAIChatModel
    keys: KeyService
    assistants: Assistants
    threads: Threads
    server: aio.Server
    health: health.aio.HealthServicer
    shield: Shield
    conversation: Conversation
    jobs: JobRunner
    memory_index: ChromaMemoryIndex
    port: int
    telemetry: Telemetry
    database_health: DatabaseHealth
    backlog: BacklogSampler | None = None
    transport: str
    limiter: Limiter
    http: HttpServer | None = None  # the OpenAI-shaped door, when LOOM_HTTP_LISTEN is set
    _sweep: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def http_port(self) -> int:
        """The HTTP door's port (0 when it is off)."""
        return self.http.port if self.http is not None else 0

    async def start(self) -> None:
        """Prepare the database, then start serving."""
        # One trace for the start-up work (not a trace per MongoDB command).
        # Only around it: the server's tasks must not inherit this span.
        with span(tracer("loom.server"), "loom.start"):
            await self.store.ensure_indexes()
            await self.store.migrate()
            if self.settings.dev_api_key is not None:
                await self.keys.register(self.settings.dev_api_key.get_secret_value(), "dev")
            await self.assistants.resume_deletes()
            await self.threads.resume_deletes()
        await self.server.start()
        if self.http is not None:
            await self.http.start()
        self.jobs.start()
        if self.backlog is not None:
            self.backlog.start()
        await self.database_health.set(True)
        self.database_health.start()
        self._sweep = asyncio.create_task(
            self.conversation.sweep(self.settings.lease_seconds), name="sweep unfinished replies"
        )
        log.log(*describe(self.transport, self.settings.listen.rsplit(":", 1)[0] + f":{self.port}"))
        if self.http is not None and self.settings.http_listen:
            host = self.settings.http_listen.rsplit(":", 1)[0]
            log.log(*describe(self.transport, f"{host}:{self.http_port}", "loom HTTP door"))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let streams in flight finish within the grace
        period, then cut the replies still running (each stores what it has
        INCOMPLETE and ends UNAVAILABLE with reason SERVER_SHUTTING_DOWN),
        and close connections."""
        grace = self.settings.shutdown_grace if grace is None else grace
        await self.database_health.stop()
        if self._sweep is not None:
            self._sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep
        await self.health.enter_graceful_shutdown()
        if self.backlog is not None:
            await self.backlog.stop()
        await self.jobs.stop()
        # gRPC cancels what is left after its own grace, without a word to
        # the caller; Loom cuts its replies first, leaving them time to
        # store their end and say why.
        stopping = asyncio.gather(
            self.server.stop(grace + _CUT_MARGIN),
            self.http.stop(grace) if self.http else asyncio.sleep(0),
        )
        if not await self.conversation.drain(grace):
            cut = self.conversation.interrupt()
            log.warning("shutting down: %d replies cut short, stored INCOMPLETE", cut)
        await stopping
        if not await self.conversation.drain(5.0):
            log.warning("replies still running at shutdown; their final state may be lost")
        await self.shield.drain()
        await self.memory_index.close()
        await self.memory_index.embedder.aclose()
        await self.llm.close()
        await self.store.close()


# Adapter exceptions that mean something to a caller: database errors that
# waiting cures (down, failing over, busy) are UNAVAILABLE.
TRANSLATORS: tuple[Translator, ...] = tuple(store_errors.translations())

SERVICES = ("", "loom.v1.AssistantService", "loom.v1.ThreadService", "loom.v1.MemoryService")


def build(settings: Settings, telemetry: Telemetry | None = None) -> Loom:
    """Assemble a server from settings (nothing is started); ``telemetry``
    (from ``service.telemetry.setup``, before this call so that MongoDB is
    traced) defaults to off."""
    telemetry = telemetry or Telemetry()
    store = store_from(settings)
    llm = build_model(settings, telemetry)
    shield = Shield()
    jobs = build_jobs(settings, store, shield)
    index, memory, memories = build_memory(settings, telemetry, store=store, jobs=jobs, llm=llm)
    assistants = Assistants(store.assistants, store.threads, store.messages, memory=memory)
    threads = Threads(assistants, store.threads, store.messages, memory=memory, jobs=jobs)
    conversation = build_conversation(
        settings,
        store=store,
        llm=llm,
        shield=shield,
        jobs=jobs,
        assistants=assistants,
        threads=threads,
        memory=memory,
    )
    keys, limiter = KeyService(store.keys), build_limiter(settings)  # shared by both doors
    forks = Forks(threads, store.messages, context_chars=settings.context_cache_chars)
    door = build_door(settings, keys, limiter, threads, conversation, forks)
    served = build_grpc_server(
        settings,
        telemetry,
        keys,
        limiter,
        assistants=AssistantServicer(assistants),
        threads=ThreadServicer(threads, conversation, forks),
        memory=MemoryServicer(memories),
    )
    return Loom(
        settings=settings,
        store=store,
        llm=llm,
        keys=keys,
        assistants=assistants,
        threads=threads,
        server=served.server,
        health=served.health,
        shield=shield,
        conversation=conversation,
        jobs=jobs,
        memory_index=index,
        port=served.port,
        transport=served.transport,
        limiter=limiter,
        http=build_http(settings, telemetry, door),
        telemetry=telemetry,
        database_health=DatabaseHealth(
            served.health, store.ping, SERVICES, timeout=settings.mongodb_timeout + 1.0
        ),
        backlog=BacklogSampler(store.jobs.backlog, telemetry.config.metric_interval)
        if telemetry.metrics
        else None,
    )


def build_door(
    settings: Settings,
    keys: KeyService,
    limiter: Limiter,
    threads: Threads,
    conversation: Conversation,
    forks: Forks,
) -> Door:
    """What the HTTP door's endpoints call: the use cases the gRPC servicers
    call, the same keys and limiter."""
    return Door(
        keys.authenticate, limiter, threads, conversation, forks, TRANSLATORS, max_body(settings)
    )


def max_body(settings: Settings) -> int:
    """The largest request body the HTTP door reads: the gRPC door's limit."""
    return receive_limit(settings.max_message_chars)


def build_limiter(settings: Settings) -> Limiter:
    """The call limits of this replica, shared by the gRPC and HTTP doors."""
    return Limiter(
        Limits(
            rate=settings.rate_limit_per_key,
            burst=settings.rate_limit_burst,
            streams=settings.max_streams_per_tenant,
        )
    )


def build_model(settings: Settings, telemetry: Telemetry) -> OpenAIChatModel:
    """The client of the OpenAI-compatible endpoint the settings name."""
    return OpenAIChatModel(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
        timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries,
        retry_base_delay=settings.llm_retry_delay,
        capture_content=telemetry.capture_content,
        max_tokens_field=settings.llm_max_tokens_field,
    )


def build_jobs(settings: Settings, store: MongoStore, shield: Shield) -> JobRunner:
    """The runner of durable background jobs (fact extraction, summaries,
    thread expiry); the model tokens a job spends are added to its thread."""
    return JobRunner(
        store.jobs,
        store.leases,
        shield,
        poll_interval=settings.job_poll_seconds,
        concurrency=settings.job_concurrency,
        tenant_concurrency=settings.job_tenant_concurrency,
        max_attempts=settings.job_max_attempts,
        retry_delay=settings.job_retry_delay,
        max_retry_delay=settings.job_max_retry_delay,
        lease_seconds=settings.job_lease_seconds,
        translate=store_errors.translate,
        charge=Ledger(Leases(store.leases, settings.lease_seconds, shield), store.threads).charge,
    )


def build_conversation(
    settings: Settings,
    *,
    store: MongoStore,
    llm: ChatModel,
    shield: Shield,
    jobs: JobRunner,
    assistants: Assistants,
    threads: Threads,
    memory: MemoryPort | None,
) -> Conversation:
    """The reply loop, with rolling summaries run as jobs."""
    counter = TokenBudgets(window_override=settings.context_window)
    leases = Leases(store.leases, settings.lease_seconds, shield, settings.max_queued_per_thread)
    summarizer = Summarizer(
        threads=store.threads,
        leases=leases,
        llm=llm,
        jobs=jobs,
        counter=counter,
        summary_model=settings.summary_model,
    )
    return Conversation(
        stores=ReplyStores(
            assistants=assistants,
            threads=threads,
            thread_store=store.threads,
            messages=store.messages,
            requests=store.requests,
            leases=leases,
            shield=shield,
            translate=store_errors.translate,
        ),
        services=ReplyServices(llm=llm, counter=counter, memory=memory, summarizer=summarizer),
        policy=ReplyPolicy(
            default_model=settings.llm_model,
            max_content=settings.max_message_chars,
            lease_ttl=settings.lease_seconds,
            context_chars=settings.context_cache_chars,
            max_tool_rounds=settings.max_tool_rounds,
            run_expiry=settings.run_expiry_seconds,
        ),
    )


def build_grpc_server(
    settings: Settings,
    telemetry: Telemetry,
    keys: KeyService,
    limiter: Limiter,
    *,
    assistants: AssistantServicer,
    threads: ThreadServicer,
    memory: MemoryServicer,
) -> Served:
    """The gRPC server with Loom's services, health, reflection and call
    limits (``limiter``, shared with the HTTP door), bound to
    ``LOOM_LISTEN`` (with TLS when the settings ask).

    Raises:
        OSError: the address cannot be listened on.
    """
    # Order matters: the tracing interceptor's span is the parent of all the
    # call's work and records the status code Loom's interceptor sets.
    interceptors = server_interceptors(telemetry.tracer_provider, lambda: current_tenant.get(None))
    server = aio.server(
        # The limits apply to the caller Loom's interceptor has authenticated.
        interceptors=[
            *interceptors,
            LoomInterceptor(keys.authenticate, TRANSLATORS),
            LimitsInterceptor(limiter),
        ],
        options=server_options(settings),
    )
    assistant_pb2_grpc.add_AssistantServiceServicer_to_server(assistants, server)
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(memory, server)
    thread_pb2_grpc.add_ThreadServiceServicer_to_server(threads, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(
        (
            assistant_pb2.DESCRIPTOR.services_by_name["AssistantService"].full_name,
            thread_pb2.DESCRIPTOR.services_by_name["ThreadService"].full_name,
            memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        ),
        server,
    )
    port, transport = bind(server, settings)
    return Served(server=server, health=health_servicer, port=port, transport=transport)


def build_http(settings: Settings, telemetry: Telemetry, door: Door) -> HttpServer | None:
    """The OpenAI-shaped HTTP door over the same core as the gRPC services,
    traced like them, bound to ``LOOM_HTTP_LISTEN`` with the same TLS; None
    when that is unset.

    Raises:
        OSError: the address cannot be listened on.
    """
    if not settings.http_listen:
        return None
    app = HttpTelemetry(build_app(door), telemetry.tracer_provider, lambda s: s.get(TENANT))
    return HttpServer(
        app,
        bind_http(settings.http_listen),
        ssl_context=http_tls(settings),
        grace=settings.shutdown_grace,
    )
