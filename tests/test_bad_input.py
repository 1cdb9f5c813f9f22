"""Bad input never crashes, hangs or passes silently (issue 17): one class of mistake per test, several cases
each, every one answered by a ConfigError (exit status 2 from the CLI) that names the file, the dotted field and
an excerpt of the value, before any data, teacher or model is built."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.ablations.cli import app
from ablate.ablations.plan import plan_study
from ablate.ablations.scheduler import prepare
from ablate.core.config.base import ConfigError, excerpt
from ablate.core.config.loading import load_train_config, read_yaml

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefg", "bcdefgh", strict=True)]
)


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def dry_run(path: Path) -> list[str]:
    from ablate.ablations.plan import describe

    spec, base = prepare(path)
    return describe(plan_study(spec, base, str(path)))


def dry_run_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        dry_run(path)
    return str(caught.value)


# --- YAML reading: encodings, duplicate keys, aliases ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b"name: caf\xe9\n", 1),  # latin-1
        (b"name: x\nbudget: {trials: 2}\ndescription: \xff\xfe\n", 3),
        ("name: x\n".encode("utf-16"), 1),  # a UTF-16 file (its BOM is not UTF-8)
    ],
)
def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path, content: bytes, line: int) -> None:
    path = write(tmp_path, "study.yaml", content)
    message = dry_run_error(path)
    assert message.startswith(f"{path}: line {line}: not UTF-8 text")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    assert read_yaml(write(tmp_path, "c.yaml", "\ufeffseed: 3\n".encode())) == {"seed": 3}


@pytest.mark.parametrize(
    ("text", "where", "lines"),
    [
        ("name: x\nsearch_space: {}\nsearch_space: {optim.lr: {type: fixed, value: 0.1}}\n", "search_space", (3, 2)),
        ("name: x\nbudget:\n  trials: 2\n  parallel: 1\n  trials: 3\n", "budget.trials", (5, 3)),
        ("name: x\nbaselines:\n  - {a: 1, b: 2, a: 3}\n", "baselines.0.a", (3, 3)),
        ("name: x\n1: a\n0x1: b\n", "1", (3, 2)),  # equal once constructed
    ],
)
def test_duplicate_keys_are_an_error_at_every_level(tmp_path: Path, text: str, where: str, lines: tuple) -> None:
    path = write(tmp_path, "study.yaml", text)
    message = dry_run_error(path)
    assert message.startswith(f"{path}: {where}: duplicate key")
    assert f"at line {lines[0]} (first at line {lines[1]})" in message


def test_merge_keys_may_override_what_they_merge(tmp_path: Path) -> None:
    text = "defaults: &d {lr: 0.1, warmup_steps: 5}\noptim: {<<: *d, lr: 0.2}\n"
    assert read_yaml(write(tmp_path, "c.yaml", text))["optim"] == {"lr": 0.2, "warmup_steps": 5}


@pytest.mark.parametrize("field", ["name", "description", "overrides", "search_space"])
def test_an_alias_bomb_is_refused_in_milliseconds(tmp_path: Path, field: str) -> None:
    path = write(tmp_path, "study.yaml", f"{BILLION_LAUGHS}\n{field}: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n")
    started = time.perf_counter()
    message = dry_run_error(path)
    assert time.perf_counter() - started < 2
    assert "expands to more than" in message and message.startswith(f"{path}: line")


def test_a_recursive_alias_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    assert "refers to a value containing it" in dry_run_error(write(tmp_path, "a.yaml", "name: &n [x, *n]\n"))
    deep = "name: " + "[" * 3000 + "]" * 3000 + "\n"
    assert "nested too deeply" in dry_run_error(write(tmp_path, "b.yaml", deep))
    assert "invalid YAML" in dry_run_error(write(tmp_path, "c.yaml", b"name: x\x00\n"))


# --- excerpts: no message quotes a whole value --------------------------------------------------------------------


def test_messages_quote_short_excerpts_of_long_values(tmp_path: Path) -> None:
    long_name = "x" * 100_000
    cases = {
        "a.yaml": f"name: [{long_name}]\n",
        "b.yaml": f"name: x\nbudget: {{trials: '{long_name}'}}\n",
        "c.yaml": "name: x\nreplicates: {seeds: [" + ", ".join(["a"] * 20_000) + "]}\n",
        "d.yaml": f"name: x\noverrides: {{seed: [{', '.join(['1'] * 20_000)}]}}\n",
    }
    for name, text in cases.items():
        message = dry_run_error(write(tmp_path, name, text))
        assert len(message) < 2000, (name, len(message))
        assert len(message.splitlines()) <= 11
    assert excerpt(list(range(10**6))) == "[0, 1, 2, 3, ...]"


# --- search spaces Optuna would reject, and values every trial would fail -----------------------------------------


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("{type: int, low: 10, high: 100, step: 0}", "step: Input should be greater than or equal to 1"),
        ("{type: int, low: 10, high: 100, step: -5}", "step: Input should be greater than or equal to 1"),
        ("{type: int, low: 0, high: 100, log: true}", "log scale needs low >= 1 (got 0)"),
        ("{type: int, low: -3, high: 100, log: true}", "log scale needs low >= 1 (got -3)"),
        ("{type: int, low: 1, high: 100, log: true, step: 2}", "log scale samples every integer"),
        ("{type: float, low: -.inf, high: 100}", "low: Input should be a finite number"),
        ("{type: float, low: 1, high: .nan}", "high: Input should be a finite number"),
        ("{type: float, low: 100, high: 1000}", "train.steps: Input should be a valid integer"),
        ("{type: float, low: 100, high: 1000, log: true}", "train.steps: Input should be a valid integer"),
        ("{type: float, low: 0, high: 100}", "train.steps: Input should be"),  # 0.37 x 100 is whole: nudged
    ],
)
def test_search_ranges_optuna_or_the_field_rejects_fail_the_dry_run(tmp_path: Path, param: str, expected: str) -> None:
    path = write(tmp_path, "study.yaml", f"name: x\nsearch_space:\n  train.steps: {param}\n")
    message = dry_run_error(path)
    assert message.startswith(f"{path}: search_space.train.steps")
    assert expected in message


def test_multi_objective_studies_take_no_pruner(tmp_path: Path) -> None:
    objectives = "objectives: [{metric: eval/zeroshot/mean_top1}, {metric: model/params_total, direction: minimize}]"
    for pruner in ("hyperband", "median", "successive_halving"):
        path = write(tmp_path, f"{pruner}.yaml", f"name: x\n{objectives}\npruner: {{name: {pruner}}}\n")
        assert f"{path}: pruner.name: '{pruner}' with 2 objectives" in dry_run_error(path)
    plan = dry_run(write(tmp_path, "default.yaml", f"name: x\n{objectives}\n"))
    assert any(", pruner none" in line for line in plan)  # what the launch does: no pruner


def test_names_and_grids_the_launch_cannot_hold(tmp_path: Path) -> None:
    path = write(tmp_path, "long.yaml", f"name: {'a' * 300}\n")
    assert f"{path}: name: String should have at most 100 characters" in dry_run_error(path)
    space = "".join(f"  p{i}: {{type: categorical, choices: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}}\n" for i in range(6))
    path = write(tmp_path, "grid.yaml", f"name: x\nsampler: {{name: grid}}\nsearch_space:\n{space}")
    assert f"{path}: sampler.name: 'grid' over 1000000 points" in dry_run_error(path)


# --- errors are located: which file, which part of it -------------------------------------------------------------


def test_a_sub_key_under_a_value_names_file_and_location(tmp_path: Path) -> None:
    cases = {
        "overrides: {train.steps: 300, train.steps.max: 3}": "overrides.train.steps.max: train.steps is a value (300)",
        "search_space: {seed.value: {type: fixed, value: 1}}": "search_space.seed.value: seed is a value (0)",
        "baselines: {b: {overrides: {train.steps.max: 3}}}": "baselines.b.overrides.train.steps.max: train.steps is",
    }
    for index, (text, expected) in enumerate(cases.items()):
        path = write(tmp_path, f"s{index}.yaml", f"name: x\nbase: {{seed: 0, train: {{steps: 50}}}}\n{text}\n")
        assert dry_run_error(path).startswith(f"{path}: {expected}")
    config = write(tmp_path, "train.yaml", "train: {steps: 20}\n")
    with pytest.raises(ConfigError, match=r"train.yaml: --set train.steps.max: train.steps is a value \(20\)"):
        load_train_config(config, ["train.steps.max=3"])


def test_an_error_in_the_base_file_is_reported_against_the_base_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "optim: {lrr: 0.1}\ntrain: {steps: 50}\n")
    study = write(tmp_path, "study.yaml", "name: x\nbase: base.yaml\noverrides: {train.batch_size: -4}\n")
    message = dry_run_error(study)
    assert f"{base}: optim.lrr: unknown key (did you mean 'lr'?)" in message
    assert f"{study} (overrides): train.batch_size: Input should be greater than or equal to 2 (got -4)" in message
    inline = write(tmp_path, "inline.yaml", "name: x\nbase: {optim: {lrr: 0.1}}\n")
    assert dry_run_error(inline).startswith(f"{inline} (base): optim.lrr: unknown key")


# --- storage URLs: parsed with the spec, opened by the dry run ----------------------------------------------------


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("{optuna: 'postgresql://user@host:notaport/db'}", "storage.optuna: not a database URL"),
        ("{optuna: 'journal:'}", "storage.optuna: journal: needs a file path"),
        ("{optuna: 'sqlite:///'}", "storage.optuna: sqlite:/// needs a file path"),
        ("{optuna: 'oracle://x/y'}", "storage.optuna: expected one of"),
        ("{mlflow: 'http://'}", "storage.mlflow: http:// needs a host"),
        ("{mlflow: 'http://host:99999'}", "storage.mlflow: port '99999' is not a number"),
        ("{mlflow: 'htp://server:5000'}", "storage.mlflow: unknown scheme 'htp'"),
        ("{mlflow: 'mlruns'}", "storage.mlflow: unknown scheme 'mlruns'"),
    ],
)
def test_storage_urls_that_do_not_parse(tmp_path: Path, storage: str, expected: str) -> None:
    path = write(tmp_path, "study.yaml", f"name: x\nstorage: {storage}\n")
    assert dry_run_error(path).startswith(f"{path}: {expected}")


def test_tracking_uris_are_checked_in_train_configs_too(tmp_path: Path) -> None:
    for uri, expected in [("htp://x", "unknown scheme 'htp'"), ("https://", "needs a host"), ("sqlite:///", "path")]:
        with pytest.raises(ConfigError, match=f"tracking.uri: .*{expected}"):
            load_train_config(None, [f"tracking.uri={uri}"])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once it is closed


def test_storages_that_cannot_be_opened_fail_the_dry_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    write(tmp_path, "notes.txt", "not a database")
    write(tmp_path, "afile", "x")
    port = closed_port()
    cases = {
        "storage: {optuna: 'journal:folder'}": "is a folder",
        f"storage: {{optuna: 'sqlite:///{tmp_path}/notes.txt'}}": "cannot open it as SQLite",
        f"storage: {{optuna: 'journal:{tmp_path}/notes.txt'}}": "is not an Optuna journal",
        f"storage: {{mlflow: 'sqlite:///{tmp_path}/afile/mlflow.db'}}": "is a file, not a folder",
        f"runs_root: {tmp_path}/afile/runs": "runs_root (default storage.optuna)",
        f"storage: {{mlflow: 'http://127.0.0.1:{port}'}}": f"cannot reach 127.0.0.1:{port}",
        f"storage: {{optuna: 'postgresql+psycopg2://nobody@127.0.0.1:{port}/db'}}": "cannot connect",
        f"storage: {{optuna: 'postgresql://nobody@127.0.0.1:{port}/db'}}": "write postgresql+psycopg2://",
    }
    monkeypatch.chdir(tmp_path)  # `journal:folder` is relative to where the launch runs
    for index, (text, expected) in enumerate(cases.items()):
        path = write(tmp_path, f"s{index}.yaml", f"name: x\n{text}\n")
        started = time.perf_counter()
        message = dry_run_error(path)
        assert expected in message, message
        assert time.perf_counter() - started < 10


def test_an_unanswering_server_is_reported_within_the_deadline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ablate.ablations import storage_check

    monkeypatch.setattr(storage_check, "REMOTE_DEADLINE_S", 0.5)
    monkeypatch.setattr(storage_check, "_reach_server", lambda url: time.sleep(30))
    path = write(tmp_path, "study.yaml", "name: x\nstorage: {mlflow: 'http://10.255.255.1:5000'}\n")
    started = time.perf_counter()
    assert "storage.mlflow: http://10.255.255.1:5000: no answer within" in dry_run_error(path)
    assert time.perf_counter() - started < 5


# --- the CLI: every user error is one message and exit status 2 ---------------------------------------------------


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_runtime_checks_are_user_errors_in_the_cli(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        code, output = run_cli("train", "--set", "train.device=cuda")
        assert code == 2 and "train.device: 'cuda' requested but no CUDA device is available" in output
        study = write(tmp_path, "cuda.yaml", "name: x\noverrides: {train.device: cuda}\n")
        code, output = run_cli("launch", "--dry-run", str(study))
        assert code == 2 and "base: train.device: 'cuda' requested" in output
        # a SLURM login node may lack the compute nodes' GPUs: there the device is not checked
        on_slurm = write(tmp_path, "slurm.yaml", "name: x\noverrides: {train.device: cuda}\nexecutor: {kind: slurm}\n")
        code, output = run_cli("launch", "--dry-run", str(on_slurm))
        assert code == 0, output
    code, output = run_cli("train", "--set", "tracking.uri=htp://server:5000")
    assert code == 2 and "tracking.uri: unknown scheme 'htp'" in output
    code, output = run_cli("train", str(write(tmp_path, "latin.yaml", b"seed: \xe9\n")))
    assert code == 2 and "not UTF-8 text" in output


def test_study_text_is_printed_as_text_not_markup(tmp_path: Path) -> None:
    study = write(
        tmp_path,
        "s.yaml",
        "name: x\ndescription: 'bad [/x] tag'\nsearch_space:\n  seed: {type: int, low: 0, high: 3}\n",
    )
    code, output = run_cli("launch", "--dry-run", str(study))
    assert code == 0 and "bad [/x] tag" in output and "[int]" in output
    broken = write(tmp_path, "b.yaml", "name: x\nbudget: {trials: '[/bold] [red]'}\n")
    code, output = run_cli("launch", "--dry-run", str(broken))
    assert code == 2 and "'[/bold] [red]'" in output


def test_config_only_checks_run_before_any_data_or_teacher_is_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A missing reinforcement folder or data root fails before the bundled benchmark is generated or a teacher
    trained (both would take minutes on a cold cache)."""
    from ablate.core.teachers import bundled
    from ablate.core.training import trainer

    def built(*args: object, **kwargs: object) -> None:
        raise AssertionError("built data, teachers or a model before the config-only checks")

    for module, name in [(trainer, "resolve_data_root"), (trainer, "build_model"), (bundled, "train_teachers")]:
        monkeypatch.setattr(module, name, built)
    missing = tmp_path / "missing"
    for overrides in (
        ["data.reinforcement=" + str(missing), "loss.lambda=1.0"],
        ["data.reinforcement=" + str(missing), "loss.lambda=1.0", "teachers.mode=online", "teachers.members=bundled"],
        ["data.root=" + str(missing)],
    ):
        code, output = run_cli("train", *[arg for item in overrides for arg in ("--set", item)])
        assert code == 2, output
        assert "data.reinforcement" in output or "data.root" in output


def test_path_problems_and_bad_uris_in_other_verbs_are_user_errors(tmp_path: Path) -> None:
    """`data shapes --out FILE` raised NotADirectoryError; `report --tracking-uri htp://x` reached MLflow."""
    afile = write(tmp_path, "afile", "x")
    code, output = run_cli("data", "shapes", "--out", str(afile), "--train", "4", "--val", "4")
    assert code == 2 and "Not a directory" in output
    code, output = run_cli("report", "nosuch", "--tracking-uri", "htp://x", "--runs-root", str(tmp_path))
    assert code == 2 and "--tracking-uri htp://x: unknown scheme 'htp'" in output
    code, output = run_cli("status", "nosuch", "--runs-root", str(tmp_path))
    assert code == 2 and "nosuch" in output


def test_a_long_path_in_an_error_is_printed_whole_where_no_terminal_is(tmp_path: Path) -> None:
    """CI and SLURM logs are not terminals: rich broke error lines at 80 columns, splitting the path inside."""
    missing = tmp_path / ("a-folder-name-long-enough-to-cross-eighty-columns-" * 2) / "config.yaml"
    result = CliRunner().invoke(app, ["train", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in result.output, result.output
