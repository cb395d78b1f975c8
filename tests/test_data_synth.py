"""Memory-mapped IDX files and ``digitlab data synth``: values, hostile files, determinism,
resumption after an interruption, the registered dataset, and training on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from digitlab.cli import main
from digitlab.data import registry
from digitlab.data.idx import read_idx, write_idx
from digitlab.data.registry import load, synth
from digitlab.data.synth import PROGRESS, RECORD, Deformation, deform, synthesize
from digitlab.errors import ConfigError, DataError, DatasetNotFoundError, OutputError

TRAIN_X, TRAIN_Y = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
SRC = Path(__file__).resolve().parents[1] / "src"


# ------------------------------------------------------------------------------ memmap reader
def test_memmap_values_equal_the_gzip_reader(tmp_path):
    x = load("mnist-5k").x_train[:50]
    write_idx(tmp_path / "a.gz", x)
    write_idx(tmp_path / "a", x)
    mapped = read_idx(tmp_path / "a", mmap=True)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, read_idx(tmp_path / "a.gz", mmap=True))
    np.testing.assert_array_equal(mapped, x)
    assert not isinstance(read_idx(tmp_path / "a"), np.memmap)  # mapping is asked for


def test_memmap_ignores_the_memory_cap_but_reading_does_not(tmp_path):
    write_idx(tmp_path / "a", np.ones((10, 4, 4), np.uint8))
    write_idx(tmp_path / "a.gz", np.ones((10, 4, 4), np.uint8))
    assert read_idx(tmp_path / "a", max_bytes=16, mmap=True).sum() == 160
    for path in ("a", "a.gz"):  # a read (and a gzip file, never mapped) is capped
        with pytest.raises(DataError, match="limit"):
            read_idx(tmp_path / path, max_bytes=16, mmap=path == "a.gz")


def test_memmap_wider_elements_are_read_as_before(tmp_path):
    a = np.arange(12, dtype=np.int16).reshape(3, 4) - 5
    write_idx(tmp_path / "w", a)
    back = read_idx(tmp_path / "w", mmap=True)
    assert not isinstance(back, np.memmap) and back.dtype == np.int16
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda b: b[:-1], "truncated.*needs 48 data bytes, file has 47"),
        (lambda b: b + b"\0", "trailing bytes"),
        (lambda b: b[:4] + (10**9).to_bytes(4, "big") + b[8:], "truncated"),  # 4 GB declared
        (lambda b: b[:12], "truncated"),
        (lambda b: b[:6], "truncated IDX header"),
    ],
)
def test_memmap_refuses_a_size_that_does_not_match_the_file(tmp_path, edit, words):
    path = write_idx(tmp_path / "a", np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(DataError, match=words):
        read_idx(path, mmap=True)


def test_memmap_of_zero_images_and_registry_maps_raw_images(tmp_path, monkeypatch):
    empty = read_idx(write_idx(tmp_path / "e", np.zeros((0, 3, 3), np.uint8)), mmap=True)
    assert empty.shape == (0, 3, 3) and not empty.flags.writeable
    folder = tmp_path / "mnist"
    folder.mkdir()
    x = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    y = np.arange(5, dtype=np.uint8)
    for name, a in zip(registry.MNIST_FILES, (x, y, x[:2], y[:2]), strict=True):
        write_idx(folder / name.removesuffix(".gz"), a)
    monkeypatch.setattr(registry, "SYSTEM_DIRS", ())
    ds = load("mnist", root=tmp_path)
    assert isinstance(ds.x_train, np.memmap) and isinstance(ds.x_test, np.memmap)
    np.testing.assert_array_equal(ds.x_train, x)


# ------------------------------------------------------------------------------ synth
@pytest.fixture(scope="module")
def source():
    """300 real digits (the embedded sample) and 40 test digits, as an 'mnist' folder."""
    ds = load("mnist-5k")
    y, yt = ds.y_train[:300].astype(np.uint8), ds.y_test[:40].astype(np.uint8)
    return ds.x_train[:300], y, ds.x_test[:40], yt


@pytest.fixture
def mnist_folder(tmp_path, source, monkeypatch):
    """$DIGITLAB_DATA holding mnist/ (gzip test files, as published) and nothing else."""
    x, y, xt, yt = source
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name, a in zip(registry.MNIST_FILES, (x, y, xt, yt), strict=True):
        write_idx(folder / name, a)
    monkeypatch.setenv("DIGITLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(registry, "SYSTEM_DIRS", ())
    return folder


def _make(folder, source, n, seed=0, batch=100, **kw):
    x, y, *_ = source
    tests = _test_files(folder.parent / "testsrc", source)
    return synthesize(folder, x, y, tests, n, seed, batch=batch, **kw)


def _test_files(folder, source):
    folder.mkdir(parents=True, exist_ok=True)
    _, _, xt, yt = source
    return (write_idx(folder / "t10k-images-idx3-ubyte.gz", xt),
            write_idx(folder / "t10k-labels-idx1-ubyte.gz", yt))  # fmt: skip


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_synth_rows_labels_and_untouched_test_files(tmp_path, source):
    x, y, *_ = source
    result = _make(tmp_path / "out", source, n=950, seed=1)
    assert (result.n, result.written, result.resumed_from) == (950, 950, 0)
    out = tmp_path / "out"
    images, labels = read_idx(out / TRAIN_X, mmap=True), read_idx(out / TRAIN_Y)
    assert images.shape == (950, 28, 28) and labels.shape == (950,)  # the header's count
    src = np.arange(950) % 300
    np.testing.assert_array_equal(labels, y[src])
    np.testing.assert_array_equal(images[:300], x)  # the source digits first, unchanged
    assert not (images[300:] == x[src[300:]]).all(axis=(1, 2)).any()  # every copy deformed

    def unit(a):  # rows centred and scaled to length 1: a @ b.T is the correlation
        a = a.reshape(len(a), -1).astype(np.float64)
        a -= a.mean(1, keepdims=True)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    corr = unit(images[300:]) @ unit(x).T  # (650 copies, 300 source digits)
    own = corr[np.arange(650), src[300:]]
    rank = (corr > own[:, None]).sum(1)  # source digits more like the copy than its own
    assert np.median(rank) < 20 and own.mean() > corr.mean() + 0.15  # a wrong row: ~150
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (out / name).read_bytes() == (tmp_path / "testsrc" / name).read_bytes()
    assert not list(out.glob("*.part")) and json.loads((out / RECORD).read_text())["n"] == 950


def test_synth_is_deterministic_and_smaller_n_is_a_prefix(tmp_path, source):
    _make(tmp_path / "a", source, n=750, seed=4)
    _make(tmp_path / "b", source, n=750, seed=4)
    _make(tmp_path / "c", source, n=530, seed=4)
    _make(tmp_path / "d", source, n=750, seed=5)
    a, b = _bytes(tmp_path / "a"), _bytes(tmp_path / "b")
    assert a == b
    big, small = read_idx(tmp_path / "a" / TRAIN_X), read_idx(tmp_path / "c" / TRAIN_X)
    np.testing.assert_array_equal(big[:530], small)  # the short last batch too
    other = read_idx(tmp_path / "d" / TRAIN_X)
    np.testing.assert_array_equal(other[:300], big[:300])
    assert not np.array_equal(other[300:], big[300:])


def test_synth_resumes_after_an_interruption_byte_for_byte(tmp_path, source):
    whole = tmp_path / "whole"
    _make(whole, source, n=780, seed=2)
    part = tmp_path / "part"
    calls = []

    def stop_after_five(done, n):  # called at the start, then after every batch
        calls.append(done)
        if done >= 500:  # two batches of deformed copies written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _make(part, source, n=780, seed=2, progress=stop_after_five)
    assert calls == [0, 100, 200, 300, 400, 500]
    names = sorted(p.name for p in part.iterdir())
    assert names == [PROGRESS, TRAIN_X + ".part", TRAIN_Y + ".part"]
    assert json.loads((part / PROGRESS).read_text())["done"] == 500
    # a batch written after the last record (killed before recording it) is dropped
    with open(part / (TRAIN_X + ".part"), "ab") as f:
        f.write(b"\x07" * 28 * 28 * 37)
    with pytest.raises(DataError, match=r"unfinished set made with seed 2"):
        _make(part, source, n=780, seed=3)
    with pytest.raises(DataError, match=r"unfinished set made with n 780"):
        _make(part, source, n=700, seed=2)
    result = _make(part, source, n=780, seed=2)
    assert (result.resumed_from, result.written) == (500, 280)
    assert _bytes(part) == _bytes(whole)
    again = _make(part, source, n=780, seed=2)
    assert again.already_complete and _bytes(part) == _bytes(whole)
    with pytest.raises(DataError, match="already holds a finished set made with seed 2"):
        _make(part, source, n=780, seed=9)


@pytest.fixture
def small_disk(monkeypatch):
    """The disk reports 1 GiB free, whatever its real size (a 3.4 TB request must fail)."""
    import shutil

    from digitlab.data import synth as synth_module

    real = shutil.disk_usage

    def usage(path):
        return real(path)._replace(free=min(real(path).free, 2**30))

    monkeypatch.setattr(synth_module.shutil, "disk_usage", usage)


def test_synth_refuses_hostile_arguments_and_writes_nothing(tmp_path, source, small_disk):
    x, y, *_ = source
    tests = _test_files(tmp_path / "t", source)
    for n in (0, -5, 2**32, 1.5, True):
        with pytest.raises(ConfigError, match="n"):
            synthesize(tmp_path / "o", x, y, tests, n)
    with pytest.raises(ConfigError, match="seed"):
        synthesize(tmp_path / "o", x, y, tests, 10, seed=-1)
    with pytest.raises(ConfigError, match="max_scale"):
        Deformation(max_scale=1.0)
    with pytest.raises(ConfigError, match="elastic_alpha"):
        Deformation(elastic_alpha=float("nan"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        synthesize(tmp_path / "file", x, y, tests, 10)
    with pytest.raises(OutputError, match=r"needs 3140.0 GiB more, only 1.0 GiB free"):  # 3.4 TB
        synthesize(tmp_path / "o", x, y, tests, 2**32 - 1)
    assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match="not made by digitlab data synth"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / TRAIN_X).write_bytes(b"precious")
        synthesize(tmp_path / "mine", x, y, tests, 10)
    assert (tmp_path / "mine" / TRAIN_X).read_bytes() == b"precious"
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / (TRAIN_X + ".part")).symlink_to(tmp_path / "victim")
    (tmp_path / "victim").write_bytes(b"keep")
    with pytest.raises(OutputError, match="symbolic link"):
        synthesize(tmp_path / "link", x, y, tests, 10)
    assert (tmp_path / "victim").read_bytes() == b"keep"


def test_two_synths_cannot_write_one_folder(tmp_path, source):
    import fcntl

    folder = tmp_path / "busy"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running synth holds it
        with pytest.raises(OutputError, match="another digitlab data synth"):
            _make(folder, source, n=150)
        assert list(folder.iterdir()) == []
    finally:
        os.close(fd)
    assert _make(folder, source, n=150).written == 150


def test_deform_draws_from_the_generator_only():
    x = load("mnist-5k").x_train[:5]
    a = deform(x, np.random.default_rng(0))
    np.testing.assert_array_equal(a, deform(x, np.random.default_rng(0)))
    assert a.dtype == np.uint8 and a.shape == x.shape
    still = Deformation(elastic_alpha=0, max_scale=0, max_rotation=0, max_shift=0)
    np.testing.assert_array_equal(deform(x, np.random.default_rng(1), still), x)


# ------------------------------------------------------------------------------ registry, CLI
def test_registered_dataset_is_found_after_synth_and_named_when_absent(
    tmp_path, source, mnist_folder
):
    with pytest.raises(DatasetNotFoundError, match="digitlab data synth mnist-8m"):
        load("mnist-8m")
    with pytest.raises(ConfigError, match="not a synthesised dataset"):
        synth("mnist")
    result = synth("mnist-8m", n=450, seed=0)
    assert result.folder == tmp_path / "data" / "mnist-8m"  # beside its source
    ds = load("mnist-8m")
    assert isinstance(ds.x_train, np.memmap) and len(ds.y_train) == 450
    x, y, xt, yt = source
    np.testing.assert_array_equal(ds.x_test, xt)
    np.testing.assert_array_equal(ds.y_test, yt)
    np.testing.assert_array_equal(ds.y_train, y[np.arange(450) % 300])


def test_cli_synth_then_train(tmp_path, mnist_folder, capsys):
    root = tmp_path / "big"
    assert main(["data", "synth", "mnist-8m", "--root", str(root), "--n", "700",
                 "--seed", "3"]) == 0  # fmt: skip
    assert "700 training images (seed 3)" in capsys.readouterr().out
    assert main(["data", "synth", "mnist-8m", "--root", str(root), "--n", "700",
                 "--seed", "3"]) == 0  # fmt: skip
    assert "already complete" in capsys.readouterr().out
    code = main(["train", "--dataset", "mnist-8m", "--data-root", str(root), "--model",
                 "softmax", "--batch", "100", "--epochs", "1", "--out", str(tmp_path / "runs"),
                 "--quiet"])  # fmt: skip
    assert code == 0
    run = next((tmp_path / "runs" / "softmax").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["n_test"]) == ("mnist-8m", 40)
    assert metrics["n_train"] + metrics["n_val"] == 700  # (the default 10% hold-out)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--n", "0"], "--n: expected a whole number >= 1"),
        (["--n", "-3"], "--n: expected a whole number >= 1"),
        (["--n", "lots"], "--n: expected a whole number >= 1"),
        (["--seed", "-1"], "--seed: expected a whole number >= 0"),
        (["--n", str(2**32)], "more rows than an IDX file holds"),
        (["--n", str(2**32 - 1)], "only .* free"),
    ],
)
def test_cli_synth_hostile_options_one_line_exit_2(
    tmp_path, mnist_folder, small_disk, capsys, args, words
):
    root = tmp_path / "r"
    assert main(["data", "synth", "mnist-8m", "--root", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("digitlab: error:")
    assert __import__("re").search(words, err), err
    assert not root.exists()


def test_cli_synth_other_misuse(tmp_path, mnist_folder, capsys):
    (tmp_path / "afile").write_text("x")
    for args, words in (
        (["data", "synth", "mnist"], "not a synthesised dataset"),
        (["data", "synth"], "needs a dataset name"),
        (["data", "list", "--n", "5"], "apply to data synth only"),
        (["data", "synth", "mnist-8m", "--root", str(tmp_path / "afile")], "afile"),
        (["train", "--dataset", "mnist-8m", "--data-root", str(tmp_path / "none")],
         "run `digitlab data synth mnist-8m`"),
    ):  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_sigterm_mid_synth_then_rerun_equals_an_uninterrupted_run(tmp_path, source, mnist_folder):
    """The real command, stopped by SIGTERM after the first of its two batches of 10,000 rows
    (SIGTERM lands during the second), continues where it stopped."""
    root = tmp_path / "r"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-m", "digitlab.cli", "data", "synth", "mnist-8m", "--root",
           str(root), "--n", "20000", "--seed", "7"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = root / "mnist-8m" / PROGRESS
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text() or "{}").get("done", 0) >= 10000:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"rerun the same command to continue" in err
    assert not (root / "mnist-8m" / TRAIN_X).exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "continuing at row" in done.stdout, done.stderr
    x, y, *_ = source
    whole = synthesize(tmp_path / "whole", x, y, [mnist_folder / n for n in
                       registry.MNIST_FILES[2:]], 20000, 7, name="mnist-8m")  # fmt: skip
    assert _bytes(root / "mnist-8m") == _bytes(whole.folder)


@pytest.mark.parametrize("stop_at", [1, 2, 3, 4, 5])
def test_synth_finishes_after_a_stop_at_any_rename_of_its_last_steps(
    tmp_path, source, monkeypatch, stop_at
):
    """Killed between its final renames (test copies, record, the two training files), a
    rerun finishes the set as an uninterrupted run makes it (it refused to continue)."""
    from digitlab.data import synth as synth_module

    whole = tmp_path / "whole"
    _make(whole, source, n=450, seed=2)
    real, calls = os.replace, []

    def replace(src, dst):
        if Path(dst).name != PROGRESS:  # the last steps: test copies, record, training files
            calls.append(Path(dst).name)
            if len(calls) == stop_at:
                raise KeyboardInterrupt
        return real(src, dst)

    part = tmp_path / "part"
    monkeypatch.setattr(synth_module.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _make(part, source, n=450, seed=2)
    monkeypatch.setattr(synth_module.os, "replace", real)
    _make(part, source, n=450, seed=2)
    assert _bytes(part) == _bytes(whole)


def test_synth_never_writes_through_planted_part_or_temporary_links(tmp_path, source):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for name in ("t10k-labels-idx1-ubyte.gz.part", "t10k-images-idx3-ubyte.gz.part",
                 f".{RECORD}.tmp", f".{PROGRESS}.tmp"):  # fmt: skip
        (out / name).symlink_to(victim)
    _make(out, source, n=350, seed=1)
    assert victim.read_bytes() == b"precious"
    for name in ("t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        assert not (out / name).is_symlink()
        assert (out / name).read_bytes() == (tmp_path / "testsrc" / name).read_bytes()
    with pytest.raises((OutputError, DataError)):  # a link swapped in mid-run: refused
        _make(tmp_path / "x", source, n=350, seed=1, progress=_plant(tmp_path / "x", victim))
    assert victim.read_bytes() == b"precious"


def _plant(folder, victim):
    """A progress callback that swaps the images' .part file for a link (a race)."""

    def progress(done, n):
        part = folder / (TRAIN_X + ".part")
        if done == 100 and part.exists() and not part.is_symlink():
            part.unlink()
            part.symlink_to(victim)

    return progress


def test_a_deeply_nested_synth_record_is_one_line(tmp_path, source):
    out = tmp_path / "out"
    out.mkdir()
    (out / PROGRESS).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="unreadable synth record"):
        _make(out, source, n=350, seed=1)
