"""The one home of each policy: failure records, strict atomic JSON, atomic model saves, settings checks, the
CLI's exit codes and its logging, and the package layout (data flows one way; inference never imports training)."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deep_speaker import atomic
from deep_speaker.cli import EXIT_CRASH, EXIT_OK, EXIT_USAGE, run_command
from deep_speaker.data.audio import AudioError, apply_trim
from deep_speaker.data.corpus import scan_corpus
from deep_speaker.errors import DeepSpeakerError, Failure, InputError, failures_message
from deep_speaker.settings import check_choice, settings_difference

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "deep_speaker"


def test_failure_record_round_trips_and_orders_by_path():
    failures = [Failure("b.wav", "silent"), Failure("a.wav", "empty file (0 bytes)")]
    assert sorted(failures)[0].path == "a.wav"
    assert str(failures[0]) == "b.wav: silent"
    assert [Failure.from_dict(f.to_dict()) for f in failures] == failures
    assert failures_message(failures * 3, "file(s) failed", shown=2) == \
        "6 file(s) failed: b.wav: silent; a.wav: empty file (0 bytes) (and 4 more)"


def test_input_errors_carry_their_failure_and_are_user_errors():
    error = AudioError("x.flac", "no audio samples")
    assert isinstance(error, InputError) and isinstance(error, DeepSpeakerError)
    assert error.failure == Failure("x.flac", "no audio samples") and str(error) == "x.flac: no audio samples"


def test_corpus_rejections_are_failure_records(tmp_path):
    (tmp_path / "loose.wav").write_bytes(b"")
    (tmp_path / "spk").mkdir()
    (tmp_path / "spk" / "a.wav").write_bytes(b"")
    _, rejected, _ = scan_corpus(tmp_path, layout="folders")
    assert rejected == [Failure(str(tmp_path / "loose.wav"),
                                "not inside a speaker folder (expected <speaker_id>/<audio file>)")]


def test_write_json_is_strict_and_leaves_nothing_when_refused(tmp_path):
    path = tmp_path / "report.json"
    atomic.write_json(path, {"eer": 0.05, "name": "Fréchet"})
    assert json.loads(path.read_text(encoding="utf8")) == {"eer": 0.05, "name": "Fréchet"}
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            atomic.write_json(path, {"eer": bad})
    assert json.loads(path.read_text(encoding="utf8"))["eer"] == 0.05  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left behind


def test_atomic_files_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    path = atomic.write_json(tmp_path / "shared.json", [1])
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_save_model_is_atomic_and_cleans_up_after_a_failed_save(tmp_path):
    class Model:
        def __init__(self, fail: bool):
            self.fail = fail

        def save(self, path):
            assert str(path).endswith(".keras")  # Keras picks the format by suffix
            Path(path).write_bytes(b"half")
            if self.fail:
                raise OSError(28, "No space left on device")
            Path(path).write_bytes(b"whole model")

    target = tmp_path / "best.keras"
    atomic.save_model(Model(fail=False), target)
    with pytest.raises(OSError):
        atomic.save_model(Model(fail=True), target)
    assert target.read_bytes() == b"whole model"
    assert [p.name for p in tmp_path.iterdir()] == ["best.keras"]


def test_settings_checks():
    assert check_choice("vad", ("percentile", "vad"), "trim mode") == "vad"
    with pytest.raises(DeepSpeakerError, match=r"^unknown trim mode 'loud'; choose one of percentile, vad$"):
        check_choice("loud", ("percentile", "vad"), "trim mode")
    assert settings_difference({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == "b: 2 vs 3, c: None vs 4"
    assert settings_difference({"a": 1}, {"a": 1}) == ""


def test_the_trim_check_is_one_user_error_everywhere():
    with pytest.raises(DeepSpeakerError, match="unknown trim mode 'loud'"):
        apply_trim(np.ones(10, np.float32), "loud")


def _args(**kwargs) -> argparse.Namespace:
    return argparse.Namespace(verbose=False, **kwargs)


def test_exit_codes_user_error_2_crash_3(capsys):
    def user_error(args):
        raise DeepSpeakerError("model not found: x.keras")

    def crash(args):
        raise KeyError("a bug\nsecond line")

    assert run_command(lambda a: EXIT_OK, _args()) == EXIT_OK
    assert run_command(user_error, _args()) == EXIT_USAGE
    assert capsys.readouterr().err.strip().endswith("error: model not found: x.keras")
    assert run_command(crash, _args()) == EXIT_CRASH
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error: KeyError" in err and "--verbose" in err
    with pytest.raises(KeyError):  # --verbose: the traceback
        run_command(crash, argparse.Namespace(verbose=True))


def test_library_log_lines_reach_the_cli_stderr(capsys):
    def command(args):
        logging.getLogger("deep_speaker.some.module").info("resuming at step 12")
        logging.getLogger("deep_speaker.some.module").debug("only with --verbose")
        return EXIT_OK

    run_command(command, _args())
    assert capsys.readouterr().err.splitlines() == ["resuming at step 12"]


def test_a_user_error_in_a_real_process_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "deep_speaker", "cache", "info", "/nonexistent/cache"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USAGE and len(result.stderr.strip().splitlines()) == 1


def _imports(path: Path) -> set[str]:
    """Absolute names of the deep_speaker modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if path.name == "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {n for n in found if n.startswith("deep_speaker")}


LAYERS = ["data", "model", "train", "encoders", "metrics", "eval"]
# Which earlier layers each may import (data flows one way; metrics is pure math beside the data layer).
ALLOWED = {"data": set(), "metrics": {"data"}, "model": {"data"}, "train": {"data", "model", "metrics"},
           "encoders": {"data", "model", "metrics"}, "eval": {"data", "model", "metrics", "encoders"}}


@pytest.mark.parametrize("layer", LAYERS)
def test_data_flows_one_way(layer):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        used = {name.split(".")[1] for name in _imports(path) if name.count(".") >= 1}
        foreign = used & set(LAYERS) - ALLOWED[layer] - {layer}
        assert not foreign, f"{path.relative_to(REPO)} imports the {', '.join(sorted(foreign))} layer"
        assert not used & {"cli", "pipeline"}, f"{path.relative_to(REPO)} imports the CLI or the main job"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if path.name == "__init__.py" else parts)


def _runtime_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a file at any depth (inside functions too), but those of ``if TYPE_CHECKING:``
    blocks, which never run."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _folder_graph(folder: Path) -> dict[str, set[str]]:
    """The modules of one folder (its ``__init__`` as the package) and which of them each imports."""
    modules = {_module_name(path): path for path in sorted(folder.glob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(path):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # ``from . import plots`` imports the module plots, not the package
                targets.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
        graph[name] = (targets & set(modules)) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The groups of modules that import each other, directly or round a loop (strongly connected components of more
    than one module; Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(frozenset(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


@pytest.mark.parametrize("folder", sorted({p.parent.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")}))
def test_no_import_cycle_within_a_folder(folder):
    """The modules of one folder import each other one way (lazy imports inside functions count: they run too), so
    each can be read, tested and changed from the bottom up."""
    cycles = _cycles(_folder_graph(REPO / folder))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(cycle)) for cycle in cycles)


def test_the_cycle_check_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    folder = tmp_path / "deep_speaker" / "pkg"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "a.py").write_text("from .b import x\n")
    (folder / "b.py").write_text("def f():\n    from . import a\n")
    (folder / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert _cycles(_folder_graph(folder)) == [frozenset({"deep_speaker.pkg.a", "deep_speaker.pkg.b"})]
    assert _folder_graph(folder)["deep_speaker.pkg.c"] == set()


def test_environment_errors_are_one_line_naming_the_path(capsys, tmp_path):
    def disk_full(args):
        raise OSError(28, "No space left on device", str(tmp_path / "report.json"))

    def into_a_folder(args):
        atomic.write_json(tmp_path, {"a": 1})  # the output path is an existing folder

    assert run_command(disk_full, _args()) == EXIT_USAGE
    assert capsys.readouterr().err.strip().endswith(f"error: {tmp_path / 'report.json'}: No space left on device")
    assert run_command(into_a_folder, _args()) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err


def test_a_closed_pipe_ends_quietly():
    code = ("import sys; from deep_speaker.cli import run_command; import argparse\n"
            "def talk(args):\n    for i in range(100000): print('line', i)\n    return 0\n"
            "sys.exit(run_command(talk, argparse.Namespace(verbose=False)))")
    reader = subprocess.run(f"{sys.executable} -c \"{code}\" | head -1", shell=True, capture_output=True, text=True,
                            timeout=120)
    assert reader.stdout == "line 0\n" and "Traceback" not in reader.stderr and reader.stderr.strip() == ""
