"""IDX reading and writing: round trips, on-disk layout, and every malformed-file case."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from digitlab.data.idx import read_idx, write_idx
from digitlab.errors import DataError, DatasetNotFoundError

DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.int16,
    0x0C: np.int32,
    0x0D: np.float32,
    0x0E: np.float64,
}


def _raw_idx(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    code=st.sampled_from(sorted(DTYPES)),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    compress=st.booleans(),
)
def test_round_trip_every_dtype(tmp_path_factory, data, code, shape, compress):
    dtype = np.dtype(DTYPES[code])
    arr = data.draw(
        hnp.arrays(dtype, shape, elements={"allow_nan": False} if dtype.kind == "f" else None)
    )
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == dtype and back.dtype.isnative
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    head = path.read_bytes()[:4]
    if compress:
        assert head[:2] == b"\x1f\x8b"
    else:
        assert head == bytes([0, 0, code, len(shape)])


def test_on_disk_layout_is_big_endian(tmp_path):
    path = write_idx(tmp_path / "x.idx", np.array([1, 258, -2], dtype=np.int16))
    assert path.read_bytes() == bytes.fromhex("00000b010000000300010102fffe")


def test_reads_hand_made_file_and_returns_native_writable_array(tmp_path):
    values = [1.5, -2.25, 3.0, 1e30]
    path = tmp_path / "f.idx"
    path.write_bytes(_raw_idx(0x0E, (2, 2), struct.pack(">4d", *values)))
    arr = read_idx(path)
    assert arr.dtype == np.float64 and arr.dtype.isnative and arr.flags.writeable
    np.testing.assert_array_equal(arr, np.array(values).reshape(2, 2))


def test_big_endian_input_array_is_written_correctly(tmp_path):
    arr = np.array([[1, 2], [3, 70000]], dtype=">i4")
    back = read_idx(write_idx(tmp_path / "b.idx", arr))
    np.testing.assert_array_equal(back, [[1, 2], [3, 70000]])


def test_compression_detected_by_magic_not_extension(tmp_path):
    payload = _raw_idx(0x08, (3,), bytes([7, 8, 9]))
    gz_named_plain = tmp_path / "images.idx"  # gzip bytes, no .gz suffix
    gz_named_plain.write_bytes(gzip.compress(payload))
    plain_named_gz = tmp_path / "images.gz"  # raw bytes, .gz suffix
    plain_named_gz.write_bytes(payload)
    np.testing.assert_array_equal(read_idx(gz_named_plain), [7, 8, 9])
    np.testing.assert_array_equal(read_idx(plain_named_gz), [7, 8, 9])


def test_write_gzip_only_for_gz_suffix(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert write_idx(tmp_path / "a.gz", arr).read_bytes()[:2] == b"\x1f\x8b"
    assert write_idx(tmp_path / "a.idx", arr).read_bytes()[:4] == bytes([0, 0, 8, 2])


def test_mnist_style_images(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    back = read_idx(write_idx(tmp_path / "train-images-idx3-ubyte.gz", images))
    assert back.shape == (5, 28, 28)
    np.testing.assert_array_equal(back, images)


MALFORMED = {
    "bad_magic": (_raw_idx(0x08, (2,), b"\x01\x02").replace(b"\x00", b"\x01", 1), "magic"),
    "second_magic_byte": (b"\x00\x07" + _raw_idx(0x08, (2,), b"\x01\x02")[2:], "magic"),
    "unknown_dtype": (_raw_idx(0x0A, (2,), b"\x01\x02"), "0x0A"),
    "rank_zero": (bytes([0, 0, 8, 0]), "rank"),
    "truncated_data": (_raw_idx(0x08, (2, 3), bytes(5)), "truncated"),
    "truncated_wide": (_raw_idx(0x0C, (2,), bytes(7)), "truncated"),
    "trailing_bytes": (_raw_idx(0x08, (2, 3), bytes(7)), "trailing"),
    "truncated_header": (bytes([0, 0, 8, 3]) + struct.pack(">I", 2), "header"),
    "too_short": (b"\x00\x00", "IDX"),
    "empty": (b"", "IDX"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_data_error_naming_file(tmp_path, case, compress):
    content, fragment = MALFORMED[case]
    path = tmp_path / f"broken-{case}.idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert path.name in message
    assert fragment in message
    assert "\n" not in message


def test_corrupt_gzip_stream_raises_data_error(tmp_path):
    payload = gzip.compress(_raw_idx(0x08, (100,), bytes(range(100))))
    cut = tmp_path / "cut.idx.gz"
    cut.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match="cut.idx.gz"):
        read_idx(cut)
    garbled = tmp_path / "garbled.idx.gz"
    garbled.write_bytes(payload[:10] + bytes(len(payload) - 10))
    with pytest.raises(DataError, match="garbled.idx.gz"):
        read_idx(garbled)


def test_absurd_header_in_small_gzip_is_rejected_before_allocating(tmp_path):
    path = tmp_path / "huge.idx.gz"
    path.write_bytes(gzip.compress(_raw_idx(0x0E, (2**31, 2**31, 2**31), b"")))
    with pytest.raises(DataError, match="huge.idx.gz.*truncated"):
        read_idx(path)


def test_missing_file_raises_not_found_naming_path(tmp_path):
    missing = tmp_path / "nope" / "t10k-images-idx3-ubyte.gz"
    with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        read_idx(missing)


@pytest.mark.parametrize(
    "arr", [np.zeros(3, np.int64), np.zeros(3, np.uint16), np.array(5, np.uint8)]
)
def test_write_rejects_unsupported(tmp_path, arr):
    with pytest.raises(DataError, match="bad.idx"):
        write_idx(tmp_path / "bad.idx", arr)


def test_accepts_str_path(tmp_path):
    path = str(tmp_path / "s.idx")
    write_idx(path, np.array([1, 2], np.int8))
    assert isinstance(read_idx(path), np.ndarray)
    assert Path(path).exists()
