"""`eval.tasks`: evaluation suites beside the training data (ImageFolder, clip_benchmark webdatasets, a manifest's
retrieval split), the cached zero-shot classifiers, the dry-run checks and `ablate eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
import yaml
from eval_task_fixtures import (
    COLOURS,
    encoded,
    picture,
    write_clip_benchmark,
    write_clip_benchmark_retrieval,
    write_imagefolder,
)
from mlflow.tracking import MlflowClient
from open_clip import zero_shot_metadata
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from train_helpers import fast_config
from typer.testing import CliRunner

from ablate.ablations.cli import app
from ablate.core.config.base import ConfigError
from ablate.core.config.loading import validate_train_config
from ablate.core.config.sections import EvalConfig
from ablate.core.data.dataset import EvalDataset, model_view
from ablate.core.data.manifest import load_manifest
from ablate.core.evaluation.classifier import ZeroShotClassifiers, weights_version
from ablate.core.evaluation.evaluate import evaluate, recall_at_k
from ablate.core.evaluation.prompts import canonical_template, render, resolve_classnames, resolve_templates
from ablate.core.evaluation.standalone import evaluate_saved
from ablate.core.evaluation.suite import EvaluationSuite, multi_caption_recall, resolve_tasks
from ablate.core.models.factory import create_model
from ablate.core.training.trainer import train

CPU = torch.device("cpu")
TEMPLATES = ["a photo of a {c}.", "a {c} thing."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-tasks")
    imagefolder, _ = write_imagefolder(root / "imagenet")
    return {
        "imagefolder": imagefolder,
        "clip_benchmark": write_clip_benchmark(
            root / "wds_colours", [0, 1, 2, 2, 1, 0, 1, 2, 0, 1], list(COLOURS), TEMPLATES
        ),
        "retrieval": write_clip_benchmark_retrieval(
            root / "wds_captions",  # distinct captions: no ties between images of one colour
            [
                [f"a red one {i}", f"red {i}"]
                if i % 3 == 0
                else [f"green {i}"]
                if i % 3 == 1
                else [f"blue {i}", f"a blue one {i}", f"bluish {i}"]
                for i in range(9)
            ],
        ),
    }


def task_list(folders: dict[str, Path]) -> list[dict]:
    return [
        {
            "name": "imagenet",
            "format": "imagefolder",
            "path": str(folders["imagefolder"]),
            "classnames": list(COLOURS),
            "templates": "simple_imagenet",
        },
        {"name": "colours", "format": "clip_benchmark", "path": str(folders["clip_benchmark"])},
        {"name": "captions", "kind": "retrieval", "format": "clip_benchmark", "path": str(folders["retrieval"])},
    ]


def test_templates_in_every_spelling_render_as_open_clip_s() -> None:
    assert (
        canonical_template("a photo of a {}.", "t")
        == canonical_template("a photo of a {c}.", "t")
        == "a photo of a {c}."
    )
    assert render(canonical_template("{c} in {{braces}}", "t"), "cat") == "cat in {braces}"
    builtin = resolve_templates("openai_imagenet", None, "t")
    assert [render(t, "goldfish") for t in builtin] == [
        f("goldfish") for f in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES
    ]
    assert len(builtin) == 80
    with pytest.raises(ConfigError, match=r"eval.tasks\[0\].templates\[1\]: 'a \{x\}' needs exactly one"):
        resolve_templates(["a {c}", "a {x}"], None, "eval.tasks[0].templates")
    names = resolve_classnames("imagenet1k", None, "c")
    assert names == list(zero_shot_metadata.IMAGENET_CLASSNAMES)
    assert [i for i, n in enumerate(names) if n == "missile"] == [657, 744]  # kept apart: labels are indices


def test_multi_caption_recall_ranks_like_clip_benchmark() -> None:
    images = torch.eye(3)
    # captions 0,1 belong to image 0; caption 2 to image 1; caption 3 to image 2
    texts = torch.tensor([[0.2, 0.9, 0.0], [0.8, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    owner = torch.tensor([0, 0, 1, 2])
    # i2t: image 0's best own caption (0.8) is first; image 1's (1.0) first; image 2's first -> R@1 = 1.
    # t2i: caption 0 scores image 1 (0.9) above its own image 0 (0.2): rank 1; the others rank 0.
    recall = multi_caption_recall(images, texts, owner, ks=(1, 2))
    assert recall == {"i2t_r1": 1.0, "t2i_r1": 0.75, "i2t_r2": 1.0, "t2i_r2": 1.0}
    features = F.normalize(torch.randn(2, 12, 8), dim=-1)  # one caption each: the pessimistic square recall
    square = recall_at_k(features[0] @ features[1].T, ks=(1, 5))
    general = multi_caption_recall(features[0], features[1], torch.arange(12), ks=(1, 5))
    assert general == {f"i2t_r{k}": v for k, v in square.items()} | {
        f"t2i_r{k}": v for k, v in recall_at_k(features[1] @ features[0].T, ks=(1, 5)).items()
    }


def test_classifier_is_open_clip_s_mean_and_is_cached_by_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    names, templates = ["red", "green", "blue"], [canonical_template(t, "t") for t in TEMPLATES]
    cache = ZeroShotClassifiers(tmp_path / "zero_shot")
    version = weights_version(model.text)
    weights = cache.get(model, version, names, templates, CPU)
    tokenizer = SimpleTokenizer(context_length=model.inputs.context_length)
    with torch.no_grad():  # open_clip's build_zero_shot_classifier, one class at a time
        expected = torch.stack(
            [
                F.normalize(model.encode_text(tokenizer([render(t, n) for t in templates])).mean(0), dim=-1)
                for n in names
            ]
        )
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=0)
    assert cache.get(model, version, names, templates, CPU) is weights and cache.built == 1

    reloaded = ZeroShotClassifiers(tmp_path / "zero_shot")  # another process, same frozen model: read from disk
    assert torch.equal(reloaded.get(model, weights_version(model.text), names, templates, CPU), weights)
    assert reloaded.built == 0

    tokens = cache.tokenized(names, templates, model.inputs.context_length)
    with torch.no_grad():
        model.text.text_projection.add_(0.5)  # the text tower trained: a new version, the tokens still hold
    changed = weights_version(model.text)
    assert changed != version
    assert not torch.allclose(cache.get(model, changed, names, templates, CPU), weights)
    assert cache.built == 2 and cache.tokenized(names, templates, model.inputs.context_length) is tokens
    cache.keep_only(changed)  # what the suite does at each evaluation: old weights' classifiers go
    assert len(cache.classifiers) == 1


def test_suite_scores_match_a_hand_computation(folders: dict[str, Path]) -> None:
    torch.manual_seed(3)
    model = create_model("tiny").eval()
    twin = task_list(folders)[0] | {
        "name": "imagenet_twin",
        "templates": resolve_templates("simple_imagenet", None, "t"),
    }
    config = EvalConfig.model_validate({"batch_size": 4, "tasks": [*task_list(folders), twin]})
    suite = EvaluationSuite(config, None, model.inputs)
    metrics = suite(model, CPU)
    assert suite.classifiers.built == 2  # the twin shares names and templates (spelt out): one classifier
    assert metrics["eval/zeroshot/imagenet_twin/top1"] == metrics["eval/zeroshot/imagenet/top1"]

    files = sorted(folders["imagefolder"].glob("*/*.JPEG"))
    labels = torch.tensor([list(COLOURS).index(name) for name in ["red"] * 3 + ["green"] * 3 + ["blue"] * 3])
    with torch.no_grad():
        images = model.encode_image(
            torch.stack([model_view(Image.open(f).convert("RGB"), model.inputs) for f in files])
        )
        classes = suite.classifiers.get(
            model, weights_version(model.text), list(COLOURS), resolve_templates("simple_imagenet", None, "t"), CPU
        )
    order = (images @ classes.T).argsort(dim=1, descending=True)
    assert metrics["eval/zeroshot/imagenet/top1"] == pytest.approx((order[:, 0] == labels).float().mean().item())
    assert metrics["eval/zeroshot/imagenet/top5"] == 1.0  # 3 classes: always within the top 5
    for name in ("colours/top1", "colours/top5", "captions/i2t_r1", "captions/t2i_r5"):
        key = f"eval/{'retrieval' if 'captions' in name else 'zeroshot'}/{name}"
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["eval/zeroshot/mean_top1"] == pytest.approx(
        (2 * metrics["eval/zeroshot/imagenet/top1"] + metrics["eval/zeroshot/colours/top1"]) / 3
    )


def _manifest_without_captions(root: Path) -> Path:
    """A manifest whose retrieval split is `test`: integer labels into repeated names, some samples lack txt."""
    (root / "shards").mkdir(parents=True)
    for split in ("train", "test"):
        with wds.TarWriter(str(root / "shards" / f"{split}.tar")) as sink:
            for index in range(6):
                sample = {
                    "__key__": f"{split}{index}",
                    "png": encoded(picture(list(COLOURS.values())[index % 3], index), "PNG"),
                    "json": json.dumps({"label": index % 3}),
                }
                if index % 2 == 0:
                    sample["txt"] = f"a {list(COLOURS)[index % 3]} square"
                sink.write(sample)
    manifest = {
        "name": "own",
        "splits": {"train": {"shards": ["shards/train.tar"]}, "test": {"shards": ["shards/test.tar"]}},
        "zero_shot": {
            "colour": {"classnames": ["red", "red", "blue"], "templates": ["a {c} thing."], "label_key": "label"}
        },
        "retrieval": {"split": "test", "caption": "txt"},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_manifest_split_without_captions_and_with_integer_labels(tmp_path: Path) -> None:
    manifest = load_manifest(_manifest_without_captions(tmp_path))
    model = create_model("tiny")
    dataset = EvalDataset(manifest, model.inputs, "test", None)
    assert [int(dataset[i][2][0]) for i in range(6)] == [0, 1, 2, 0, 1, 2]  # 'red' twice, told apart by index
    metrics = evaluate(model, dataset, 4, CPU)  # samples 1, 3, 5 have no txt: zero-shot only
    assert set(metrics) >= {"eval/zeroshot/colour/top1", "eval/retrieval/i2t_r1"}
    config = EvalConfig.model_validate({"tasks": [{"name": "held", "kind": "retrieval", "format": "manifest"}]})
    suite = EvaluationSuite(config, manifest, model.inputs)
    assert suite.held_out.shards.paths == [tmp_path / "shards" / "test.tar"]  # retrieval.split is honoured
    assert suite.tasks[0][0].split == "test"
    assert "eval/retrieval/held/t2i_r1" in suite(model, CPU)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"path": "/no/such/folder"}, r"eval.tasks\[0\].path: /no/such/folder: no such folder"),
        ({"classnames": ["red", "green"]}, r"eval.tasks\[0\].classnames: 2 names but .* has 3 class folders"),
        (
            {"classnames": "imagenet"},
            r"eval.tasks\[0\].classnames: 'imagenet' is neither a built-in name \(imagenet1k\)",
        ),
        ({"templates": ["a photo of {x}"]}, r"eval.tasks\[0\].templates\[0\]"),
    ],
)
def test_bad_imagefolder_tasks_name_the_field(folders: dict[str, Path], change: dict, message: str) -> None:
    task = EvalConfig.model_validate({"tasks": [task_list(folders)[0] | change]}).tasks
    with pytest.raises(ConfigError, match=message):
        resolve_tasks(task, None)


def test_clip_benchmark_labels_must_be_integers(tmp_path: Path) -> None:
    root = write_clip_benchmark(tmp_path / "named", [0, 1], list(COLOURS), TEMPLATES)
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        sink.write({"__key__": "s0000000", "webp": encoded(picture((1, 2, 3), 0), "webp"), "cls": b"red"})
    (root / "test" / "nshards.txt").write_text("1\n")
    tasks = EvalConfig.model_validate({"tasks": [{"name": "x", "format": "clip_benchmark", "path": str(root)}]}).tasks
    with pytest.raises(ConfigError, match=r"eval.tasks\[0\].path: .*0.tar: sample s0000000 has cls 'red'"):
        resolve_tasks(tasks, None)


def test_launch_dry_run_checks_eval_tasks(tmp_path: Path, small_shapes: Path) -> None:
    tree = fast_config(
        tmp_path,
        small_shapes,
        {
            "eval.tasks": [
                {"name": "in", "format": "imagefolder", "path": str(tmp_path / "missing"), "classnames": "imagenet1k"}
            ]
        },
    )
    study = {"name": "s", "base": tree, "objectives": [{"metric": "eval/zeroshot/in/top1"}], "budget": {"trials": 1}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(app, ["launch", str(path), "--dry-run"])
    text = result.output
    assert result.exit_code == 2, text
    assert f"study.yaml: eval.tasks[0].path: {tmp_path / 'missing'}: no such folder" in text
    assert "Traceback" not in text


@pytest.mark.slow
def test_tasks_evaluate_in_training_and_ablate_eval_reproduces_them(
    tmp_path: Path, small_shapes: Path, folders: dict[str, Path]
) -> None:
    tasks = [*task_list(folders), {"name": "held", "kind": "retrieval", "format": "manifest"}]
    overrides = {
        "train.steps": 6,
        "train.eval_every": 6,
        "train.checkpoint_every": 6,
        "optim.warmup_steps": 1,
        "eval.tasks": tasks,
        "eval.batch_size": 8,
    }
    config = validate_train_config(fast_config(tmp_path, small_shapes, overrides), "test")
    result = train(config)
    in_training = {k: v for k, v in result.metrics.items() if k.startswith("eval/")}
    assert {
        "eval/zeroshot/imagenet/top1",
        "eval/zeroshot/colours/top5",
        "eval/retrieval/captions/i2t_r1",
        "eval/retrieval/held/t2i_r5",
        "eval/zeroshot/shape/top1",
    } <= set(in_training)

    output = CliRunner().invoke(app, ["eval", config.run_dir])
    assert output.exit_code == 0, output.output
    client = MlflowClient(tracking_uri=config.tracking.uri)
    for key, value in in_training.items():
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == [6, 6], key  # the trainer's and ablate eval's, at the checkpoint's step
        assert history[1].value == pytest.approx(value, abs=1e-6), key

    exported = tmp_path / "exported"
    assert CliRunner().invoke(app, ["export", config.run_dir, "--out", str(exported), "--no-program"]).exit_code == 0
    again = evaluate_saved(exported / "model_reparam.pt", log=False)  # the export finds its run's evaluation
    assert again.metrics == pytest.approx(in_training, abs=1e-6)

    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text(
        yaml.safe_dump({"tasks": [task_list(folders)[0] | {"name": "again", "classnames": "imagenet1k"}]})
    )
    bad = CliRunner().invoke(app, ["eval", config.run_dir, "--tasks", str(tasks_file), "--no-log"])
    text = " ".join(bad.output.split())
    assert bad.exit_code == 2 and "eval.tasks[0].classnames: 1000 names but" in text and "Traceback" not in text
