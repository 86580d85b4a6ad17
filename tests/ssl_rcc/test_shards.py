"""TFRecord shards (the tf extra): pack, read back, stream resumably, pretrain from them, bad input.
Skipped where TensorFlow is not installed."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from ssl_rcc.__main__ import main
from ssl_rcc.data import PreprocessConfig, build_cache
from ssl_rcc.data.shards import ShardIndex, ShardStream, _tensorflow, decode_example, pack
from ssl_rcc.phantoms import generate_phantoms

pytestmark = pytest.mark.slow  # whole runs: make test-fast leaves them out

if importlib.util.find_spec("tensorflow") is None:  # not importorskip: it would load TensorFlow before Triton
    pytest.skip("TensorFlow (the tf extra) is not installed", allow_module_level=True)
tf = _tensorflow()  # the product's import: Triton first (their LLVMs clash), GPUs hidden


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    generate_phantoms(root / "archive", n=6, seed=0, unlabeled=True, size=48, workers=1)
    return root / "archive"


@pytest.fixture(scope="module")
def packed(archive, tmp_path_factory):
    return pack(archive, tmp_path_factory.mktemp("packed") / "shards", spacing=3.0, shards=3, workers=1, progress=False)


def test_pack_writes_every_image_once_as_tensorflow_reads_it(archive, packed, tmp_path):
    index = json.loads((packed / "index.json").read_text())
    assert index["format"] == "ssl-rcc-shards/1" and index["n_images"] == 6 and len(index["shards"]) == 3
    assert [s["records"] for s in index["shards"]] == [2, 2, 2]
    cache = build_cache(archive, tmp_path / "cache", config=PreprocessConfig(spacing_mm=(3.0,) * 3), progress=False)
    expected = {row["key"]: i for i, row in cache.manifest.iterrows()}
    seen = []
    for shard in sorted(packed.glob("shard-*.tfrecord")):
        for record in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator():  # TensorFlow checks the CRCs
            case_id, image, mask = decode_example(tf, record)
            data, cached_mask = cache.load(expected[case_id])
            np.testing.assert_array_equal(image, data)
            assert (mask is None) == (cached_mask is None)
            if mask is not None:
                np.testing.assert_array_equal(mask, cached_mask)
            seen.append(case_id)
    assert sorted(seen) == sorted(expected)


def batches(stream, workers, n):
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers)
    return [b for _, b in zip(range(n), loader)]


@pytest.mark.parametrize("workers, world", [(0, 1), (0, 2), (2, 2)])  # 3 shards: one lane, or records striped
def test_a_stream_resumed_at_any_batch_gives_the_uninterrupted_batches(packed, workers, world):
    def stream(start=0, rank=0):
        return ShardStream(ShardIndex(packed), (16, 16, 16), batch_size=3, total_batches=9, start_batch=start,
                           rank=rank, world=world, seed=4, buffer=3, turnover=2, device_views=True)

    full = batches(stream(), workers, 9)
    assert len(full) == 9 and full[0][0].shape == (3, 4, 16, 16, 16)
    for start in (1, 4, 7):
        resumed = batches(stream(start), workers, 9 - start)
        for a, b in zip(full[start:], resumed):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    if world > 1:
        other_rank = batches(stream(rank=1), workers, 2)
        assert not torch.equal(other_rank[0][0], full[0][0])


@pytest.mark.parametrize("lanes", [1, 2, 3, 4])
def test_every_image_is_read_once_per_cycle_over_all_lanes(packed, lanes):
    stream = ShardStream(ShardIndex(packed), (16, 16, 16), batch_size=1, total_batches=1)
    seen = []
    for lane in range(lanes):
        walk = stream._walk(lane, lanes, 0)
        seen += [hash(next(walk)[0].tobytes()) for _ in range(len(range(lane, 6, lanes)))]  # its share of 6
    assert len(seen) == 6 and len(set(seen)) == 6


def test_pretrain_streams_from_shards(packed, tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(packed), "--method", "simclr", "--out", str(run), "--max-steps", "2",
                 "--patch", "24", "--batch-size", "2", "--workers", "2", "--augment", "device"]) == 0
    options = json.loads((run / "run.json").read_text())
    assert options["source"] == "shards" and options["spacing_mm"] == 3.0 and options["channels"] == 4
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["step"].tolist() == [1, 2] and np.isfinite(rows["train_loss"]).all()
    assert not (run / "cache").exists()  # nothing decoded again


def test_a_killed_shard_run_resumes_as_the_uninterrupted_one(packed, tmp_path):
    args = [sys.executable, "-m", "ssl_rcc", "pretrain", "--data", str(packed), "--method", "mae", "--max-steps", "30",
            "--patch", "32", "--vit-patch", "8", "--batch-size", "2", "--workers", "2", "--checkpoint-every", "2",
            "--augment", "device", "--seed", "3"]
    assert subprocess.run(args + ["--out", str(tmp_path / "reference")], capture_output=True).returncode == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.csv").is_file() and len(pd.read_csv(run / "metrics.csv")) >= 5:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(pd.read_csv(run / "metrics.csv")) < 30
    assert subprocess.run(args + ["--out", str(run), "--resume"], capture_output=True).returncode == 0
    resumed, expected = pd.read_csv(run / "metrics.csv"), pd.read_csv(tmp_path / "reference" / "metrics.csv")
    assert resumed["step"].tolist() == list(range(1, 31))
    np.testing.assert_allclose(resumed["train_loss"], expected["train_loss"], rtol=1e-4, atol=1e-6)


def test_no_patient_identifier_in_shards(tmp_path, abdomen_dir):
    import pydicom

    series = tmp_path / "archive" / "Doe^Jane_MRN12345"  # an identifying folder name
    series.mkdir(parents=True)
    for f in sorted((abdomen_dir / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN12345", "19600101"
        ds.save_as(series / f.name)
    out = pack(tmp_path / "archive", tmp_path / "shards", spacing=4.0, workers=1, progress=False)
    assert json.loads((out / "index.json").read_text())["n_images"] == 1
    for path in out.iterdir():
        blob = path.read_bytes()
        assert b"Doe" not in blob and b"MRN12345" not in blob and b"19600101" not in blob, path.name


def test_bad_shard_input(archive, packed, tmp_path, capsys, abdomen_dir):
    assert main(["pack", "--data", str(archive), "--out", str(packed), "--spacing", "3"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    shutil.copytree(archive / "case_0000", mixed / "case_0000")  # 4-channel phantom CT
    shutil.copy(abdomen_dir / "example_ct_sm.nii.gz", mixed / "abdomen.nii.gz")  # 1-channel CT
    assert main(["pack", "--data", str(mixed), "--out", str(tmp_path / "m"), "--spacing", "4", "--shards", "x"]) == 2
    assert "shards: 'x' is not a number" in capsys.readouterr().err
    assert main(["pack", "--data", str(mixed), "--out", str(tmp_path / "m"), "--spacing", "4"]) == 2
    assert "different numbers of channels [1, 4]" in capsys.readouterr().err and not (tmp_path / "m").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text((packed / "index.json").read_text())
    assert main(["pretrain", "--data", str(broken), "--method", "simclr", "--out", str(tmp_path / "r"), "--max-steps", "1"]) == 2
    assert "is missing" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(packed), "--method", "simclr", "--out", str(tmp_path / "r2"), "--max-steps", "1",
                 "--patch", "200"]) == 2
    assert "larger than every preprocessed volume" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(packed, corrupt)
    shard = sorted(corrupt.glob("shard-*"))[0]
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    for f in sorted(corrupt.glob("shard-*"))[1:]:
        f.write_bytes(shard.read_bytes())  # every lane meets the bad record
    assert main(["pretrain", "--data", str(corrupt), "--method", "simclr", "--out", str(tmp_path / "r3"), "--max-steps", "4",
                 "--patch", "16", "--batch-size", "2", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "unreadable record (DataLossError" in err and "Traceback" not in err
    index = json.loads((packed / "index.json").read_text())
    del index["channels"]
    (broken / "index.json").write_text(json.dumps(index))
    assert main(["pretrain", "--data", str(broken), "--method", "simclr", "--out", str(tmp_path / "r4"), "--max-steps", "1"]) == 2
    assert "index.json lacks or garbles an entry (KeyError: 'channels')" in capsys.readouterr().err


def test_pack_without_tensorflow_is_one_clear_error(archive, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tf(name, *args, **kwargs):
        if name == "tensorflow":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tf)
    assert main(["pack", "--data", str(archive), "--out", str(tmp_path / "s")]) == 2
    assert "install the tf extra" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
