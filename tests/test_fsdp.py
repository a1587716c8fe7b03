"""FSDP2 (`fsdp="full_shard auto_wrap"`): HF's strings read, what finch does not do refused; on 2 ranks (gloo, the
CPU) the same run as DDP within float rounding, checkpoints in finch's normal format, a model folder that HF loads,
and a restart that resumes the sharded state exactly. Sharded checkpoints (torch.distributed.checkpoint): each rank
writes its part, training is unchanged, a restart and the best model load from them, and their pickled index is
read without running anything."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from conftest import tiny_bert
from test_distributed import ranks, torchrun
from transformers import AutoModelForSequenceClassification, pipeline

from finch import TrainingArguments
from finch.distributed.fsdp import SHARDS, FsdpPlan, checkpoints_sharded, load_shards, read_fsdp
from finch.errors import ConfigError, ResumeError
from finch.runs.checkpoint import load_model_weights
from finch.runs.folders import checkpoints, verify, world_size_of


def test_hf_fsdp_strings_and_config_are_read():
    assert read_fsdp("full_shard auto_wrap", None) == (FsdpPlan(reshard_after_forward=True), [])
    assert read_fsdp(["shard_grad_op", "auto_wrap"], {"fsdp_transformer_layer_cls_to_wrap": "BertLayer",
                                                      "fsdp_version": 2}) == (FsdpPlan(False, ("BertLayer",)), [])
    assert read_fsdp("full_shard", {"reshard_after_forward": False})[0] == FsdpPlan(False, None)
    assert read_fsdp("", None) == (None, [])
    assert read_fsdp("full_shard", {"fsdp_state_dict_type": "SHARDED_STATE_DICT"})[0].state_dict_type == \
        "SHARDED_STATE_DICT"


def test_checkpoints_are_sharded_when_asked_or_when_the_full_state_would_not_fit_in_memory():
    gib = 1 << 30
    assert checkpoints_sharded("SHARDED_STATE_DICT", 1, 64 * gib)
    assert not checkpoints_sharded("FULL_STATE_DICT", 100 * gib, 64 * gib)  # asked for: gathered, as HF does
    assert not checkpoints_sharded(None, 30 * gib, 64 * gib)  # unset: gathered while it takes under half
    assert checkpoints_sharded(None, 33 * gib, 64 * gib)
    assert not checkpoints_sharded(None, 33 * gib, None)  # memory unknown: finch's normal format


def test_what_finch_does_not_do_is_refused_at_once_with_the_reason(tmp_path):
    with pytest.raises(ConfigError) as refused:
        TrainingArguments(output_dir=str(tmp_path), fsdp="hybrid_shard offload auto_wrap", save_on_each_node=True,
                          fsdp_config={"fsdp_version": 1, "backward_prefetch": "BACKWARD_PRE",
                                       "state_dict_type": "LOCAL_STATE_DICT"})
    message = str(refused.value)
    for expected in ("'hybrid_shard' shards within each machine", "'offload'", "version=1: finch runs FSDP2",
                     "'backward_prefetch' is not a setting finch uses", "LOCAL_STATE_DICT",
                     "fsdp with save_on_each_node=True"):
        assert expected in message, f"{expected!r} not in {message}"
    with pytest.raises(ConfigError, match="exclusive"):
        TrainingArguments(output_dir=str(tmp_path), fsdp="full_shard shard_grad_op")
    with pytest.raises(ConfigError, match="fsdp_config is set but fsdp is not"):
        TrainingArguments(output_dir=str(tmp_path), fsdp_config={"transformer_layer_cls_to_wrap": ["BertLayer"]})


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """The worker's 2-rank run (41 rows, 12 steps, no dropout) under FSDP2: its folder."""
    out = tmp_path_factory.mktemp("fsdp")
    torchrun("train", str(out), "--fsdp")
    return out


@pytest.mark.slow
def test_fsdp_on_two_ranks_equals_ddp_and_saves_what_hf_loads(tmp_path, fsdp_run):
    torchrun("train", str(tmp_path / "ddp"))
    sharded, replicated = torch.load(fsdp_run / "weights.pt"), torch.load(tmp_path / "ddp" / "weights.pt")
    assert sharded.keys() == replicated.keys()
    for key, expected in replicated.items():
        assert torch.allclose(sharded[key], expected, atol=1e-5, rtol=0), f"FSDP2 and DDP differ at {key}"
    first, second = ranks(fsdp_run)
    assert first["digest"] == second["digest"] and first["step"] == 12
    evaluations = [{k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k}
                   for e in first["evaluations"]]
    assert [e["step"] for e in evaluations] == [4, 8, 12] and all(e["eval_count"] == 9 for e in evaluations)
    assert evaluations == [{k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k}
                           for e in second["evaluations"]], "every rank sees the same metrics"
    saved = checkpoints(fsdp_run)[-1]
    assert verify(saved) is None and world_size_of(saved) == 2
    for folder in (saved, fsdp_run / "model"):  # full tensors, in HF's format, not shards
        loaded = AutoModelForSequenceClassification.from_pretrained(folder).state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in sharded.items()), folder
    classify = pipeline("text-classification", model=str(fsdp_run / "model"))
    assert classify("good great nice")[0]["label"] in {"negative", "positive"}


@pytest.mark.slow
def test_fsdp_restart_resumes_the_sharded_weights_and_optimizer_exactly(tmp_path, fsdp_run):
    """Rank 1 dies after step 7; the restart loads checkpoint-6 into the shards and ends bit-identical."""
    out = tmp_path / "restarted"
    torchrun("train", str(out), "--fsdp", "--save-steps", "3", "--fail-at-step", "7", "--resume", "none", restarts=1)
    first, second = ranks(out)
    assert first["restarts"] == 1 and first["start_step"] == second["start_step"] == 6
    assert first["digest"] == second["digest"] == ranks(fsdp_run)[0]["digest"]


@pytest.mark.slow
def test_sharded_checkpoints_hold_each_ranks_part_and_give_the_best_model(tmp_path):
    """The FSDP2 run with state_dict_type SHARDED_STATE_DICT and an early best model loaded at the end: checkpoints
    hold a torch.distributed.checkpoint folder of both ranks' shards (no gathered weights or optimizer.pt), are verified
    by their manifest, and the final weights are the best checkpoint's, read back here in one process."""
    out = tmp_path / "sharded"
    torchrun("train", str(out), "--fsdp", "--sharded", "--save-steps", "4", "--load-best")
    saved = checkpoints(out)
    assert [folder.name for folder in saved] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    for folder in saved:
        assert verify(folder) is None and world_size_of(folder) == 2
        names = sorted(path.name for path in (folder / SHARDS).iterdir())
        assert names == [".metadata", "__0_0.distcp", "__1_0.distcp"], names
        assert not (folder / "model.safetensors").exists() and not (folder / "optimizer.pt").exists()
        assert (folder / "config.json").exists() and (folder / "scheduler.json").exists()
    first, second = ranks(out)
    assert first["digest"] == second["digest"]
    losses = {e["step"]: e["eval_loss"] for e in first["evaluations"]}
    best_step = max(losses, key=losses.get)  # the worker's "best": the highest loss, an early step
    assert best_step < 12, losses
    best = out / f"checkpoint-{best_step}"
    model = tiny_bert(dropout=0.0, seed=5)  # other initial weights: all of them must be loaded
    load_model_weights(model, best)
    final = torch.load(out / "weights.pt")
    assert all(torch.equal(model.state_dict()[key], value) for key, value in final.items()), \
        f"the final model is not checkpoint-{best_step}'s (best eval_loss of {losses})"
    loaded = AutoModelForSequenceClassification.from_pretrained(out / "model").state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in final.items()), "save_model gives the whole model"
    assert pipeline("text-classification", model=str(out / "model"))("good")[0]["label"] in {"negative", "positive"}


@pytest.mark.slow
def test_a_restart_resumes_from_sharded_checkpoints_exactly(tmp_path, fsdp_run):
    """Rank 1 dies after step 7; the restart loads checkpoint-6's shards (weights and AdamW moments, each rank its
    part) and ends bit-identical to the uninterrupted run that gathered full checkpoints."""
    out = tmp_path / "restarted"
    torchrun("train", str(out), "--fsdp", "--sharded", "--save-steps", "3", "--fail-at-step", "7", "--resume", "none",
             restarts=1)
    first, second = ranks(out)
    assert first["restarts"] == 1 and first["start_step"] == second["start_step"] == 6
    assert (out / "checkpoint-6" / SHARDS / ".metadata").exists()
    assert first["digest"] == second["digest"] == ranks(fsdp_run)[0]["digest"]


def test_a_forged_shard_index_is_refused_without_running_anything(tmp_path):
    """torch.distributed.checkpoint's `.metadata` is a pickle; finch builds only checkpoint records from it."""
    folder = tmp_path / SHARDS
    folder.mkdir()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    (folder / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ResumeError, match="posix.system is not part of a checkpoint index: refused"):
        load_shards(folder, tiny_bert())
    assert not marker.exists()
