"""python-hl7's MLLP server (``hl7.mllp``, independent of our hl7apy-based code) as the LIS
in tests, on loopback, in a thread of its own. ``behaviour`` says how it answers:

- ``"ack"``: decodes the message with the charset its MSH-18 names (HL7's default, ASCII,
  when empty), parses it with python-hl7 and answers its own ACK (``create_ack``, MSA-2 =
  the message's MSH-10); a message it cannot decode gets AR, as such a receiver would;
- ``"other-id"``: an AA whose MSA-2 names some other message;
- ``"close"``: reads the message and closes without a word;
- ``"garbage"``: answers an MLLP block that is not HL7."""

from __future__ import annotations

import asyncio
import threading

import hl7
from hl7.mllp import start_hl7_server

# MSH-18 values (HL7 table 0211) -> Python codecs; an empty MSH-18 means the HL7 default, ASCII.
CHARSETS = {"": "ascii", "ASCII": "ascii", "UNICODE UTF-8": "utf-8", "8859/1": "latin-1"}


class Lis:
    def __init__(self, behaviour: str = "ack") -> None:
        self.behaviour = behaviour
        self.received: list[hl7.Message] = []
        self.raw: list[bytes] = []
        self.refused: list[str] = []  # why a message could not be read
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hl7-lis", daemon=True)

    async def _on_client(self, reader, writer) -> None:
        try:
            block = await reader.readblock()
            self.raw.append(block)
            if self.behaviour == "close":
                return
            if self.behaviour == "garbage":
                writer.writeblock(b"this is not an HL7 message")
                return
            header = block.split(b"\r", 1)[0].decode("ascii", errors="replace")
            fields = header.split(header[3]) if len(header) > 3 else []
            charset = fields[17] if len(fields) > 17 else ""
            try:
                message = hl7.parse(block.decode(CHARSETS.get(charset, "ascii")))
            except (UnicodeDecodeError, LookupError) as exc:
                self.refused.append(f"{type(exc).__name__} reading MSH-18 {charset!r}")
                message = hl7.parse(block.decode("ascii", errors="replace"))
                writer.writeblock(str(message.create_ack("AR")).encode("ascii", errors="replace"))
                return
            self.received.append(message)
            ack = message.create_ack("AA")
            if self.behaviour == "other-id":
                ack.segment("MSA")[2] = "SOME-OTHER-MESSAGE"
            writer.writeblock(str(ack).encode("ascii", errors="replace"))
        finally:
            await writer.drain()
            writer.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(start_hl7_server(self._on_client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> Lis:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
