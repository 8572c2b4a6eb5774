"""`tastebud stream` commands: consume Kafka topics into the store, replay a dataset as a stream."""

from __future__ import annotations

import signal
from typing import Annotated, Any

import typer

from tastebud.cli._app import FormatOption, app, console, read, settings_of
from tastebud.config import Settings

stream_app = typer.Typer(
    help="Event streaming: consume Kafka topics into the event store, replay a dataset as a stream.",
    no_args_is_help=True,
)
app.add_typer(stream_app, name="stream")

BootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        help="Kafka bootstrap servers host:port (default: stream.bootstrap_servers).",
        show_default=False,
    ),
]


def _with_stream(settings: Settings, **updates: Any) -> Settings:
    updates = {k: v for k, v in updates.items() if v is not None}
    if not updates:
        return settings
    return settings.model_copy(update={"stream": settings.stream.model_copy(update=updates)})


@stream_app.command("consume")
def consume_cmd(
    ctx: typer.Context,
    bootstrap: BootstrapOption = None,
    group: Annotated[str | None, typer.Option(help="Consumer group (default: stream.group_id).")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Messages per batch and store transaction (default: stream.batch_size).", min=1)
    ] = None,
    until_idle: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without a message (default: run until killed).")
    ] = None,
    max_messages: Annotated[int | None, typer.Option(help="Stop after this many messages.", min=1)] = None,
    create_topics: Annotated[
        bool, typer.Option("--create-topics/--no-create-topics", help="Create missing topics first.")
    ] = True,
    metrics_port: Annotated[
        int | None, typer.Option(help="Expose Prometheus metrics on this port.", min=1, max=65535)
    ] = None,
) -> None:
    """Consume the ratings and interactions topics into the event store (at least once; the store de-duplicates),
    and the served topic's recommendation_served events into the request log (stream.publish_served, on by default:
    what serving publishes in Kafka mode; a request id stored already is skipped).

    Bad messages go to the dead-letter topic with the reason. Stops cleanly on SIGTERM or Ctrl-C.
    """
    from tastebud.store import create_store
    from tastebud.stream.consumer import EventConsumer
    from tastebud.stream.metrics import StreamMetrics
    from tastebud.stream.producer import ensure_topics

    settings = _with_stream(settings_of(ctx), bootstrap_servers=bootstrap, group_id=group, batch_size=batch_size)
    stream = settings.stream
    store = create_store(settings)
    store.init_schema()
    metrics = StreamMetrics()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, registry=metrics.registry)
    consumer = EventConsumer.from_settings(settings, store, metrics=metrics)
    if create_topics:
        # the served topic too when serving publishes there: a topic missing at subscription is not picked up later
        served = [stream.served_topic] if stream.publish_served else []
        ensure_topics(
            stream.bootstrap_servers or "",
            [stream.ratings_topic, stream.interactions_topic, stream.dead_letter_topic, *served],
        )
    previous = signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    try:
        stats = consumer.run(idle_timeout=until_idle, max_messages=max_messages)
    except KeyboardInterrupt:
        consumer.stop()
        stats = consumer.stats
    finally:
        signal.signal(signal.SIGTERM, previous)
        store.close()
    console.print(
        f"[green]consumed[/green] {stats.messages:,} messages: {stats.inserted:,} new events, "
        f"{stats.duplicates:,} duplicates, {stats.served_inserted:,} new request-log records, "
        f"{stats.dead_lettered:,} dead-lettered "
        f"({stats.dead_letters_to_table:,} to the store's table)"
    )


@stream_app.command("replay")
def replay_cmd(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name (ml-100k) or path.")],
    rate: Annotated[float | None, typer.Option(help="Most events per second (default: as fast as possible).")] = None,
    speedup: Annotated[
        float | None, typer.Option(help="Follow the data's own clock this many times faster (e.g. 86400).")
    ] = None,
    to: Annotated[
        str, typer.Option("--to", help="'kafka' (stream.bootstrap_servers) or the API's URL, http://host:port.")
    ] = "kafka",
    bootstrap: BootstrapOption = None,
    limit: Annotated[int | None, typer.Option(help="Replay only the first N events in time order.", min=1)] = None,
    kind: Annotated[str, typer.Option(help="Kind of rows without a rating: view, play, click, like, skip.")] = "view",
    batch_size: Annotated[int, typer.Option(help="Events per send (HTTP request).", min=1)] = 500,
    fmt: FormatOption = None,
) -> None:
    """Publish a dataset's interactions in timestamp order, to Kafka or to an HTTP /events endpoint.

    Event ids come from the dataset's snapshot id, so replaying the same data again stores nothing new.
    """
    from tastebud.errors import ParameterError
    from tastebud.stream.replay import HttpSink, KafkaSink, dataset_events, replay

    settings = _with_stream(settings_of(ctx), bootstrap_servers=bootstrap)
    data = read(ctx, dataset, fmt)
    if to == "kafka":
        from tastebud.stream.producer import EventProducer, ensure_topics

        stream = settings.stream
        producer = EventProducer.from_settings(stream)
        ensure_topics(stream.bootstrap_servers or "", [stream.ratings_topic, stream.interactions_topic])
        sink: Any = KafkaSink(producer)
    elif to.startswith(("http://", "https://")):
        sink = HttpSink(to)
    else:
        raise ParameterError(f"--to {to!r}: expected 'kafka' or an http(s):// URL of the Tastebud API")
    stats = replay(
        dataset_events(data, kind=kind, limit=limit), sink, rate=rate, speedup=speedup, batch_size=batch_size
    )
    extra = f", {stats.rejected:,} rejected by the server" if stats.rejected else ""
    console.print(
        f"[green]replayed[/green] {stats.sent:,} events of {data.name} to {to} in {stats.seconds:.1f} s "
        f"({stats.rate:,.0f} events/s{extra})"
    )
