"""BridgeForQuestionAnswering: VQA as classification over an answer vocabulary, on each pair's fused embeddings."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForVisualQuestionAnswering

from conftest import make_config, random_inputs, run_as_hub_code
from modeling_bridge import BridgeForPreTraining, BridgeForQuestionAnswering


ANSWERS = ["red", "blue", "circle", "square", "yes", "no"]


def _model(seed=0):
    torch.manual_seed(seed)
    config = make_config(id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)})
    return BridgeForQuestionAnswering(config)


def test_vqa_forward_backward_and_soft_target_loss():
    model = _model().train()
    pixel_values, input_ids, attention_mask = random_inputs(3, 3)
    labels = torch.zeros(3, len(ANSWERS))
    labels[0, 0], labels[1, 4], labels[2, 2], labels[2, 3] = 1.0, 1.0, 0.6, 0.3  # soft VQA scores
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, labels=labels)
    assert out.logits.shape == (3, len(ANSWERS))
    expected = F.binary_cross_entropy_with_logits(out.logits, labels, reduction="sum") / 3  # sum over answers
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    for name in ("classifier.0.weight", "bridge.interaction_layers.0.text_attention.q_proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    # each pair on its own: the logits of question 0 do not depend on the other rows
    with torch.no_grad():
        model.eval()
        alone = model(input_ids=input_ids[:1], pixel_values=pixel_values[:1], attention_mask=attention_mask[:1])
        together = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    torch.testing.assert_close(alone.logits[0], together.logits[0], rtol=1e-5, atol=1e-6)


def test_vqa_bad_inputs():
    model = _model()
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    with pytest.raises(ValueError, match="Got 2 images and 3 questions"):
        model(input_ids=input_ids, pixel_values=pixel_values)
    with pytest.raises(ValueError, match=r"labels have shape \(2,\); VQA labels are soft answer scores"):
        model(input_ids=input_ids[:2], pixel_values=pixel_values, labels=torch.ones(2))
    with pytest.raises(ValueError, match="needs pixel_values and input_ids"):
        model(input_ids=input_ids)


def test_vqa_round_trip_and_auto_class(tmp_path):
    model = _model().eval()
    pixel_values, input_ids, attention_mask = random_inputs(2, 2)
    inputs = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
    model.save_pretrained(tmp_path / "vqa")
    saved = json.loads((tmp_path / "vqa" / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForVisualQuestionAnswering"] == "modeling_bridge.BridgeForQuestionAnswering"
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "vqa").eval()
    assert type(reloaded) is BridgeForQuestionAnswering and reloaded.config.id2label[4] == "yes"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    # a pre-training checkpoint starts a VQA model: its BRIDGE weights carry over, the classifier is new
    pretrained = BridgeForPreTraining(make_config())
    pretrained.save_pretrained(tmp_path / "pre")
    vqa = BridgeForQuestionAnswering.from_pretrained(tmp_path / "pre", num_labels=3)
    assert torch.equal(
        vqa.bridge.interaction_layers[0].text_to_shared.weight,
        pretrained.bridge.interaction_layers[0].text_to_shared.weight,
    )
    assert vqa.classifier[-1].out_features == 3

    torch.save(inputs, tmp_path / "inputs.pt")
    out = run_as_hub_code(
        tmp_path,
        """
        import json, sys
        import torch
        from transformers import AutoModelForVisualQuestionAnswering
        model = AutoModelForVisualQuestionAnswering.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(**torch.load(sys.argv[2], weights_only=True)).logits
        json.dump({"class": type(model).__name__, "logits": logits.tolist()}, open(sys.argv[3], "w"))
        """,
        tmp_path / "vqa",
        tmp_path / "inputs.pt",
    )
    assert out["class"] == "BridgeForQuestionAnswering"
    with torch.no_grad():
        assert torch.equal(torch.tensor(out["logits"]), model(**inputs).logits)


def test_bridge_shapes_vqa_questions_and_soft_targets():
    from modeling_bridge.data import answer_vocabulary, load_bridge_shapes_vqa, parse_shapes_caption, vqa_soft_targets
    from modeling_bridge.data.shapes import load_bridge_shapes

    data = load_bridge_shapes_vqa(num_train=20)
    scenes = load_bridge_shapes(num_train=20)["test"]
    test = data["test"]
    assert len(test) == 6 * len(scenes)  # two objects: 2 colour + 2 shape + 2 relation questions each
    first = parse_shapes_caption(scenes[0]["caption"])
    (c1, s1), (c2, s2) = first.objects
    rows = [test[i] for i in range(6)]
    assert [(r["question"], r["answer"]) for r in rows] == [
        (f"what colour is the {s1}?", c1),
        (f"what shape is the {c1} one?", s1),
        (f"what colour is the {s2}?", c2),
        (f"what shape is the {c2} one?", s2),
        (f"is the {c1} {s1} {first.relation} the {c2} {s2}?", "yes"),
        (f"is the {c2} {s2} {first.relation} the {c1} {s1}?", "no"),
    ]
    assert rows[0]["image"].size == (64, 64) and rows[0]["answers"] == [c1]
    assert len(set(test["question_id"])) == len(test) and min(test["question_id"]) == len(data["train"])

    vocabulary = answer_vocabulary([["b", "a"], ["a"], ["c"], ["A "]], max_answers=2)
    assert vocabulary == ["a", "b"]  # a: 3 questions, then b and c once each, alphabetical
    label2id = {a: i for i, a in enumerate(vocabulary)}
    assert vqa_soft_targets(["a"], label2id) == {0: 1.0}
    assert vqa_soft_targets(["c"], label2id) == {}
    ten = ["a"] * 2 + ["b"] * 7 + ["c"]
    assert vqa_soft_targets(ten, label2id) == {0: pytest.approx(2 / 3), 1: 1.0}


def test_vqa_metric_module_matches_hand_computed_values():
    from pathlib import Path

    import evaluate

    metric = evaluate.load(str(Path(__file__).resolve().parents[1] / "metrics" / "bridge_vqa"))
    ten = ["2"] * 2 + ["two"] * 8
    got = metric.compute(
        predictions=["Red.", "no", "2", "two"],
        references=[["red"], ["yes"], ten, ten],
        question_types=["color", "relation", "number", "number"],
    )
    # "2": leaving out one of the 2 matching annotators leaves 1 match (1/3), one of the 8 others 2 (2/3):
    # (2 x 1/3 + 8 x 2/3) / 10 = 0.6; "two": 8 or 7 matches, always >= 3 -> 1
    assert got == {
        "accuracy": pytest.approx((1 + 0 + 0.6 + 1) / 4),
        "num_questions": 4,
        "accuracy_color": 1.0,
        "accuracy_number": pytest.approx(0.8),
        "accuracy_relation": 0.0,
    }


def test_vqa_example_runs_end_to_end(processor, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import run_vqa

    from conftest import make_model

    make_model().save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    argv = [
        "--model_name_or_path", str(tmp_path / "base"), "--output_dir", str(tmp_path / "out"),
        "--shapes_num_train", "16", "--max_eval_samples", "12", "--max_answers", "8", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
        "--save_strategy", "no",
    ]  # fmt: skip
    results = run_vqa.main(argv)
    assert results["answer_vocabulary"] == 8 and results["skipped_training_questions"] > 0
    assert 0.0 <= results["accuracy"] <= 1.0 and results["num_questions"] == 12
    saved = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert saved["architectures"] == ["BridgeForQuestionAnswering"] and len(saved["id2label"]) == 8
    assert json.loads((tmp_path / "out" / "vqa_results.json").read_text()) == results
    with pytest.raises(ValueError, match="--dataset vqav2 needs --train_questions, --eval_questions, --image_root"):
        run_vqa.main([*argv[:4], "--dataset", "vqav2"])


def test_vqav2_loader_reads_the_official_format(tmp_path):
    from PIL import Image

    from modeling_bridge.data import load_vqav2

    Image.new("RGB", (8, 8)).save(tmp_path / "COCO_val2014_000000000042.jpg")
    questions = {
        "data_subtype": "val2014",
        "questions": [{"image_id": 42, "question": "Is it dark?", "question_id": 7}],
    }
    annotations = {
        "annotations": [
            {
                "question_id": 7,
                "image_id": 42,
                "answer_type": "yes/no",
                "multiple_choice_answer": "yes",
                "answers": [{"answer": "yes", "answer_id": k} for k in range(10)],
            }
        ]
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    rows = load_vqav2(tmp_path / "q.json", tmp_path / "a.json", str(tmp_path))
    assert rows[0]["question"] == "Is it dark?" and rows[0]["answers"] == ["yes"] * 10 and rows[0]["answer"] == "yes"
    assert rows[0]["question_type"] == "yes/no" and rows[0]["image"].size == (8, 8)
    questions["questions"][0]["image_id"] = 43
    (tmp_path / "q.json").write_text(json.dumps(questions))
    with pytest.raises(FileNotFoundError, match="VQAv2 question 7: no image COCO_val2014_000000000043.jpg"):
        load_vqav2(tmp_path / "q.json", tmp_path / "a.json", str(tmp_path))


VQA_PIPELINE_SCRIPT = """
import json, sys
from PIL import Image
from transformers import pipeline
vqa = pipeline("visual-question-answering", model=sys.argv[1], trust_remote_code=True)
image = Image.open(sys.argv[2])
json.dump({"class": type(vqa).__name__, "answers": vqa(image, "what colour is the circle?", top_k=3)},
          open(sys.argv[3], "w"))
"""


def test_vqa_pipeline_answers_installed_and_as_hub_code(processor, tmp_path):
    from transformers import pipeline

    from conftest import random_images

    model = _model().eval()
    model.save_pretrained(tmp_path / "vqa")
    processor.save_pretrained(tmp_path / "vqa")
    assert json.loads((tmp_path / "vqa" / "config.json").read_text())["custom_pipelines"] == {
        "visual-question-answering": {
            "impl": "pipelines.BridgeVisualQuestionAnsweringPipeline",
            "pt": ["AutoModelForVisualQuestionAnswering"],
            "type": "multimodal",
        }
    }
    image, other = random_images(2)
    image.save(tmp_path / "image.png")
    question = "what colour is the circle?"
    with torch.no_grad():
        inputs = processor(images=image, text=question, return_tensors="pt")
        scores = model(**inputs).logits[0].sigmoid()
    expected = [{"answer": ANSWERS[int(i)], "score": pytest.approx(float(scores[i]), abs=1e-6)} for i in
                scores.argsort(descending=True)[:3]]  # fmt: skip

    vqa = pipeline("visual-question-answering", model=str(tmp_path / "vqa"), trust_remote_code=True)
    assert type(vqa).__name__ == "BridgeVisualQuestionAnsweringPipeline"
    assert vqa(str(tmp_path / "image.png"), question, top_k=3) == expected
    assert len(vqa(image, question)) == 5  # default top_k
    both = vqa([{"image": image, "question": question}, {"image": other, "question": question}], top_k=3)
    assert both[0] == expected and both[1] != expected
    assert vqa(image, [question, "what shape is the red one?"], top_k=1)[0] == expected[:1]
    with pytest.raises(ValueError, match="The question must be a non-empty string"):
        vqa(image, "")
    with pytest.raises(ValueError, match="Got 2 images and 3 questions"):
        vqa([image, other], [question] * 3)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        vqa(image, question, top_k=0)
    # a BridgeModel saved from the VQA config names no VQA pipeline
    model.bridge.save_pretrained(tmp_path / "base")
    assert "custom_pipelines" not in json.loads((tmp_path / "base" / "config.json").read_text())

    out = run_as_hub_code(tmp_path, VQA_PIPELINE_SCRIPT, tmp_path / "vqa", tmp_path / "image.png")
    assert out["class"] == "BridgeVisualQuestionAnsweringPipeline" and out["answers"] == expected
