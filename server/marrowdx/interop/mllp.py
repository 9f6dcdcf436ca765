"""MLLP (the HL7 v2 Minimal Lower Layer Protocol): send a message and read its
ACK; a small receiving endpoint that parses with hl7apy and answers AA, or
AE/AR with the reason (for integration tests and for trying a LIS setup)."""

from __future__ import annotations

import socket
import socketserver
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from hl7apy.base_datatypes import ST
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from marrowdx.interop.hl7 import charset_of

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class MllpError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ack:
    code: str  # AA accepted, AE error, AR rejected
    control_id: str  # the acknowledged message's MSH-10
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def frame(er7: str) -> bytes:
    return START + er7.encode("utf-8") + END


def read_frame(sock: socket.socket) -> bytes:
    """One MLLP block from the socket (without the framing bytes)."""
    buffer = b""
    while END not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise MllpError("connection closed before the end of the MLLP block")
        buffer += chunk
        if len(buffer) > MAX_MESSAGE_BYTES:
            raise MllpError("MLLP block larger than the limit")
    start = buffer.find(START)
    if start < 0:
        raise MllpError("no MLLP start byte")
    return buffer[start + 1: buffer.index(END)]


def parse_ack(er7: str) -> Ack:
    message = parse_message(er7.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    msa = message.msa
    return Ack(msa.msa_1.value, msa.msa_2.value, msa.msa_3.value if msa.msa_3.value else "")


def control_id_of(message: bytes | str) -> str | None:
    """MSH-10 of an ER7 message, as it is on the wire (read without a full parse); None when
    the text has no MSH segment (only tests send such text, to try a receiver)."""
    text = message.decode("ascii", errors="replace") if isinstance(message, bytes) else message
    header = text.lstrip("\r\n").split("\r", 1)[0].split("\n", 1)[0]
    if not header.startswith("MSH") or len(header) < 4:
        return None
    fields = header.split(header[3])  # fields[n - 1] is MSH-n: MSH-1 is the separator itself
    return fields[9] if len(fields) > 9 else ""


def send(host: str, port: int, message: bytes | str, timeout_s: float = 30.0, encoding: str = "utf-8") -> Ack:
    """Send one message over MLLP and return the peer's ACK for it. ``message`` is sent as
    given when it is bytes (already in the charset its MSH-18 names), else encoded with
    ``encoding``. MllpError when no answer comes, the answer is not an HL7 ACK, or the ACK's
    MSA-2 names another message (an ACK for someone else is no proof of delivery)."""
    data = message if isinstance(message, bytes) else message.encode(encoding)
    control_id = control_id_of(data)
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(START + data + END)
        reply = read_frame(sock).decode(encoding, errors="replace")
    try:
        ack = parse_ack(reply)
    except Exception as exc:
        raise MllpError(f"the peer's answer is not an HL7 ACK: {type(exc).__name__}") from None
    if control_id is not None and ack.control_id != control_id:
        raise MllpError(f"the ACK acknowledges message {ack.control_id!r}, not {control_id!r}")
    return ack


def build_ack(code: str, text: str, control_id: str = "", trigger: str = "R01", version: str = "2.5.1") -> str:
    ack = Message("ACK", version=version)
    ack.msh.msh_3 = ST("MLLP-PEER").to_er7()
    ack.msh.msh_7 = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    ack.msh.msh_9 = f"ACK^{trigger}^ACK"
    ack.msh.msh_10 = uuid.uuid4().hex[:20]
    ack.msh.msh_11 = "P"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = ST(control_id).to_er7()
    if text:
        ack.msa.msa_3 = ST(text[:80]).to_er7()
    return ack.to_er7()


def check_message(er7: str) -> tuple[str, str, str]:
    """(ack code, reason, control id) for a received message: AR when it cannot be parsed,
    AE when it parses but breaks the 2.5.1 structure, AA otherwise."""
    try:
        message = parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT)
    except Exception as exc:
        return "AR", f"cannot parse: {type(exc).__name__}", ""
    control_id = message.msh.msh_10.value or ""
    try:
        parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT).validate()
    except Exception as exc:
        return "AE", f"invalid: {str(exc)[:60]}", control_id
    return "AA", "", control_id


class MllpReceiver:
    """A threaded MLLP endpoint on loopback. ``on_message(er7, ack_code)`` sees every
    message it acknowledged (accepted or not)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 on_message: Callable[[str, str], None] | None = None) -> None:
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    block = read_frame(self.request)
                except MllpError:
                    return
                data = block.decode(charset_of(block), errors="replace")  # as its MSH-18 says
                code, reason, control_id = check_message(data)
                if receiver.on_message:
                    receiver.on_message(data, code)
                self.request.sendall(frame(build_ack(code, reason, control_id)))

        self.server = socketserver.ThreadingTCPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.on_message = on_message
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="mllp", daemon=True)

    def __enter__(self) -> MllpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
