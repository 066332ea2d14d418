"""permessage-deflate (RFC 7692) as the gateway negotiates it: no zlib state between messages.

Theory of operation
-------------------
websockets' default permessage-deflate keeps a compressor and a
decompressor per connection for its whole life ("context takeover": each
message is compressed against the ones before), tens of kB of zlib state
per client, idle or not.  A gateway holds thousands of idle watchers, and
its frames are MessagePack maps that are small, or batches that compress
well on their own; so it negotiates

- ``server_no_context_takeover`` and ``client_no_context_takeover``: each
  message is compressed (and decompressed) on its own, with a zlib object
  made for it and dropped at its end.  Every client must accept both (RFC
  7692 section 7.1.1: the server may always ask for them);
- a window of 2^12 bytes each way when the client lets us choose, and zlib's
  ``memLevel`` 5, as websockets' defaults: about 40 kB of zlib memory while
  one message is compressed;
- messages under ``COMPRESS_MIN_BYTES`` go uncompressed (RSV1 unset, which
  RFC 7692 allows per message): for a frame of a few dozen bytes deflate
  saves a handful of bytes and costs a zlib object, so only frames that
  gain from it pay for it (a ``batch``, a long text or code event).

So an idle client holds no compression state at all, and a busy one holds it
only while one of its large messages is encoded.  ``Config.compression``
(``--no-compression``) turns the extension off altogether.  docs/protocol.md
section 1 is the wire side of this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import CTRL_OPCODES, Frame, Opcode
from websockets.typing import ExtensionParameter

__all__ = ["COMPRESS_MIN_BYTES", "LeanDeflate", "LeanDeflateFactory"]

#: Messages shorter than this many bytes are sent uncompressed.
COMPRESS_MIN_BYTES: Final = 1024
#: LZ77 window each way (2^12 bytes), when the client lets the server choose.
WINDOW_BITS: Final = 12
#: zlib's memLevel for the compressor (1-9; 8 is zlib's default).
MEM_LEVEL: Final = 5


class LeanDeflate(PerMessageDeflate):
    """permessage-deflate without context takeover, that leaves small messages uncompressed.

    With no context takeover both ways, websockets' ``PerMessageDeflate``
    makes a zlib object per message and drops it at the message's end; this
    only skips messages under ``COMPRESS_MIN_BYTES`` (and the continuation
    frames of a message whose first frame was skipped).
    """

    def __init__(self, remote_window_bits: int, local_window_bits: int, compress_settings: dict[str, int]) -> None:
        super().__init__(True, True, remote_window_bits, local_window_bits, compress_settings)
        #: The message being sent was left uncompressed (its continuation frames are too).
        self.plain_cont = False

    def encode(self, frame: Frame) -> Frame:
        if frame.opcode in CTRL_OPCODES:
            return frame
        if frame.opcode is Opcode.CONT:
            if self.plain_cont:
                self.plain_cont = not frame.fin
                return frame
        elif len(frame.data) < COMPRESS_MIN_BYTES:
            self.plain_cont = not frame.fin
            return frame
        return super().encode(frame)


class LeanDeflateFactory(ServerPerMessageDeflateFactory):
    """The server side of the negotiation: accepts any permessage-deflate offer as ``LeanDeflate``."""

    def __init__(self) -> None:
        super().__init__(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=WINDOW_BITS,
            client_max_window_bits=WINDOW_BITS,
            compress_settings={"memLevel": MEM_LEVEL},
        )

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, ext = super().process_request_params(params, accepted_extensions)
        # Both no_context_takeover flags are always in the response (the factory's config).
        assert ext.remote_no_context_takeover and ext.local_no_context_takeover
        return response, LeanDeflate(ext.remote_max_window_bits, ext.local_max_window_bits, ext.compress_settings)
