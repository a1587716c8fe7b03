"""One run at a time per output folder: a second finch run into a folder that a live run holds is refused before it
writes anything, from the CLI and from `Trainer.train()`; the lock goes with the process, however it ends."""

import subprocess
import sys
import textwrap

import pytest
from conftest import tiny_bert

from finch import Trainer, TrainingArguments
from finch.cli.commands import main
from finch.errors import OutputError
from finch.runs.files import run_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from finch.runs.files import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def held_by_another_process(tmp_path):
    """`tmp_path/run` held by a live finch process (as a run training into it would hold it)."""
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield folder
    finally:
        holder.kill()
        holder.wait(timeout=30)


def snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_finch_train_into_a_folder_another_run_holds_is_refused_and_writes_nothing(held_by_another_process, tmp_path,
                                                                                   tiny_model_dir, capsys):
    folder = held_by_another_process
    (folder / "log.jsonl").write_text('{"step": 20, "loss": 0.5}\n')  # the other run's files
    before = snapshot(folder)
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"good {i},pos\nbad {i},neg\n" for i in range(8)))
    code = main(["train", "--model", tiny_model_dir, "--train", str(data), "--output-dir", str(folder),
                 "--overwrite-output-dir", "--num-train-epochs", "1", "--disable-tqdm"])
    assert code == 2
    assert "is in use: another finch run is training into it now" in capsys.readouterr().err
    assert snapshot(folder) == before


def test_trainer_train_into_a_folder_another_run_holds_is_refused(held_by_another_process, toy, tokenizer):
    args = TrainingArguments(output_dir=str(held_by_another_process), max_steps=2, save_strategy="no",
                             disable_tqdm=True, report_to="none")
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=toy, processing_class=tokenizer)
    with pytest.raises(OutputError, match="is in use"):
        trainer.train()
    assert list(held_by_another_process.iterdir()) == []


def test_the_lock_is_reentrant_in_a_process_released_after_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "new" / "run"
    with run_lock(folder), run_lock(folder):  # finch train's hold, then its Trainer.train()'s
        assert folder.is_dir()
    assert not folder.exists()  # made here and left empty: removed again
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputError), run_lock(folder):
        pass
    holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
    holder.wait(timeout=30)
    with run_lock(folder):
        pass
