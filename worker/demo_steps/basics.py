"""Demo step: a task sent by name through the broker, answered by a worker child."""

from __future__ import annotations

from cachework.worker import routing


def run(ctx) -> None:
    ctx.console.rule("a task through the broker")
    pids = set()
    for _ in range(4):
        answer = ctx.call(routing.PING)
        pids.add(answer["pid"])
    ctx.console.print(
        f"  cachework.ping answered {answer} - {len(pids)} distinct child pid(s): {sorted(pids)}"
    )
