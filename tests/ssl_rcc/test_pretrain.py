"""Self-supervised pretraining end to end on a small phantom archive: every method, resume after
SIGKILL with the same steps and losses, DDP with two CPU processes, exported encoder, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_rcc.__main__ import main
from ssl_rcc.embed import embed_volume, load_encoder
from ssl_rcc.models import Encoder
from ssl_rcc.phantoms import generate_phantoms

pytestmark = pytest.mark.slow  # whole runs: make test-fast leaves them out

SMALL = ["--batch-size", "2", "--spacing", "3", "--workers", "0", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    generate_phantoms(root / "archive", n=4, seed=0, unlabeled=True, size=48, workers=1)
    return root / "archive"


def metrics(run):
    return pd.read_csv(run / "metrics.csv")


@pytest.mark.parametrize("method, extra", [("simclr", ["--patch", "24"]), ("byol", ["--patch", "24"]), ("dino", ["--patch", "24"]),
                                           ("mae", ["--patch", "32", "--vit-patch", "8"]),
                                           ("byol", ["--patch", "24", "--augment", "device"]),
                                           ("mae", ["--patch", "32", "--vit-patch", "8", "--augment", "device"])])
def test_each_method_trains_and_exports_its_encoder(archive, tmp_path, method, extra):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(archive), "--method", method, "--out", str(run), "--max-steps", "2"] + SMALL + extra) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "tb").is_dir()
    rows = metrics(run)
    assert rows["step"].tolist() == [1, 2] and np.isfinite(rows["train_loss"]).all()
    # the representation's health is measured after the last step
    assert rows["rankme"].iloc[-1] >= 1 and rows["dead_fraction"].iloc[-1] >= 0 and rows["collapsed"].iloc[-1] in (0, 1)
    assert json.loads((run / "run.json").read_text())["augment"] == ("device" if "device" in extra else "loader")
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["axis_order"] == "RAS" and meta["spacing_mm"] == [3.0] * 3 and meta["method"] == method
    state = torch.load(run / "encoder.pt", weights_only=True)
    encoder = Encoder(meta["architecture"], meta["in_channels"], meta["patch"], meta["vit_patch"])
    encoder.load_state_dict(state, strict=True)
    with torch.no_grad():
        features = encoder(torch.rand(1, meta["in_channels"], *meta["patch"]))
    assert features.shape == (1, meta["out_dim"]) and torch.isfinite(features).all()


def run_cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "ssl_rcc"] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.mark.parametrize("method, steps, extra", [
    ("simclr", 6, ["--patch", "24"]),
    # views made on the device and MAE's masks follow the per-sample seeds too
    ("mae", 30, ["--patch", "32", "--vit-patch", "8", "--augment", "device"]),
])
def test_resume_after_sigkill_gives_the_uninterrupted_run(archive, tmp_path, method, steps, extra):
    args = ["pretrain", "--data", str(archive), "--method", method, "--max-steps", str(steps), "--seed", "3"] + SMALL + extra
    reference = tmp_path / "reference"
    proc = run_cli(args + ["--out", str(reference)])
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0
    # the log is the run's own: no hardware notices, tips, banners or Lightning's deprecations
    for noise in ("GPU available", "TPU available", "Tip:", "LeafSpec", "tensorflow", "oneDNN", "Epoch 0"):
        assert noise not in log, noise
    run = tmp_path / "killed"
    proc = run_cli(args + ["--out", str(run)])
    deadline = time.time() + 600
    while time.time() < deadline:  # kill once a checkpoint exists and training has gone past it
        if (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.csv").is_file() and len(metrics(run)) >= 3:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(metrics(run)) < steps
    assert run_cli(args + ["--out", str(run), "--resume"]).wait(timeout=600) == 0
    resumed, expected = metrics(run), metrics(reference)
    assert resumed["step"].tolist() == list(range(1, steps + 1))
    np.testing.assert_allclose(resumed["train_loss"], expected["train_loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(resumed["lr"], expected["lr"], rtol=1e-6)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(archive, tmp_path):
    """What SLURM and Kubernetes send before killing a job: the run stops at the end of the step with a
    checkpoint, an encoder and the command that continues it."""
    args = ["pretrain", "--data", str(archive), "--method", "simclr", "--max-steps", "200", "--patch", "24"] + SMALL
    run = tmp_path / "terminated"
    proc = run_cli(args + ["--out", str(run)])
    deadline = time.time() + 600
    while time.time() < deadline and not ((run / "metrics.csv").is_file() and len(metrics(run)) >= 2):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    err, _ = proc.communicate(timeout=300)  # stdout and stderr together
    assert proc.returncode == 128 + signal.SIGTERM
    options = json.loads((run / "run.json").read_text())
    assert options["stopped_by"] == "sigterm" and 2 <= options["steps_trained"] < 200
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "encoder.pt").is_file()
    assert "stopped by SIGTERM after" in err.decode() and f"--out {run} --resume" in err.decode()
    assert run_cli(["pretrain", "--data", str(archive), "--method", "simclr", "--out", str(run), "--resume",
                    "--max-steps", str(options["steps_trained"] + 1), "--workers", "0"]).wait(timeout=600) == 0
    assert metrics(run)["step"].tolist() == list(range(1, options["steps_trained"] + 2))


def test_ddp_with_two_cpu_processes(archive, tmp_path):
    run = tmp_path / "ddp"
    proc = run_cli(["pretrain", "--data", str(archive), "--method", "simclr", "--out", str(run), "--max-steps", "2",
                    "--patch", "24", "--devices", "2", "--accelerator", "cpu"] + SMALL)
    output = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, output[-2000:]
    assert json.loads((run / "run.json").read_text())["devices"] == 2
    assert metrics(run)["step"].tolist() == [1, 2] and (run / "encoder.pt").is_file()


def test_process_ranks_from_the_launcher_or_slurm(monkeypatch):
    from ssl_rcc.pretrain import _process_ranks, _secondary_rank

    for name in ("LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID"):
        monkeypatch.delenv(name, raising=False)
    assert _process_ranks() == (0, 0) and not _secondary_rank()
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "3")
    monkeypatch.setenv("SLURM_NODEID", "1")
    assert _process_ranks() == (3, 1) and _secondary_rank()
    monkeypatch.setenv("LOCAL_RANK", "0")  # Lightning's own launcher wins where it has set its variables
    assert _process_ranks() == (0, 0)


def test_embeddings_of_real_scans_are_finite(tmp_path, abdomen_dir):
    """Pretrain one step on the real single-channel scans, then embed the CT, the MR and the DICOM series."""
    import shutil

    abdomen = abdomen_dir
    real = tmp_path / "real"
    real.mkdir()
    for name in ("example_ct_sm.nii.gz", "example_mr_sm.nii.gz"):
        shutil.copy(abdomen / name, real / name)
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(real), "--method", "simclr", "--out", str(run), "--max-steps", "1", "--patch", "24"] + SMALL) == 0
    listing = tmp_path / "real.csv"
    pd.DataFrame({"case_id": ["ct", "mr"], "image": [str(abdomen / "example_ct_sm.nii.gz"), str(abdomen / "example_mr_sm.nii.gz")],
                  "tumor_mask": ["", ""]}).to_csv(listing, index=False)
    assert main(["embed", "--encoder", str(run / "encoder.pt"), "--data", str(listing), "--out", str(tmp_path / "e.parquet")]) == 0
    table = pd.read_parquet(tmp_path / "e.parquet")
    assert table["case_id"].tolist() == ["ct", "mr"] and np.isfinite(table.drop(columns="case_id").to_numpy()).all()
    assert table.shape[1] == 1 + json.loads((run / "encoder.json").read_text())["out_dim"]
    import pyarrow.parquet as pq

    from kinetics.provenance import file_digest

    origin = json.loads(pq.read_schema(tmp_path / "e.parquet").metadata[b"ssl_rcc"])
    assert origin["inputs_sha1"]["encoder"] == file_digest(run / "encoder.pt") and origin["version"]
    assert json.loads((run / "run.json").read_text())["provenance"]["command"].startswith("python -m ssl_rcc pretrain --data ")
    dicom = abdomen / "example_ct_dicom"
    assert main(["embed", "--encoder", str(run / "encoder.pt"), "--data", str(dicom.parent / "example_ct_dicom"),
                 "--out", str(tmp_path / "d.parquet")]) == 0
    assert pd.read_parquet(tmp_path / "d.parquet")["case_id"][0].startswith("dicom-")
    encoder, _ = load_encoder(run / "encoder.pt")
    mask = np.zeros((30, 30, 30), bool)
    mask[20:25, 5:9, 10:14] = True
    whole, tumour = embed_volume(encoder, np.random.rand(1, 30, 30, 30)), embed_volume(encoder, np.random.rand(1, 30, 30, 30), mask=mask)
    assert whole.shape == tumour.shape == (encoder.out_dim,)


@pytest.mark.parametrize("args, message", [
    (["--method", "moco"], "unknown method 'moco'"),
    (["--method", "simclr", "--patch", "200"], "larger than every preprocessed volume"),
    (["--method", "mae", "--architecture", "resnet18"], "method mae needs a ViT encoder"),
    (["--method", "simclr", "--resume"], "--resume needs"),
    (["--method", "simclr", "--augment", "gpu"], "augment: 'gpu' is not one of auto, loader, device"),
    (["--method", "simclr", "--workers", "-1"], "workers: -1"),
    (["--method", "simclr", "--lr", "0"], "lr: 0"),
    (["--method", "simclr", "--batch-size", "1"], "simclr needs at least 2"),
    (["--method", "simclr", "--precision", "16"], "precision: 16 is not one of"),
    (["--method", "simclr", "--precision", "bf16-true"], "precision: 'bf16-true' is not one of 32-true, 16-mixed, bf16-mixed"),
    (["--method", "simclr", "--accelerator", "tpu"], "accelerator: 'tpu' is not one of"),
    (["--method", "simclr", "--recipe", "laptop"], "recipe: 'laptop' is not one of auto, cpu, gpu"),
    (["--method", "simclr", "--crop-scale", "2,1"], "crop_scale: 2 is larger than 1"),
    (["--method", "simclr", "--max-time", "0"], "max_time: 0"),
])
def test_bad_pretraining_input(archive, tmp_path, capsys, args, message):
    code = main(["pretrain", "--data", str(archive), "--out", str(tmp_path / "run"), "--max-steps", "1"] + SMALL + args)
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # the corrected command is not refused with "run directory exists"


def test_existing_run_resume_of_another_architecture_and_wrong_weights(archive, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["pretrain", "--data", str(archive), "--method", "simclr", "--out", str(run), "--max-steps", "1", "--patch", "24"] + SMALL
    assert main(base) == 0
    assert main(base) == 2 and "run directory exists" in capsys.readouterr().err
    assert main(base + ["--resume", "--architecture", "resnet34"]) == 2
    assert "--architecture resnet34 differs from the run's resnet10_slim" in capsys.readouterr().err
    cache = {p.name: p.stat().st_mtime_ns for p in (run / "cache").iterdir()}
    assert main(base + ["--resume", "--spacing", "2"]) == 2  # refused before the archive is preprocessed again
    assert "--spacing 2 differs from the run's 3.0" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (run / "cache").iterdir()} == cache
    meta = json.loads((run / "encoder.json").read_text())
    (run / "encoder.json").write_text(json.dumps(dict(meta, architecture="resnet34")))
    code = main(["embed", "--encoder", str(run / "encoder.pt"), "--data", str(archive), "--out", str(tmp_path / "x.parquet")])
    assert code == 2 and "the weights do not fit a resnet34 encoder" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_resume_keeps_the_runs_options_and_refuses_other_ones(archive, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(archive), "--method", "simclr", "--out", str(run), "--patch", "24", "--spacing", "3",
            "--workers", "0", "--checkpoint-every", "1"]
    assert main(args + ["--max-steps", "1", "--batch-size", "3", "--seed", "5"]) == 0
    assert main(args + ["--resume", "--batch-size", "2"]) == 2
    assert "--batch-size 2 differs from the run's 3" in capsys.readouterr().err
    assert main(args + ["--resume", "--max-steps", "2"]) == 0  # batch size and seed: the run's own
    options = json.loads((run / "run.json").read_text())
    assert (options["batch_size"], options["seed"], options["max_steps"]) == (3, 5, 2)
    (run / "checkpoints" / "last.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    assert main(args + ["--resume", "--max-steps", "3"]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(archive, tmp_path, monkeypatch):
    from ssl_rcc.errors import InputError
    from ssl_rcc.pretrain import pretrain

    run = tmp_path / "run"
    common = dict(method="simclr", out=run, patch=24, batch_size=2, spacing=3, workers=0, checkpoint_every=1, progress=False)
    pretrain(archive, max_steps=1, **common)
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(InputError, match="could not write the checkpoint \\(No space left on device\\); the previous one is kept"):
        pretrain(archive, max_steps=3, resume=True, **common)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
    assert not list((run / "checkpoints").glob(".*tmp"))


def test_online_knn_probe_logs_an_accuracy(archive, tmp_path):
    from ssl_rcc.probe import knn_balanced_accuracy

    assert knn_balanced_accuracy(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]), np.array(["a", "a", "b", "b"]), k=1) == 1.0
    cases = generate_phantoms(tmp_path / "labelled", n=6, seed=2, balanced=True, size=48, workers=1)
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(archive), "--method", "simclr", "--out", str(run), "--max-steps", "4", "--patch", "24",
                 "--probe", str(cases), "--probe-every", "2"] + SMALL) == 0
    rows = metrics(run)
    assert rows["step"].tolist() == [1, 2, 3, 4]
    assert rows["val_knn_acc"].isna().tolist() == [True, False, True, False]
    assert rows["val_knn_acc"].dropna().between(0, 1).all()


def test_untrained_export_resume_from_run_json_and_a_time_limit(archive, tmp_path, caplog):
    base = ["pretrain", "--data", str(archive), "--method", "simclr"] + SMALL
    untrained = tmp_path / "untrained"
    assert main(base + ["--out", str(untrained), "--max-steps", "0", "--patch", "24", "--seed", "4"]) == 0
    assert not (untrained / "checkpoints").exists()
    meta = json.loads((untrained / "encoder.json").read_text())
    assert meta["steps"] == 0 and json.loads((untrained / "run.json").read_text())["steps_trained"] == 0
    named = tmp_path / "Doe^Jane_MRN-483920"  # an archive folder named after a patient
    named.symlink_to(archive, target_is_directory=True)
    again = tmp_path / "again"
    assert main(["pretrain", "--data", str(named), "--method", "simclr"] + SMALL +
                ["--out", str(again), "--max-steps", "0", "--patch", "24", "--seed", "4", "--hash-ids"]) == 0
    assert "Doe" not in (again / "run.json").read_text() + (again / "encoder.json").read_text()
    first, second = (torch.load(r / "encoder.pt", weights_only=True) for r in (untrained, again))
    assert all(torch.equal(first[k], second[k]) for k in first)  # the from-scratch baseline is the seed's initialisation
    encoder, _ = load_encoder(untrained / "encoder.pt")
    assert encoder.patch == (24, 24, 24)

    run = tmp_path / "run"  # made with --patch 24 --spacing 3; resumed without them, from its run.json
    assert main(base + ["--out", str(run), "--max-steps", "1", "--patch", "24"]) == 0
    assert main(["pretrain", "--data", str(archive), "--method", "simclr", "--out", str(run), "--resume", "--max-steps", "2",
                 "--workers", "0"]) == 0
    options = json.loads((run / "run.json").read_text())
    assert options["patch"] == [24, 24, 24] and options["spacing_mm"] == 3 and options["steps_trained"] == 2
    assert metrics(run)["step"].tolist() == [1, 2]

    timed = tmp_path / "timed"
    assert main(base + ["--out", str(timed), "--max-steps", "500", "--patch", "24", "--max-time", "0.002"]) == 0
    options = json.loads((timed / "run.json").read_text())
    assert options["stopped_by"] == "max_time" and 1 <= options["steps_trained"] < 500
    assert len(metrics(timed)) == options["steps_trained"]
    assert json.loads((timed / "encoder.json").read_text())["steps"] == options["steps_trained"]
    assert "stopped by --max-time" in caplog.text



class _BadCase(torch.utils.data.Dataset):
    """A dataset whose third sample is a bad file (as a corrupt cache entry or shard record would be)."""

    def __len__(self):
        return 6

    def __getitem__(self, index):
        if index == 2:
            from kinetics.errors import KineticsInputError

            raise KineticsInputError("case_0002.npy: not a readable volume\n(truncated at byte 128).")
        return torch.full((2,), float(index))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_workers_bad_input_arrives_as_the_exception_itself(workers):
    from torch.utils.data import DataLoader

    from kinetics.errors import KineticsInputError
    from ssl_rcc.methods.base import SSLMethod
    from ssl_rcc.training import _SamplesOrErrors, collate_or_error

    loader = DataLoader(_SamplesOrErrors(_BadCase()), batch_size=2, num_workers=workers, collate_fn=collate_or_error)
    batches = list(loader)
    torch.testing.assert_close(batches[0], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    error = batches[1]  # the whole message, not a worker's traceback text with the sentence on its last line
    assert type(error) is KineticsInputError and str(error) == "case_0002.npy: not a readable volume\n(truncated at byte 128)."
    with pytest.raises(KineticsInputError, match="^case_0002.npy: not a readable volume"):
        SSLMethod.on_before_batch_transfer(None, error, 0)
    assert SSLMethod.on_before_batch_transfer(None, batches[0], 0) is batches[0]
