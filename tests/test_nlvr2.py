"""NLVR2-style visual reasoning data: bridge-shapes statements, the NLVR2 loader, the metric and the example."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest


def test_bridge_shapes_statements_are_decided_by_the_images():
    from modeling_bridge.data import load_bridge_shapes_nlvr2, parse_shapes_caption
    from modeling_bridge.data.shapes import load_bridge_shapes

    data = load_bridge_shapes_nlvr2(num_train=40)
    scenes = load_bridge_shapes(num_train=40)
    test = data["test"]
    # 72 twin pairs x 2 binding statements (one per twin's caption) x 2 orders + 144 scenes x 1 count statement x 2
    assert len(test) == 576 and data["test"].features["label"].names == ["False", "True"]
    assert sorted(set(test["statement_type"])) == ["binding", "count"]
    captions = scenes["test"]["caption"]
    for row in test.select(range(0, 576, 7)):
        left, right = (int(part) for part in row["identifier"].split("-")[2:])
        words = row["sentence"].split()
        if row["statement_type"] == "binding":  # "the left image shows <a caption>", the other image its twin
            assert captions[left] != captions[right] and scenes["test"][left]["twin"] == right
            named = captions[left] if words[1] == "left" else captions[right]
            assert row["label"] == (" ".join(words[4:]) == named)
        else:  # "the left image has more circles than the right one"
            left, right = parse_shapes_caption(captions[left]).objects, parse_shapes_caption(captions[right]).objects
            named, other = (left, right) if words[1] == "left" else (right, left)
            shape = words[5][:-1]
            assert row["label"] == (sum(s == shape for _, s in named) > sum(s == shape for _, s in other))
    # each group: one sentence with both orders of its pair; binding labels are balanced in every group
    groups = {}
    for row in test.select_columns(["group", "label", "sentence", "statement_type"]):
        groups.setdefault(row["group"], []).append(row)
    assert all(len(g) == 2 and g[0]["sentence"].split()[5] == g[1]["sentence"].split()[5] for g in groups.values())
    assert all(sorted(r["label"] for r in g) == [0, 1] for g in groups.values() if g[0]["statement_type"] == "binding")
    assert 0.3 < np.mean(data["train"]["label"]) < 0.7
    assert load_bridge_shapes_nlvr2(num_train=40)["test"]["identifier"] == test["identifier"]  # deterministic


def test_nlvr2_loader_reads_the_official_format_and_names_a_missing_image(tmp_path):
    from PIL import Image

    from modeling_bridge.data import load_nlvr2

    (tmp_path / "7").mkdir()
    for name in ("7/train-10171-0-img0.png", "7/train-10171-0-img1.png", "dev-850-0-img0.png", "dev-850-0-img1.png"):
        Image.new("RGB", (8, 6)).save(tmp_path / name)
    records = [
        {"identifier": "train-10171-0-0", "sentence": "One image has two dogs.", "label": "True", "directory": "7"},
        {"identifier": "dev-850-0-1", "sentence": "There are birds.", "label": "False"},
    ]
    (tmp_path / "records.json").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    rows = load_nlvr2(tmp_path / "records.json", str(tmp_path))
    assert rows["label"] == [1, 0] and rows["sentence"] == ["One image has two dogs.", "There are birds."]
    assert rows["group"] == ["train-10171-0", "dev-850-1"] and rows[0]["right_image"].size == (8, 6)
    (tmp_path / "dev-850-0-img1.png").unlink()
    with pytest.raises(FileNotFoundError, match="NLVR2 record 'dev-850-0-1': its right image dev-850-0-img1.png is"):
        load_nlvr2(tmp_path / "records.json", str(tmp_path))
    (tmp_path / "records.json").write_text('{"sentence": "no identifier"}\n')
    with pytest.raises(
        ValueError, match=r"records\.json, line 1: no .identifier. field \(the fields are \[.sentence.\]\)"
    ):
        load_nlvr2(tmp_path / "records.json", str(tmp_path))


def test_nlvr2_metric_module_matches_hand_computed_values():
    import evaluate

    metric = evaluate.load(str(Path(__file__).resolve().parents[1] / "metrics" / "bridge_nlvr2"))
    got = metric.compute(
        predictions=[1, 0, 1, 1, 0],
        references=[1, 0, 0, 1, 1],
        groups=["a", "a", "b", "b", "c"],
        statement_types=["binding", "binding", "count", "count", "count"],
    )
    # correct: T T F T F -> 3/5; groups: a all correct, b not, c not -> 1/3
    assert got == {
        "accuracy": pytest.approx(0.6),
        "num_statements": 5,
        "consistency": pytest.approx(1 / 3),
        "num_groups": 3,
        "accuracy_binding": 1.0,
        "accuracy_count": pytest.approx(1 / 3),
    }
    with pytest.raises(ValueError, match="references must be 0"):
        metric.compute(predictions=[1], references=[-1])


def test_nlvr2_example_runs_end_to_end(processor, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import run_nlvr2

    from conftest import make_model

    make_model().save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    argv = [
        "--model_name_or_path", str(tmp_path / "base"), "--output_dir", str(tmp_path / "out"),
        "--shapes_num_train", "16", "--max_eval_samples", "12", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
        "--save_strategy", "no",
    ]  # fmt: skip
    results = run_nlvr2.main(argv)
    assert results["num_statements"] == 12 and 0.0 <= results["accuracy"] <= 1.0
    assert 0.0 <= results["consistency"] <= results["accuracy"] + 1e-9 and "accuracy_binding" in results
    saved = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert saved["architectures"] == ["BridgeForVisualReasoning"] and saved["id2label"] == {"0": "False", "1": "True"}
    assert json.loads((tmp_path / "out" / "nlvr2_results.json").read_text()) == results
    with pytest.raises(ValueError, match="--dataset nlvr2 needs --train_file, --eval_file"):
        run_nlvr2.main([*argv[:4], "--dataset", "nlvr2"])
