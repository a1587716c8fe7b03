"""Runs in one output_dir, resume planning before anything is written, fingerprints, a longer resumed run."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert
from transformers import AutoConfig, AutoModelForSequenceClassification

from finch import Trainer, TrainerCallback, TrainingArguments
from finch.errors import ResumeError
from finch.runs.fingerprint import Fingerprint, config_fingerprint, data_fingerprint
from finch.runs.folders import LOADED_FILES, checkpoints, remove_leftovers, run_of, verify
from finch.runs.resume import plan_resume
from finch.training.preemption import TrainingPreempted


def run_args(output_dir, **overrides):
    values = {"output_dir": str(output_dir), "save_strategy": "steps", "save_steps": 2, "logging_steps": 1000,
              "disable_tqdm": True, "learning_rate": 2e-3, "seed": 3, "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 1, "max_steps": 2, "bf16": False}
    values.update(overrides)
    return TrainingArguments(**values)


def train(output_dir, data, tokenizer, resume=None, model=None, callbacks=(), **overrides):
    trainer = Trainer(model=model or tiny_bert(), args=run_args(output_dir, **overrides), train_dataset=data,
                      processing_class=tokenizer, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def folder_digest(folder: Path) -> str:
    """Names and bytes of everything under `folder`."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def rewrite_manifest(folder: Path, drop=()) -> None:
    """Re-list every file of `folder` in its manifest, as a forger (or an older finch, with `drop`) would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in drop:
        manifest.pop(key, None)
    manifest["files"] = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                         for p in sorted(folder.iterdir()) if p.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def make_legacy(folder: Path) -> None:
    """Turn a checkpoint into one an older finch wrote: no run id, no fingerprints."""
    state = json.loads((folder / "trainer_state.json").read_text())
    for key in ("run_id", "data_fingerprint", "model_fingerprint"):
        state.pop(key)
    (folder / "trainer_state.json").write_text(json.dumps(state))
    rewrite_manifest(folder, drop=("run_id", "saved_at"))


class SigtermAt(TrainerCallback):
    """A scheduler's preemption notice arriving during step `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_fresh_run_refuses_a_folder_with_another_runs_checkpoints_and_leaves_it_untouched(tmp_path, toy, tokenizer):
    """What `finch train` decides (plan_resume without set_aside): refuse, naming every choice, touching nothing."""
    train(tmp_path, toy, tokenizer)
    before = folder_digest(tmp_path)
    with pytest.raises(
        ResumeError, match=r"already holds checkpoints of another run \(run \w{8}: checkpoint-2"
    ) as error:
        plan_resume(tmp_path, None, run_args(tmp_path, max_steps=4))
    for choice in ("resume_from_checkpoint=True", "--resume auto", "overwrite_output_dir=True",
                   "--overwrite-output-dir", "another output_dir"):
        assert choice in str(error.value)
    assert folder_digest(tmp_path) == before
    make_legacy(tmp_path / "checkpoint-2")
    with pytest.raises(ResumeError, match=r"an older finch's run \(no run id\): checkpoint-2"):
        plan_resume(tmp_path, None, run_args(tmp_path))


def test_overwrite_output_dir_deletes_the_other_runs_checkpoints_with_a_warning(tmp_path, toy, tokenizer, caplog):
    first = train(tmp_path, toy, tokenizer)
    args = run_args(tmp_path, save_steps=1)
    args.overwrite_output_dir = True  # the field the lead adds to TrainingArguments
    second = Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer)
    second.train()
    assert "overwrite_output_dir=True: deleting the checkpoints of other runs" in caplog.text
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2"]
    assert {run_of(p) for p in checkpoints(tmp_path)} == {second.state.run_id} != {first.state.run_id}


def test_mixed_folder_keeps_every_runs_checkpoints_and_the_preemption_save(tmp_path, toy, tokenizer, caplog):
    """Run A left checkpoint-8 in `shared`; run B, resumed into `shared`, is preempted at step 3 with
    save_total_limit=1: rotation kept the higher-numbered checkpoint-8 and deleted B's, and resume=True took A's."""
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    first = train(shared, toy, tokenizer, max_steps=8, save_steps=8, save_total_limit=1)
    a_before = folder_digest(shared / "checkpoint-8")
    train(elsewhere, toy, tokenizer)  # run B: checkpoint-2
    b_args = {"max_steps": 6, "save_steps": 100, "save_total_limit": 1}
    with pytest.raises(TrainingPreempted) as stop:
        train(shared, toy, tokenizer, resume=str(elsewhere / "checkpoint-2"), callbacks=[SigtermAt(3)], **b_args)
    assert stop.value.checkpoint == str(shared / "checkpoint-3")
    assert verify(shared / "checkpoint-3") is None, "the checkpoint the message names exists and is whole"
    assert folder_digest(shared / "checkpoint-8") == a_before and run_of(shared / "checkpoint-8") == first.state.run_id
    assert plan_resume(shared, True, run_args(shared, **b_args)) == shared / "checkpoint-3"
    resumed = train(shared, toy, tokenizer, resume=True, **b_args)
    assert "holds checkpoints of several runs; resuming" in caplog.text and resumed.state.global_step == 6
    assert [p.name for p in checkpoints(shared)] == ["checkpoint-6", "checkpoint-8"]
    assert folder_digest(shared / "checkpoint-8") == a_before


def test_resume_that_would_save_over_another_runs_checkpoints_is_refused(tmp_path, toy, tokenizer):
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    train(shared, toy, tokenizer, max_steps=4, save_steps=4)
    train(elsewhere, toy, tokenizer)
    with pytest.raises(ResumeError, match=r"holds checkpoints of another run at steps this run will save \(run "):
        plan_resume(shared, elsewhere / "checkpoint-2", run_args(shared, max_steps=6))
    assert plan_resume(shared, elsewhere / "checkpoint-2", run_args(shared, max_steps=3))  # stops before step 4


def test_refused_resumes_leave_the_folder_byte_identical(tmp_path, toy, tokenizer):
    """Every refusal comes before the first write; most before any weights are loaded (`plan_resume`)."""
    run, spare = tmp_path / "run", tmp_path / "spare"
    train(run, toy, tokenizer)
    flipped = toy.map(lambda row, index: {"label": 1 - row["label"] if index == 0 else row["label"]},
                      with_indices=True)
    cases = [  # (resume, overrides, data, model, expected message)
        (
            str(run / "checkpoint-9"),
            {},
            toy,
            None,
            r"no such checkpoint folder: .*9\. Checkpoints present: .*run: checkpoint-2",
        ),
        (str(run), {}, toy, None, r"is not a finch checkpoint folder .*it holds checkpoint-2: pass one of those"),
        (True, {"seed": 4}, toy, None, "cannot resume .* exactly: seed: 3 then, 4 now"),
        (True, {"per_device_train_batch_size": 8}, toy, None, "per_device_train_batch_size: 4 then, 8 now"),
        (True, {}, flipped, None, "the training data differs from the data this checkpoint was trained on"),
        (True, {}, toy, tiny_bert(dropout=0.2), "the model differs from the one this checkpoint was trained on"),
        (True, {"max_steps": 1}, toy, None, "is at step 2, past this run's 1 steps; raise max_steps"),
    ]
    before = folder_digest(tmp_path)
    for resume, overrides, data, model, message in cases:
        with pytest.raises(ResumeError, match=message):
            train(run, data, tokenizer, resume=resume, model=model, **overrides)
        assert folder_digest(tmp_path) == before, message

    damaged = spare / "checkpoint-2"
    shutil.copytree(run / "checkpoint-2", damaged)
    (damaged / "scheduler.json").write_text("{}\n")
    pickled = spare / "pickled" / "checkpoint-2"
    shutil.copytree(run / "checkpoint-2", pickled)
    torch.save({"state": Pwn()}, pickled / "optimizer.pt")
    rewrite_manifest(pickled)  # a forged checkpoint: the manifest matches
    before = folder_digest(tmp_path)
    for folder, message in ((damaged, "checkpoint-2 is damaged: scheduler.json has 3 bytes"),
                            (pickled, "optimizer.pt is not a plain tensor file")):
        with pytest.raises(ResumeError, match=message):
            train(spare, toy, tokenizer, resume=str(folder))
        assert folder_digest(tmp_path) == before, message


class Pwn:
    def __reduce__(self):
        return print, ("PWNED",)


def test_optimizer_file_that_is_not_plain_tensors_is_refused_and_not_run(tmp_path, toy, tokenizer, capfd):
    train(tmp_path, toy, tokenizer)
    folder = tmp_path / "checkpoint-2"
    torch.save({"state": Pwn(), "param_groups": []}, folder / "optimizer.pt")
    rewrite_manifest(folder)
    with pytest.raises(ResumeError) as error:
        train(tmp_path, toy, tokenizer, resume=True, max_steps=4)
    assert "not a plain tensor file" in str(error.value) and "refused" in str(error.value)
    assert "weights_only" not in str(error.value), "never advise weights_only=False"
    assert "PWNED" not in capfd.readouterr().out


def test_larger_max_steps_on_resume_takes_the_new_plan_and_warns_about_the_schedule(tmp_path, toy, tokenizer,
                                                                                    caplog, capsys):
    train(tmp_path, toy, tokenizer)
    resumed = train(tmp_path, toy, tokenizer, resume=True, max_steps=4)
    assert (resumed.state.global_step, resumed.state.max_steps) == (4, 4)
    assert resumed.state.num_train_epochs == 4 / resumed.state.steps_per_epoch
    assert "learning-rate schedule was planned for 2 steps and now continues as one planned for 4" in caplog.text
    assert json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())["max_steps"] == 4
    assert "step 4/4" in capsys.readouterr().out


def test_checkpoint_of_an_older_finch_resumes_with_a_warning(tmp_path, toy, tokenizer, caplog):
    train(tmp_path, toy, tokenizer)
    make_legacy(tmp_path / "checkpoint-2")
    with pytest.raises(ResumeError, match="saved with 24 steps per epoch, this run has 5"):
        train(tmp_path, toy.select(range(20)), tokenizer, resume=True, max_steps=4)
    resumed = train(tmp_path, toy, tokenizer, resume=True, max_steps=4, save_total_limit=1)
    assert "saved by an older finch without data and model fingerprints" in caplog.text
    assert resumed.state.global_step == 4 and resumed.state.run_id is None  # the older run goes on as itself
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-4"]


def test_cli_can_plan_the_resume_before_loading_the_model(tmp_path, toy, tokenizer, tiny_model_dir):
    """What the CLI has before loading weights (tokenized data, config) gives the fingerprint train() records."""
    labels = {"num_labels": 2}
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, **labels)
    train(tmp_path, toy, tokenizer, model=model)
    before_loading = Fingerprint(data_fingerprint(toy), config_fingerprint(
        AutoConfig.from_pretrained(tiny_model_dir, **labels), AutoModelForSequenceClassification))
    assert plan_resume(tmp_path, True, run_args(tmp_path, max_steps=4), before_loading) == tmp_path / "checkpoint-2"
    with pytest.raises(ResumeError, match="no such checkpoint folder"):
        plan_resume(tmp_path, tmp_path / "checkpoint-3", run_args(tmp_path), before_loading)
    with pytest.raises(ResumeError, match="another run"):
        plan_resume(tmp_path, None, run_args(tmp_path), before_loading)


def test_manifest_names_outside_the_folder_are_refused(tmp_path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"not yours")
    described = {"size": 9, "sha256": hashlib.sha256(b"not yours").hexdigest()}
    folder = tmp_path / "run" / "checkpoint-1"
    folder.mkdir(parents=True)
    for name in ("../../secret", str(outside)):
        (folder / "manifest.json").write_text(json.dumps({"files": {name: described}}))
        assert "outside the checkpoint folder" in verify(folder), name
    (folder / "model.safetensors").symlink_to(outside)
    (folder / "manifest.json").write_text(json.dumps({"files": {"model.safetensors": described}}))
    assert verify(folder).startswith(f"model.safetensors is a symbolic link to {outside}, outside the checkpoint "
                                     f"folder")
    assert f'cp --remove-destination "$(readlink -f {folder / "model.safetensors"})"' in verify(folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "gone")
    assert f"a symbolic link to {tmp_path / 'gone'}, which does not exist" in verify(folder)
    (folder / "model.safetensors").unlink()
    (folder / "shared").symlink_to(tmp_path, target_is_directory=True)  # a linked folder on the file's way
    (folder / "manifest.json").write_text(json.dumps({"files": {"shared/secret": described}}))
    assert verify(folder).startswith(f"shared is a symbolic link to {tmp_path}, outside the checkpoint folder")
    (folder / "shared").unlink()
    (folder / "optimizer.pt").write_bytes(b"added later")
    (folder / "manifest.json").write_text(json.dumps({"files": {}}))
    assert verify(folder) == "optimizer.pt is not listed in manifest.json (added after the save?)"
    assert "optimizer.pt" in LOADED_FILES


def test_remove_leftovers_spares_other_runs_live_saves(tmp_path):
    mine, other = "a" * 32, "b" * 32
    host = "".join(c if c.isascii() and (c.isalnum() or c == ".") else "_" for c in socket.gethostname())
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dead, live = int(ended.stdout), os.getpid()
    names = {
        f".tmp-checkpoint-4-{other}-{host}-{live}": True,  # another run saving right now: kept
        f".tmp-checkpoint-4-{other}-elsewhere-{dead}": True,  # another machine's: kept
        f".tmp-checkpoint-5-{other}-{host}-{dead}": False,  # a killed process's unfinished save: removed
        f".tmp-checkpoint-6-{mine}-{host}-{live}": False,  # this run's: removed
        f".tmp-checkpoint-7-{dead}": False,  # an older finch's, killed: removed
        ".tmp-checkpoint-notes": True,  # not finch's name
    }
    for name in names:
        (tmp_path / name).mkdir()
    stale = tmp_path / f".stale-checkpoint-8-{mine}-{host}-{dead}"  # killed between the two renames of a re-save
    stale.mkdir()
    (stale / "manifest.json").write_text(json.dumps({"run_id": mine, "files": {}}))
    remove_leftovers(tmp_path, mine)
    assert {name: (tmp_path / name).exists() for name in names} == names
    assert (tmp_path / "checkpoint-8").is_dir() and not stale.exists(), "restored, not deleted"


def test_resuming_a_finished_run_trains_no_further_step(tmp_path, toy, tokenizer):
    """96 rows, batch 4: 24 steps an epoch; a run of 5 steps ends mid-epoch and, resumed, must stay at step 5."""
    finished = train(tmp_path / "o", toy, tokenizer, max_steps=5, save_steps=5)
    weights = {k: v.clone() for k, v in finished.model.state_dict().items()}
    again = train(tmp_path / "o", toy, tokenizer, resume=True, max_steps=5, save_steps=5)
    assert again.state.global_step == 5
    assert all(torch.equal(weights[k], v) for k, v in again.model.state_dict().items())


def test_a_fresh_trainer_run_sets_other_runs_checkpoints_aside_unchanged(tmp_path, toy, tokenizer, caplog):
    """HF's course trains twice into one output_dir ("test-trainer"): the second Trainer.train() runs, and the first
    run's checkpoints are moved, byte for byte, to previous-runs/<run id>/ (never replaced, never mixed)."""
    first = train(tmp_path, toy, tokenizer)
    before = folder_digest(tmp_path / "checkpoint-2")
    second = train(tmp_path, toy, tokenizer)
    assert "moved them unchanged to" in caplog.text
    aside = tmp_path / "previous-runs" / f"run-{first.state.run_id[:8]}" / "checkpoint-2"
    assert folder_digest(aside) == before and verify(aside) is None
    assert [run_of(f) for f in checkpoints(tmp_path)] == [second.state.run_id]
    third = train(tmp_path, toy, tokenizer, resume=True)  # resuming still finds this run's own checkpoints
    assert third.state.run_id == second.state.run_id


def transformers_checkpoint(output_dir: Path, step: int) -> Path:
    """A checkpoint as transformers.Trainer writes it: the model, HF's trainer_state.json (no run id) and its
    pickles (arguments, optimizer, scheduler, RNG state), and no finch manifest."""
    folder = output_dir / f"checkpoint-{step}"
    tiny_bert().save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": step, "epoch": 1.0,
                                                           "log_history": [], "stateful_callbacks": {}}))
    for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).write_bytes(b"pickled by transformers")
    return folder


@pytest.mark.parametrize("how", ["folder", "auto"])
def test_a_transformers_trainer_checkpoint_is_refused_as_such_not_called_damaged(tmp_path, toy, tokenizer, how):
    """Told "damaged", a user may delete a good checkpoint: the refusal says whose it is, why finch cannot resume
    it, and how to go on from its weights (advice that works); the folder stays as it was."""
    hf_run = tmp_path / "hf"
    folder = transformers_checkpoint(hf_run, 4)
    before = folder_digest(hf_run)
    with pytest.raises(ResumeError) as error:
        train(hf_run, toy, tokenizer, resume=str(folder) if how == "folder" else True)
    message = str(error.value)
    assert "written by transformers.Trainer" in message and "not damaged" in message
    assert "is damaged" not in message and "older finch" not in message
    assert f"from_pretrained('{folder}')" in message and f"finch train --model {folder}" in message
    assert "resume it with transformers.Trainer" in message
    assert folder_digest(hf_run) == before
    AutoModelForSequenceClassification.from_pretrained(folder)  # the advice: a fresh run from its weights


def test_a_fresh_run_sets_transformers_checkpoints_aside_under_a_clear_name(tmp_path, toy, tokenizer, caplog):
    """Trainer.train() moves them to previous-runs/transformers-trainer-run/; finch train (no set_aside) refuses the
    folder without advising a resume that finch cannot do."""
    folder = transformers_checkpoint(tmp_path, 4)
    before = folder_digest(folder)
    with pytest.raises(ResumeError, match=r"another run \(a transformers.Trainer run: checkpoint-4") as error:
        plan_resume(tmp_path, None, run_args(tmp_path))
    assert "--resume auto" not in str(error.value) and f"pass {folder} as the model" in str(error.value)
    train(tmp_path, toy, tokenizer)
    assert "checkpoints of another run (a transformers.Trainer run: checkpoint-4" in caplog.text
    aside = tmp_path / "previous-runs" / "transformers-trainer-run" / "checkpoint-4"
    assert folder_digest(aside) == before
    assert [folder.name for folder in (tmp_path / "previous-runs").iterdir() if folder.is_dir()] == [
        "transformers-trainer-run"]


def test_a_fresh_run_sets_the_earlier_runs_log_aside_and_keeps_its_own_evaluation(tmp_path, toy, tokenizer, caplog):
    """log.jsonl holds one run: a second fresh run moves the first's lines, byte for byte, to previous-runs/, but
    keeps what its own trainer logged before training (an evaluation of the untrained model); a resume appends."""
    log = tmp_path / "log.jsonl"
    train(tmp_path, toy, tokenizer, logging_steps=1)
    first_log = log.read_bytes()
    assert [json.loads(line)["step"] for line in first_log.splitlines()][:2] == [1, 2]
    second = Trainer(model=tiny_bert(), args=run_args(tmp_path, logging_steps=1), train_dataset=toy,
                     eval_dataset=toy, processing_class=tokenizer)
    second.evaluate()  # the baseline, step 0: it belongs to this run
    second.train()
    assert "held the log of an earlier run" in caplog.text
    (aside,) = (tmp_path / "previous-runs").glob("log-*.jsonl")
    assert aside.read_bytes() == first_log
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps[0] == 0 and "eval_loss" in json.loads(log.read_text().splitlines()[0])
    assert steps[1:] == sorted(steps[1:]) and steps.count(1) == 1  # one run: step 1 once
    train(tmp_path, toy, tokenizer, resume=True, logging_steps=1, max_steps=3)
    resumed = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert resumed[:len(steps)] == steps and resumed[-2:] == [3, 3]  # appended: its step 3 and the summary
    assert len(list((tmp_path / "previous-runs").glob("log-*.jsonl"))) == 1


def test_a_kill_while_rotation_deletes_a_checkpoint_leaves_no_damaged_checkpoint(tmp_path, toy, tokenizer,
                                                                                  monkeypatch):
    """Rotation renames a checkpoint aside before deleting it: a process killed half-way through the deletion
    leaves a `.tmp-` folder the next start cleans, never a half-deleted `checkpoint-<step>` that nothing removes."""
    import finch.runs.folders as run_folders_module

    trainer = train(tmp_path, toy, tokenizer, max_steps=4, save_steps=2)  # checkpoint-2 and checkpoint-4
    run_id, real_rmtree = trainer.state.run_id, shutil.rmtree

    def killed_half_way(folder, ignore_errors=False):
        victim = min(Path(folder).iterdir())
        victim.unlink()  # one file gone, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folders_module.shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        run_folders_module.rotate_checkpoints(tmp_path, 1, None, run_id)
    monkeypatch.setattr(run_folders_module.shutil, "rmtree", real_rmtree)
    assert [folder.name for folder in checkpoints(tmp_path)] == ["checkpoint-4"]
    assert all(verify(folder) is None for folder in checkpoints(tmp_path))
    assert len(list(tmp_path.glob(".tmp-checkpoint-2-*"))) == 1
    remove_leftovers(tmp_path, run_id)  # what the next start does
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("name, content, message", [
    ("trainer_state.json", "{\"global_step\": 2,", "trainer_state.json: not readable JSON"),
    ("trainer_state.json", "[2]", "trainer_state.json: it holds a JSON list"),
    ("trainer_state.json", "{\"global_step\": \"two\"}", "trainer_state.json: global_step is 'two', not a int"),
    ("trainer_state.json", None, "trainer_state.json: missing"),
    ("rng_state.json", "{\"python\": [3, [1, 2], null], \"numpy\": [], \"torch\": []}", "rng_state.json: not the RNG"),
    ("rng_state.json", "[]", "rng_state.json: not the RNG states finch saves"),
    ("rng_state.json", None, "rng_state.json: missing"),
    ("scheduler.json", "[1, 2]", "scheduler.json: it holds a JSON list, not a state object"),
    ("scheduler.json", "{'last_epoch': 2}", "scheduler.json: not readable JSON"),
    ("scheduler.json", None, "scheduler.json: missing"),
    ("training_args.json", "{\"seed\": ", "training_args.json: not readable JSON"),
])
def test_state_files_that_cannot_be_used_are_refused_before_the_weights_load_even_with_a_matching_manifest(
        tmp_path, toy, tokenizer, monkeypatch, name, content, message):
    """A checksum says a file is as saved, not that it can be used: each state file is read and checked as resuming
    uses it, and a bad one is refused naming it, before any weights load (Python and CLI both plan first)."""
    train(tmp_path / "run", toy, tokenizer)
    folder = tmp_path / "run" / "checkpoint-2"
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(content)
    rewrite_manifest(folder)  # the manifest matches: only reading the file finds it
    import finch.runs.checkpoint

    monkeypatch.setattr(finch.runs.checkpoint, "load_model_weights", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ResumeError, match=rf"checkpoint-2 is damaged: {message}"):
        train(tmp_path / "run", toy, tokenizer, resume=str(folder), max_steps=4)


def test_this_runs_checkpoint_with_a_lost_manifest_is_named_as_such(tmp_path, toy, tokenizer):
    train(tmp_path, toy, tokenizer, max_steps=4)
    (tmp_path / "checkpoint-4" / "manifest.json").unlink()
    with pytest.raises(ResumeError, match=r"holds checkpoint-4 of this very run, damaged: the manifest.json is lost"):
        plan_resume(tmp_path, True, run_args(tmp_path, max_steps=6))


def test_a_folder_named_like_a_checkpoint_is_refused_before_training_not_at_the_first_save(tmp_path, toy, tokenizer):
    from finch.errors import OutputError

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "notes.txt").write_text("mine")
    before = folder_digest(tmp_path)
    with pytest.raises(OutputError, match="holds checkpoint-2, which is not a finch checkpoint .* Rename or move it"):
        train(tmp_path, toy, tokenizer)
    assert folder_digest(tmp_path) == before


def test_a_checkpoint_renamed_to_another_step_is_refused_before_a_save_replaces_it(tmp_path, toy, tokenizer):
    """checkpoint-2 renamed checkpoint-6: resuming it (by name or as the newest) would save step 6 over it."""
    train(tmp_path, toy, tokenizer)
    (tmp_path / "checkpoint-2").rename(tmp_path / "checkpoint-6")
    for resume in (True, tmp_path / "checkpoint-6"):
        with pytest.raises(ResumeError, match="holds step 2 .*not step 6: it was renamed or copied. Rename it back "
                                              "to checkpoint-2"):
            plan_resume(tmp_path, resume, run_args(tmp_path, max_steps=8))
    (tmp_path / "checkpoint-6").rename(tmp_path / "saved-2")  # a name that claims no step resumes as before
    assert plan_resume(tmp_path, tmp_path / "saved-2", run_args(tmp_path, max_steps=8)) == tmp_path / "saved-2"


def test_a_moved_run_folder_keeps_its_best_checkpoint_and_loads_it_at_the_end(tmp_path, toy, tokenizer):
    """The best checkpoint is saved as a path: after `mv run moved`, resuming used to keep the old path, so
    rotation deleted the moved run's best checkpoint and the end loaded another folder's (or no) weights."""
    import shutil

    calls = []

    def worse_each_time(eval_pred):  # the first evaluation of the run (step 2) stays the best
        calls.append(1)
        return {"score": 1 / len(calls)}

    best = {"eval_strategy": "steps", "eval_steps": 2, "load_best_model_at_end": True, "save_total_limit": 1,
            "metric_for_best_model": "score"}
    first = Trainer(model=tiny_bert(), args=run_args(tmp_path / "run", max_steps=4, **best), train_dataset=toy,
                    eval_dataset=toy, processing_class=tokenizer, compute_metrics=worse_each_time)
    first.train()
    assert first.state.best_global_step == 2
    shutil.move(tmp_path / "run", tmp_path / "moved")
    (tmp_path / "run").mkdir()  # a new run of the same name at the old place: its folder is not this run's
    resumed = Trainer(model=tiny_bert(), args=run_args(tmp_path / "moved", max_steps=6, **best), train_dataset=toy,
                      eval_dataset=toy, processing_class=tokenizer, compute_metrics=worse_each_time)
    resumed.train(resume_from_checkpoint=True)
    kept = tmp_path / "moved" / "checkpoint-2"
    assert resumed.state.best_global_step == 2
    assert resumed.state.best_model_checkpoint == str(kept) and kept.is_dir()
    assert_same_weights(resumed.model, kept)
    assert not list((tmp_path / "run").iterdir())


def assert_same_weights(model, folder):
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    for name, value in model.state_dict().items():
        if name in saved:
            assert torch.equal(value.cpu(), saved[name]), name
