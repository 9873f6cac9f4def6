"""`ganserve workers`: a server's workers as they advertise themselves (GET /workers)."""

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ganserve.cli import common
from ganserve.cli.common import ApiKey, Server, reported
from ganserve.client import Worker


def _workers_table(workers: list[Worker]) -> Table:
    live = sum(w.live for w in workers)
    table = Table(title=f"{len(workers)} worker(s), {live} live")
    for column in ("name", "class", "devices", "queues", "host", "pid", "last seen", "live"):
        table.add_column(column, no_wrap=column in ("name", "class", "pid", "live"))
    for w in workers:
        table.add_row(
            escape(w.name),
            w.worker_class,
            ",".join(map(str, w.devices)) or "–",
            ",".join(w.queues),
            escape(w.host),
            str(w.pid),
            w.last_seen.strftime("%Y-%m-%d %H:%M:%S"),
            "[green]yes[/green]" if w.live else "[red]no[/red]",
        )
    return table


def workers(server: Server = None, api_key: ApiKey = None) -> None:
    """A server's workers: class, devices, queues, host, and whether each is live.

    Needs a key with scope `admin`."""
    with reported():
        found = common.connect(server, api_key).workers()
    Console().print(_workers_table(found))
