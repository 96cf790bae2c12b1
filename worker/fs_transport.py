"""kombu's `filesystem://` transport with atomic message writes (the embedded broker).

kombu writes a message by opening its final file name and then writing into it; a
consumer polling the folder can move that file away while it is still empty and fail on
an empty payload (seen here as a JSONDecodeError under load). Writing to a temporary name
and renaming it into place makes a message appear whole or not at all.

The folders are made when a channel opens (on connect), never when settings are built.
"""

from __future__ import annotations

import os
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


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
