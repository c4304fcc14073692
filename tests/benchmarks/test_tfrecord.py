"""TFRecord framing, CRC32C and the tf.train.Example codec, checked against known vectors and protobuf."""

from __future__ import annotations

import gzip
import struct

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pipeline.benchmarks.androidcontrol import tfrecord
from pipeline.benchmarks.androidcontrol.tfrecord import (
    ExampleDecodeError,
    TFRecordError,
    crc32c,
    crc32c_python,
    encode_example,
    frame_record,
    iter_records,
    masked_crc32c,
    parse_example,
    write_records,
)

RECORDS = [b"first record", b"", b"\x00\x01\x02" * 1000, "unicode é".encode()]


def test_crc32c_known_vectors():
    # RFC 3720 / iSCSI check value and the 32-zero-bytes vector
    assert crc32c_python(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c_python(bytes(32)) == 0x8A9136AA
    assert crc32c_python(b"") == 0 == crc32c(b"")
    data = bytes(range(256)) * 3
    assert crc32c(data) == crc32c_python(data)


def test_masked_crc_definition():
    crc = crc32c_python(b"abc")
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"abc") == expected


def test_frame_layout():
    framed = frame_record(b"xyz")
    assert len(framed) == 8 + 4 + 3 + 4
    assert struct.unpack("<Q", framed[:8])[0] == 3
    assert struct.unpack("<I", framed[8:12])[0] == masked_crc32c(framed[:8])
    assert framed[12:15] == b"xyz"
    assert struct.unpack("<I", framed[15:])[0] == masked_crc32c(b"xyz")


@pytest.mark.parametrize("compression", ["gzip", None])
def test_round_trip(tmp_path, compression):
    path = tmp_path / "shard"
    assert write_records(path, RECORDS, compression=compression) == len(RECORDS)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (compression == "gzip")
    assert list(iter_records(path)) == RECORDS  # auto-detects the compression
    assert list(iter_records(path, compression=compression)) == RECORDS


def test_pure_python_crc_fallback(tmp_path, monkeypatch):
    path = tmp_path / "shard.tfrecord"
    write_records(path, RECORDS, compression=None)
    monkeypatch.setattr(tfrecord, "_gcrc", None)
    assert list(iter_records(path)) == RECORDS


def test_corrupt_data_crc_names_file_and_offset(tmp_path):
    raw = b"".join(frame_record(r) for r in RECORDS)
    offset = 16 + len(RECORDS[0]) + 16 + len(RECORDS[1])  # the third record
    bad = bytearray(raw)
    bad[offset + 12 + 5] ^= 0x01  # a payload byte of record 2
    plain = tmp_path / "plain.tfrecord"
    plain.write_bytes(bytes(bad))
    gz = tmp_path / "zipped.tfrecord.gz"
    gz.write_bytes(gzip.compress(bytes(bad)))
    for path in (plain, gz):
        it = iter_records(path)
        assert next(it) == RECORDS[0] and next(it) == RECORDS[1]
        with pytest.raises(TFRecordError) as err:
            next(it)
        msg = str(err.value)
        assert str(path) in msg and f"byte offset {offset}" in msg and "record 2" in msg
        assert "data checksum mismatch" in msg
    # without verification the damaged payload comes through
    assert list(iter_records(plain, verify=False))[2] != RECORDS[2]


def test_corrupt_length_and_truncation(tmp_path):
    raw = b"".join(frame_record(r) for r in RECORDS)
    bad = bytearray(raw)
    bad[0] ^= 0x04  # length of record 0
    path = tmp_path / "len.tfrecord"
    path.write_bytes(bytes(bad))
    with pytest.raises(TFRecordError, match=r"record 0 at byte offset 0: length checksum mismatch"):
        list(iter_records(path))
    path.write_bytes(raw[:-3])
    with pytest.raises(TFRecordError, match="truncated data checksum"):
        list(iter_records(path))
    path.write_bytes(raw + b"\x01\x02")
    with pytest.raises(TFRecordError, match="truncated header"):
        list(iter_records(path))
    zipped = gzip.compress(raw)
    path.write_bytes(zipped[: len(zipped) // 2])
    with pytest.raises(TFRecordError, match=str(path)):
        list(iter_records(path))


# ---------------------------------------------------------------------------------------------------
# tf.train.Example
# ---------------------------------------------------------------------------------------------------

def _example_class(packed: bool):
    """tf.train.Example built at runtime from a descriptor (proto3 packed, or proto2 unpacked)."""
    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.name = f"example_{'packed' if packed else 'unpacked'}.proto"
    fdp.package = "tensorflow" if packed else "tfunpacked"
    fdp.syntax = "proto3" if packed else "proto2"
    F = descriptor_pb2.FieldDescriptorProto
    pkg = "." + fdp.package

    def message(name, fields):
        m = fdp.message_type.add()
        m.name = name
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add()
            f.name, f.number, f.type, f.label = fname, number, ftype, label
            if type_name:
                f.type_name = type_name
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None)])
    feat = message("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, opt, pkg + ".BytesList"),
                               ("float_list", 2, F.TYPE_MESSAGE, opt, pkg + ".FloatList"),
                               ("int64_list", 3, F.TYPE_MESSAGE, opt, pkg + ".Int64List")])
    feat.oneof_decl.add().name = "kind"
    for f in feat.field:
        f.oneof_index = 0
    features = message("Features", [("feature", 1, F.TYPE_MESSAGE, rep, pkg + ".Features.FeatureEntry")])
    entry = features.nested_type.add()
    entry.name = "FeatureEntry"
    entry.options.map_entry = True
    k = entry.field.add()
    k.name, k.number, k.type, k.label = "key", 1, F.TYPE_STRING, opt
    v = entry.field.add()
    v.name, v.number, v.type, v.label, v.type_name = "value", 2, F.TYPE_MESSAGE, opt, pkg + ".Feature"
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, pkg + ".Features")])
    for m in fdp.message_type:
        if m.name in ("FloatList", "Int64List"):
            m.field[0].options.packed = packed
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{fdp.package}.Example"))


FEATURES = {
    "episode_id": [123456789012],
    "negative": [-1, -(2 ** 63), 2 ** 63 - 1],
    "goal": [b"Open the app"],
    "screenshots": [b"\x89PNG fake", b"", b"\xff" * 300],
    "scores": [0.5, -2.25, 1e3],
}


def _fill(msg, features):
    for name, values in features.items():
        feat = msg.features.feature[name]
        if isinstance(values[0], bytes):
            feat.bytes_list.value.extend(values)
        elif isinstance(values[0], float):
            feat.float_list.value.extend(values)
        else:
            feat.int64_list.value.extend(values)


@pytest.mark.parametrize("packed", [True, False])
def test_decoder_matches_protobuf(packed):
    cls = _example_class(packed)
    msg = cls()
    _fill(msg, FEATURES)
    decoded = parse_example(msg.SerializeToString())
    assert decoded == FEATURES


def test_encoder_is_read_by_protobuf():
    cls = _example_class(True)
    data = encode_example({**FEATURES, "empty": [], "text": ["héllo", "x"]})
    msg = cls.FromString(data)
    assert list(msg.features.feature["episode_id"].int64_list.value) == FEATURES["episode_id"]
    assert list(msg.features.feature["negative"].int64_list.value) == FEATURES["negative"]
    assert list(msg.features.feature["screenshots"].bytes_list.value) == FEATURES["screenshots"]
    assert list(msg.features.feature["scores"].float_list.value) == FEATURES["scores"]
    assert list(msg.features.feature["text"].bytes_list.value) == ["héllo".encode(), b"x"]
    assert parse_example(data)["empty"] == []


def test_parse_selected_keys_only():
    data = encode_example(FEATURES)
    assert parse_example(data, keys={"episode_id"}) == {"episode_id": [123456789012]}


def test_malformed_example_raises():
    data = encode_example(FEATURES)
    with pytest.raises(ExampleDecodeError):
        parse_example(data[:-7])
    with pytest.raises(ExampleDecodeError):
        parse_example(b"\x0b\x01")  # wire type 3 (groups) is not supported
