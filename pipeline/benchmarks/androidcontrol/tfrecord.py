"""TFRecord files and ``tf.train.Example`` messages without TensorFlow.

AndroidControl ships as GZIP TFRecord shards of ``tf.train.Example`` protos; installing TensorFlow only
to read them is heavy, so this module reads and writes the format directly:

* Framing, per record: ``uint64 length`` (little endian), ``uint32 masked_crc32c(length bytes)``,
  ``data``, ``uint32 masked_crc32c(data)``; masked = ``((crc >> 15) | (crc << 17)) + 0xA282EAD8``.
  The whole file may be GZIP-compressed (detected from the magic bytes).
* ``tf.train.Example`` is hand-decoded from the protobuf wire format (it is three tiny messages), which
  also lets a reader decode only the features it asks for (e.g. ``episode_id`` before the screenshots).

CRC32C uses the ``google-crc32c`` C extension when installed (hundreds of MB/s; needed for the real
~GB shards) and a table-driven pure-Python fallback otherwise (fine for tests and small files).
"""

from __future__ import annotations

import gzip
import io
import logging
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

try:  # optional fast path
    import google_crc32c as _gcrc
except ImportError:  # pragma: no cover - depends on the environment
    _gcrc = None

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
_SLOW_CRC_WARN_BYTES = 64 << 20
_MASK_DELTA = 0xA282EAD8


class TFRecordError(ValueError):
    """A TFRecord file that cannot be read: bad framing, checksum mismatch, truncation, bad GZIP."""


class ExampleDecodeError(ValueError):
    """Bytes that are not a well-formed ``tf.train.Example``."""


# ---------------------------------------------------------------------------------------------------
# CRC32C (Castagnoli)
# ---------------------------------------------------------------------------------------------------

def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c_python(data: bytes | bytearray | memoryview) -> int:
    """CRC32C in pure Python (reflected polynomial 0x82F63B78); slow but dependency-free."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C of ``data`` (the C extension when available)."""
    if _gcrc is not None:
        return int(_gcrc.value(bytes(data)))
    return crc32c_python(data)


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """The TFRecord checksum: CRC32C rotated right by 15 bits plus a constant (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------
# Record framing
# ---------------------------------------------------------------------------------------------------

class _Prefixed(io.RawIOBase):
    """A read-only stream that yields ``prefix`` and then the rest of ``stream`` (used to put back the
    magic bytes sniffed from a stream that cannot seek)."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._stream.read(len(view))
        view[:len(data)] = data
        return len(data)


def _sniff_gzip(stream: BinaryIO) -> tuple[bool, BinaryIO]:
    """Whether ``stream`` starts with the GZIP magic, and a stream positioned where it was."""
    seekable = getattr(stream, "seekable", None)
    if seekable is not None and seekable():
        start = stream.tell()
        magic = _read_exact(stream, 2)
        stream.seek(start)
        return magic == GZIP_MAGIC, stream
    magic = _read_exact(stream, 2)
    return magic == GZIP_MAGIC, io.BufferedReader(_Prefixed(magic, stream))  # type: ignore[return-value]


def _open_source(source: str | Path | BinaryIO) -> tuple[BinaryIO, bool, str, int | None]:
    """``(binary stream, whether we opened it, name for messages, size in bytes if known)`` for a local
    path, an fsspec URL or an already open binary file object (which the caller keeps and closes)."""
    if isinstance(source, (str, Path)) and "://" in str(source):
        import fsspec

        fs, path = fsspec.core.url_to_fs(str(source))
        try:
            size = int(fs.size(path))
        except (OSError, TypeError, ValueError):
            size = None
        return fs.open(path, "rb"), True, str(source), size
    if isinstance(source, (str, Path)):
        path = Path(source)
        return path.open("rb"), True, str(path), path.stat().st_size
    name = next((v for v in (getattr(source, a, None) for a in ("full_name", "name", "path")) if v), "<stream>")
    size = getattr(source, "size", None)
    return source, False, str(name), size if isinstance(size, int) else None


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    left = n
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def iter_records(source: str | Path | BinaryIO, compression: str | None = "auto",
                 verify: bool = True) -> Iterator[bytes]:
    """Yield the payload of every record in a TFRecord file, in order.

    ``source``: a local path, an fsspec URL (``s3://...``, ``memory://...``) or an open binary file
    object (read from its current position and left open; it need not be seekable).
    ``compression``: ``"auto"`` (GZIP iff the data starts with the GZIP magic), ``"gzip"`` or ``None``;
    GZIP is decompressed while streaming. ``verify`` checks both CRCs. Any defect raises
    ``TFRecordError`` naming the file and the byte offset of the record in the (uncompressed) record
    stream.
    """
    if compression not in ("auto", None, "gzip"):
        raise ValueError(f"unsupported TFRecord compression {compression!r} (use 'gzip' or None)")
    raw, owned, name, size = _open_source(source)
    if verify and _gcrc is None and size is not None and size > _SLOW_CRC_WARN_BYTES:
        log.warning("%s: verifying CRC32C in pure Python is slow for large files; install google-crc32c "
                    "or pass verify=False", name)
    try:
        if compression == "auto":
            is_gzip, raw_stream = _sniff_gzip(raw)
            compression = "gzip" if is_gzip else None
        else:
            raw_stream = raw
    except OSError as exc:
        if owned:
            raw.close()
        raise TFRecordError(f"{name}: unreadable: {exc}") from exc
    stream: BinaryIO = (gzip.GzipFile(fileobj=raw_stream, mode="rb")  # type: ignore[assignment]
                        if compression == "gzip" else raw_stream)
    offset = 0
    index = 0
    try:
        while True:
            where = f"{name}: record {index} at byte offset {offset}"
            try:
                header = _read_exact(stream, 12)
                if not header:
                    return
                if len(header) < 12:
                    raise TFRecordError(f"{where}: truncated header ({len(header)} of 12 bytes)")
                length_bytes = header[:8]
                (length,) = struct.unpack("<Q", length_bytes)
                (length_crc,) = struct.unpack("<I", header[8:])
                if verify and masked_crc32c(length_bytes) != length_crc:
                    raise TFRecordError(f"{where}: length checksum mismatch (corrupt or not a TFRecord file)")
                data = _read_exact(stream, length)
                if len(data) < length:
                    raise TFRecordError(f"{where}: truncated data ({len(data)} of {length} bytes)")
                footer = _read_exact(stream, 4)
                if len(footer) < 4:
                    raise TFRecordError(f"{where}: truncated data checksum")
            except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
                raise TFRecordError(f"{where}: unreadable {compression or 'uncompressed'} stream: {exc}") from exc
            (data_crc,) = struct.unpack("<I", footer)
            if verify:
                actual = masked_crc32c(data)
                if actual != data_crc:
                    raise TFRecordError(f"{where}: data checksum mismatch (stored {data_crc:#010x}, "
                                        f"computed {actual:#010x})")
            yield data
            offset += 16 + length
            index += 1
    finally:
        if stream is not raw_stream:
            stream.close()  # the GzipFile wrapper only; it never closes the file object it was given
        if owned:
            raw.close()


def frame_record(data: bytes) -> bytes:
    """One framed record (length, masked CRC of the length, data, masked CRC of the data)."""
    length_bytes = struct.pack("<Q", len(data))
    return (length_bytes + struct.pack("<I", masked_crc32c(length_bytes)) + data
            + struct.pack("<I", masked_crc32c(data)))


def write_records(path: str | Path, records: Iterable[bytes], compression: str | None = "gzip") -> int:
    """Write ``records`` as a TFRecord file (GZIP by default, like AndroidControl); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    buf = io.BytesIO()
    for rec in records:
        buf.write(frame_record(bytes(rec)))
        count += 1
    payload = buf.getvalue()
    if compression == "gzip":
        # mtime=0 keeps the file byte-identical across runs
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(payload)
    elif compression is None:
        path.write_bytes(payload)
    else:
        raise ValueError(f"unsupported TFRecord compression {compression!r} (use 'gzip' or None)")
    return count


# ---------------------------------------------------------------------------------------------------
# tf.train.Example wire format
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }    (map entry: key = 1, value = 2)
#   Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
#   Int64List { repeated int64 value = 1 [packed]; }
# ---------------------------------------------------------------------------------------------------

FeatureValue = list[bytes] | list[float] | list[int]


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise ExampleDecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ExampleDecodeError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for every field of a message; LEN values are memoryviews."""
    pos = 0
    n = len(buf)
    while pos < n:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise ExampleDecodeError("truncated fixed64")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > n:
                raise ExampleDecodeError(f"length-delimited field {field} runs past the end")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            if pos + 4 > n:
                raise ExampleDecodeError("truncated fixed32")
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ExampleDecodeError(f"unsupported wire type {wire} for field {field}")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: memoryview) -> FeatureValue:
    out: list[Any] = []
    for field, wire, value in _fields(buf):
        if field not in (1, 2, 3) or wire != 2:
            continue  # unknown field: skip, as protobuf would
        out = []  # oneof: the last one set wins
        for sub_field, sub_wire, item in _fields(value):
            if sub_field != 1:
                continue
            if field == 1:  # bytes
                if sub_wire != 2:
                    raise ExampleDecodeError("bytes_list value is not length-delimited")
                out.append(bytes(item))
            elif field == 2:  # float: packed (wire 2) or not (wire 5)
                if sub_wire == 2:
                    if len(item) % 4:
                        raise ExampleDecodeError("packed float_list length is not a multiple of 4")
                    out.extend(struct.unpack(f"<{len(item) // 4}f", item))
                elif sub_wire == 5:
                    out.append(struct.unpack("<f", item)[0])
            else:  # int64: packed (wire 2) or not (wire 0)
                if sub_wire == 2:
                    p = 0
                    while p < len(item):
                        v, p = _varint(item, p)
                        out.append(_signed64(v))
                elif sub_wire == 0:
                    out.append(_signed64(item))
    return out


def parse_example(data: bytes | memoryview, keys: Iterable[str] | None = None) -> dict[str, FeatureValue]:
    """Decode a serialized ``tf.train.Example`` into ``{name: list of bytes | floats | ints}``.

    With ``keys``, only those features are decoded (the rest is skipped without copying). An empty
    feature (no kind set) decodes to ``[]``. Raises ``ExampleDecodeError`` on malformed bytes.
    """
    wanted = set(keys) if keys is not None else None
    buf = memoryview(data)
    out: dict[str, FeatureValue] = {}
    for field, wire, features in _fields(buf):
        if field != 1 or wire != 2:
            continue
        for f_field, f_wire, entry in _fields(features):
            if f_field != 1 or f_wire != 2:
                continue
            name: str | None = None
            value_buf: memoryview | None = None
            for e_field, e_wire, v in _fields(entry):
                if e_field == 1 and e_wire == 2:
                    try:
                        name = bytes(v).decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise ExampleDecodeError(f"feature name is not UTF-8: {exc}") from exc
                elif e_field == 2 and e_wire == 2:
                    value_buf = v
            if name is None or (wanted is not None and name not in wanted):
                continue
            out[name] = _decode_feature(value_buf) if value_buf is not None else []
    return out


def _key(field: int, wire: int) -> bytes:
    return _enc_varint((field << 3) | wire)


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _enc_varint(len(payload)) + payload


def _encode_feature(values: Sequence[Any]) -> bytes:
    values = list(values)
    if all(isinstance(v, (bytes, bytearray, str)) for v in values) and values:
        items = b"".join(_len_field(1, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in values)
        return _len_field(1, items)
    if all(isinstance(v, (int, bool)) for v in values):  # also the empty list -> empty int64_list
        packed = b"".join(_enc_varint(int(v)) for v in values)
        return _len_field(3, _len_field(1, packed) if values else b"")
    if all(isinstance(v, (int, float)) for v in values):
        packed = struct.pack(f"<{len(values)}f", *values)
        return _len_field(2, _len_field(1, packed))
    raise TypeError("a feature must be a list of bytes/str, of ints or of floats")


def encode_example(features: Mapping[str, Sequence[Any]]) -> bytes:
    """Serialize ``{name: list of bytes|str | ints | floats}`` as a ``tf.train.Example`` (str -> UTF-8
    bytes_list; ints -> packed int64_list; floats -> packed float_list; [] -> empty int64_list)."""
    entries = b""
    for name, values in features.items():
        entry = _len_field(1, name.encode("utf-8")) + _len_field(2, _encode_feature(values))
        entries += _len_field(1, entry)
    return _len_field(1, entries)
