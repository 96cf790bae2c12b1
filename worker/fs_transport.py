"""kombu's `filesystem://` transport with atomic message writes (the embedded broker).

kombu writes a message by opening its final file name and then writing into it; a
consumer polling the folder can move that file away while it is still empty and fail on
an empty payload (seen here as a JSONDecodeError under load). Writing to a temporary name
and renaming it into place makes a message appear whole or not at all.

The folders are made when a channel opens (on connect), never when settings are built.

Celery's blocking consumer loop (used for this transport, which has no event loop) waits
2 s per `drain_events` call and makes one more call after it saw a shutdown signal: up to
4 s of idle waiting at every worker shutdown. `Transport.drain_events` waits in slices
of DRAIN_SLICE seconds and returns (as an idle timeout) once the worker was told to stop.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only the folders the options name (celeryconfig names them all): kombu's
        # defaults are relative names that would land in the working directory.
        options = self.transport_options
        for key in ("data_folder_in", "data_folder_out", "control_folder", "processed_folder"):
            if options.get(key) and (key != "processed_folder" or self.store_processed):
                Path(options[key]).mkdir(parents=True, exist_ok=True)

    def _put(self, queue, payload, **kwargs) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


DRAIN_SLICE = 0.2  # seconds


def _worker_stopping() -> bool:
    """True once this process's Celery worker was told to shut down (warm or cold), as
    `celery.worker.state.maybe_shutdown` tests it (an exit code of 0 counts)."""
    state = sys.modules.get("celery.worker.state")
    if state is None:
        return False
    flags = (state.should_stop, state.should_terminate)
    return any(flag is not None and flag is not False for flag in flags)


class Transport(filesystem.Transport):
    Channel = Channel

    def drain_events(self, connection, timeout=None):
        """kombu's, in slices of DRAIN_SLICE seconds; an idle wait ends early (as a
        timeout) once the worker is shutting down."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = DRAIN_SLICE if deadline is None else deadline - monotonic()
            try:
                return super().drain_events(connection, timeout=max(0.0, min(DRAIN_SLICE, left)))
            except TimeoutError:  # socket.timeout
                if left <= DRAIN_SLICE or _worker_stopping():
                    raise


TRANSPORT = f"{__name__}:Transport"
