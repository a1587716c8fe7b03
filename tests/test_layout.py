"""The package's layering (docs/architecture.md), read from the source: every import, at the top of a module or
inside a function, goes down the layers or stays in its own wing, and no modules import each other in a circle."""

import ast
import pathlib
import runpy
import sys

import pytest

import finch

ROOT = pathlib.Path(finch.__file__).parent
# lowest first: a module may import its own wing and the layers below it, never a layer above or a sibling wing
LAYERS = [{"errors", "events", "state"}, {"data", "distributed"}, {"hf"}, {"args"}, {"runs"},
          {"observers", "search"}, {"training"}, {"report"}, {"cli"}, {"__init__", "__main__"}]


def imports() -> dict[str, set[str]]:
    """module -> the finch modules it imports (`finch.runs.checkpoint` style; a package stands for its wing)."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("finch", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("finch")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("finch"):
                assert node.level == 0, f"{name}: relative import"
                for alias in node.names:  # `from finch.runs import checkpoint` imports the module checkpoint
                    module = f"{node.module}.{alias.name}"
                    is_module = (ROOT.parent / module.replace(".", "/")).with_suffix(".py").exists()
                    targets.add(module if is_module else node.module)
        graph[name] = targets - {name}
    return graph


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if wing(module) in names)


def test_every_module_has_a_layer_and_imports_only_down_or_within_its_wing():
    graph = imports()
    assert len(graph) > 40 and {wing(m) for m in graph} <= set().union(*LAYERS)
    wrong = [f"{source} imports {target}" for source, targets in graph.items() for target in targets
             if wing(target) != wing(source) and layer(target) >= layer(source)]
    assert not wrong, "imports against docs/architecture.md's layers:\n" + "\n".join(sorted(wrong))


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """A circle of imports in `graph` (its modules in order, the first repeated at the end), or []."""
    done, path = set(), []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done or module not in graph:
            return []
        path.append(module)
        for target in sorted(graph[module]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(module)
        return []

    return next((cycle for module in sorted(graph) if (cycle := visit(module))), [])


def test_no_import_cycles_between_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]  # the check works
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    cycle = find_cycle(imports())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_public_api_imports_from_finch_as_before_the_wings():
    """Everything `finch` exported when it was one flat folder still imports from `finch` (the wings moved modules,
    not names), and `python -m finch` still finds the command."""
    import importlib

    public = ["EarlyStoppingCallback", "EvalPrediction", "MLflowCallback", "ProgressCallback", "TensorBoardCallback",
              "Trainer", "TrainerCallback", "TrainerControl", "TrainerState", "TrainingArguments", "WandbCallback",
              "__version__", "load_metric"]
    assert set(public) <= set(finch.__all__)  # later additions: Seq2SeqTrainer, Seq2SeqTrainingArguments
    for name in public:
        assert getattr(importlib.import_module("finch"), name) is not None
    from finch.events import TrainerCallback
    from finch.training.trainer import Trainer

    assert finch.TrainerCallback is TrainerCallback and finch.Trainer is Trainer


@pytest.mark.parametrize("module", ["finch", "finch.cli"])
def test_python_dash_m_runs_the_command(module, monkeypatch, capsys):
    """`python -m finch` (the README's) and `python -m finch.cli` (torchrun's relaunch) are the `finch` command."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module(module, run_name="__main__")
    assert stopped.value.code == 0 and "usage: finch" in capsys.readouterr().out
