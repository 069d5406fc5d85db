"""Getting the image bytes out of a request, never holding more than --max_bytes of it.

Two ways to send an image: a multipart form with the image in the field `file` (what HTML
forms and `curl -F file=@x.jpg` send), or the raw body with an image content type (`curl
--data-binary @x.jpg -H 'Content-Type: image/jpeg'`), which costs the server less. The body
is read chunk by chunk and refused with 413 as soon as it passes the limit; a declared
Content-Length over the limit is refused before any of the body is read (see limits.py).
"""

from __future__ import annotations

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .images import UploadError

FIELD = "file"
RAW_TYPES = ("image/", "application/octet-stream")
USAGE = (f"send the image as multipart/form-data in the field '{FIELD}', or as the raw body "
         "with an image/* content type")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole request body, or 413 as soon as it passes max_bytes."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise UploadError(413, f"request body is over the limit of {max_bytes:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise UploadError(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def check_content_type(content_type: str) -> str:
    """'multipart' or 'raw' for an acceptable request content type, else 415."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "multipart/form-data":
        return "multipart"
    if not mime or mime.startswith(RAW_TYPES):
        return "raw"
    raise UploadError(415, f"content type {mime!r} is not accepted: {USAGE}")


def multipart_fields(body: bytes, content_type: str) -> dict[str, bytes]:
    """Every part of a multipart body by field name (the first part of each name)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(422, "multipart body without a boundary in its Content-Type")
    fields: dict[str, bytes] = {}
    current: dict = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["header"] = current.get("header", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["value"] = current.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        if current.pop("header", b"").lower() == b"content-disposition":
            current["disposition"] = current.get("value", b"")
        current.pop("value", None)

    def on_part_begin() -> None:
        current.clear()
        current["data"] = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"].append(data[start:end])

    def on_part_end() -> None:
        _, opts = parse_options_header(current.get("disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        fields.setdefault(name, b"".join(current["data"]))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end})
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise UploadError(422, f"malformed multipart body: {e}") from None
    return fields


async def image_bytes(request: Request, max_bytes: int) -> bytes:
    """The uploaded image's bytes (unchecked: decoding comes later)."""
    content_type = request.headers.get("content-type", "")
    kind = check_content_type(content_type)
    body = await read_body(request, max_bytes)
    if kind == "raw":
        return body
    fields = multipart_fields(body, content_type)
    if FIELD not in fields:
        got = ", ".join(repr(k) for k in fields) or "none"
        raise UploadError(422, f"no multipart field named '{FIELD}' (fields sent: {got}); {USAGE}")
    return fields[FIELD]
