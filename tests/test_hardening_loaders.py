"""No loader or head is silently wrong: labels the task heads cannot learn from, a VQA model without answers behind the
pipeline, and malformed NLVR2 / VQAv2 / Karpathy files each give one ValueError saying what was wrong and where."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import make_config, random_images, random_inputs
from modeling_bridge import BridgeForImageTextRetrieval, BridgeForQuestionAnswering, BridgeForVisualReasoning
from modeling_bridge.data import load_image_text_dataset, load_nlvr2, load_vqav2


# ---------------------------------------------------------------- task-head labels


def _head_and_inputs(name):
    torch.manual_seed(0)
    if name == "retrieval":
        pixel_values, input_ids, attention_mask = random_inputs(3, 3)
        return BridgeForImageTextRetrieval(make_config()).eval(), pixel_values, input_ids, attention_mask
    pixel_values, input_ids, attention_mask = random_inputs(6, 3)
    model = BridgeForVisualReasoning(make_config()).eval()
    return model, pixel_values.view(3, 2, *pixel_values.shape[1:]), input_ids, attention_mask


HEADS = {
    "retrieval": ("BridgeForImageTextRetrieval", "image-text match"),
    "reasoning": ("BridgeForVisualReasoning", "statement"),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_binary_heads_name_a_label_outside_0_and_1(name):
    model, pixel_values, input_ids, attention_mask = _head_and_inputs(name)
    head, what = HEADS[name]
    inputs = dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    expected = rf"each label must be 0 / 1 \({what}: 1 for true\), or -100 to leave a row out of the loss"
    with pytest.raises(ValueError, match=rf"^{head}: labels\[1\] is 5; {expected}"):
        model(**inputs, labels=torch.tensor([1, 5, 0]))
    with pytest.raises(ValueError, match=rf"^{head}: labels\[2\] is -1; .*-1 marks an unlabelled record"):
        model(**inputs, labels=torch.tensor([1, 0, -1]))
    with pytest.raises(ValueError, match=rf"^{head}: labels must be a \(batch,\) = \(3,\) integer tensor of 0 / 1 "
                       r"\(.*\), got torch.int64 of shape \(3, 1\)"):  # fmt: skip
        model(**inputs, labels=torch.tensor([[1], [0], [1]]))
    with pytest.raises(ValueError, match=rf"^{head}: labels must be a torch.Tensor of 0 / 1 .*, got list"):
        model(**inputs, labels=[1, 0, 1])


@pytest.mark.parametrize("name", list(HEADS))
def test_binary_heads_take_the_ignore_index_and_any_integer_dtype(name):
    model, pixel_values, input_ids, attention_mask = _head_and_inputs(name)
    inputs = dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    with torch.no_grad():
        out = model(**inputs, labels=torch.tensor([1, -100, 0], dtype=torch.int32))
        torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[[0, 2]], torch.tensor([1, 0])))
        as_bool = model(**inputs, labels=torch.tensor([True, False, False]))
        torch.testing.assert_close(as_bool.loss, F.cross_entropy(out.logits, torch.tensor([1, 0, 0])))


def _vqa_model():
    torch.manual_seed(0)
    answers = ["red", "blue", "yes"]
    return BridgeForQuestionAnswering(make_config(id2label=dict(enumerate(answers)))).eval()


def test_vqa_head_names_a_score_outside_0_1():
    model = _vqa_model()
    pixel_values, input_ids, attention_mask = random_inputs(2, 2)
    inputs = dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    labels = torch.zeros(2, 3)
    labels[1, 2] = 3.0  # an annotator count where a score belongs
    with pytest.raises(ValueError, match=r"^BridgeForQuestionAnswering: labels\[1, 2\] \(answer 'yes'\) is 3.0; VQA "
                       r"labels are answer scores in \[0, 1\]"):  # fmt: skip
        model(**inputs, labels=labels)
    labels[1, 2], labels[0, 1] = 1.0, float("nan")
    with pytest.raises(ValueError, match=r"labels\[0, 1\] \(answer 'blue'\) is nan"):
        model(**inputs, labels=labels)
    with pytest.raises(ValueError, match=r"^BridgeForQuestionAnswering: labels must be a torch.Tensor of soft answer "
                       r"scores in \[0, 1\] of shape \(batch, num_labels\) = \(2, 3\), got list"):  # fmt: skip
        model(**inputs, labels=[[0, 1, 0], [1, 0, 0]])
    with torch.no_grad():  # one-hot integer rows are scores too
        out = model(**inputs, labels=torch.tensor([[0, 1, 0], [1, 0, 0]]))
    expected = F.binary_cross_entropy_with_logits(out.logits, torch.tensor([[0.0, 1, 0], [1, 0, 0]])) * 3
    torch.testing.assert_close(out.loss, expected)


def test_label_values_are_read_on_cpu_and_on_an_accelerator_only_on_the_check_token_ids_opt_in():
    from modeling_bridge.checks_bridge import reads_label_values as _reads_label_values

    model = _vqa_model()
    on_device = torch.zeros(2, dtype=torch.long, device="meta")  # not CPU: reading it would be a host sync
    assert _reads_label_values(model, torch.zeros(2, dtype=torch.long))
    assert not _reads_label_values(model, on_device)
    model.bridge.check_token_ids = True
    assert _reads_label_values(model, on_device)
    model.bridge.check_token_ids = False
    model.check_token_ids = True  # set on the head itself
    assert _reads_label_values(model, on_device)


# ---------------------------------------------------------------- the VQA pipeline's answer vocabulary


def test_vqa_pipeline_refuses_a_model_without_an_answer_vocabulary(processor):
    from modeling_bridge.pipelines import BridgeVisualQuestionAnsweringPipeline

    torch.manual_seed(0)
    model = BridgeForQuestionAnswering(make_config()).eval()  # id2label left at transformers' LABEL_0, LABEL_1
    vqa = BridgeVisualQuestionAnsweringPipeline(model=model, processor=processor)
    image = random_images(1)[0]
    with pytest.raises(ValueError, match=r"^This model has no answer vocabulary: its config.id2label is "
                       r"transformers' placeholder \(2 answers LABEL_0, LABEL_1, ...\), so visual-question-answering "
                       r"would answer 'LABEL_0'\. .*id2label=dict\(enumerate\(answers\)\), label2id="):  # fmt: skip
        vqa(image, "what colour is the circle?")
    model.config.id2label, model.config.label2id = {0: "red", 1: "blue"}, {"red": 0, "blue": 1}
    answers = vqa(image, "what colour is the circle?", top_k=2)
    assert sorted(a["answer"] for a in answers) == ["blue", "red"]
    model.config.id2label = {0: "red"}  # fewer names than the classifier has outputs
    with pytest.raises(ValueError, match=r"^The model scores 2 answers but config.id2label names 1: no answer for "
                       r"id\(s\) \[1\]"):  # fmt: skip
        vqa(image, "what colour is the circle?")


# ---------------------------------------------------------------- NLVR2 files


NLVR2_RECORD = {"identifier": "dev-850-0-0", "sentence": "There are birds.", "label": "False"}


def _nlvr2_file(tmp_path, text):
    for side in (0, 1):
        Image.new("RGB", (8, 6)).save(tmp_path / f"dev-850-0-img{side}.png")
    path = tmp_path / "records.jsonl"
    path.write_text(text)
    return path


def _line(**changes):
    record = {**NLVR2_RECORD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


NLVR2_CASES = {
    "empty file": ("", r"records\.jsonl is empty \(no records\); expected JSON Lines: one JSON object per line"),
    "blank lines only": ("\n \n", r"records\.jsonl is empty \(no records\)"),
    "one JSON list on a line": (json.dumps([NLVR2_RECORD]), r"records\.jsonl is one JSON list, not JSON Lines"),
    "a pretty-printed JSON list": (
        json.dumps([NLVR2_RECORD], indent=1),
        r"records\.jsonl is one JSON document \(a list over 7 lines\), not JSON Lines",
    ),
    "a line that is a list": (
        _line() + '\n["a", "b"]\n',
        r'records\.jsonl, line 2: the line is a list \(\["a", "b"\]\)',
    ),
    "a line that is a number": ("5\n", r"records\.jsonl, line 1: the line is an integer \(5\); expected JSON Lines"),
    "invalid JSON": (_line() + '\n{"identifier": \n', r"records\.jsonl, line 2: invalid JSON \(Expecting value at "),
    "no identifier": (
        _line(identifier=...),
        r"records\.jsonl, line 1: no 'identifier' field \(the fields are \['label', 'sentence'\]\); expected "
        r"'identifier': a non-empty string",
    ),
    "identifier null": (_line(identifier=None), r"line 1: 'identifier' is null; expected a non-empty string"),
    "sentence a number": (_line(sentence=3), r"line 1: 'sentence' is an integer \(3\); expected the statement, a "),
    "empty sentence": (_line(sentence=" "), r"line 1: 'sentence' is an empty string \(\" \"\); expected"),
    "label an integer": (
        _line(label=1),
        r"line 1: 'label' is an integer \(1\); expected the string \"True\" or \"False\" \(or no label field",
    ),
    "label a boolean": (_line(label=True), r"line 1: 'label' is a boolean \(true\); expected the string \"True\""),
    "label another word": (_line(label="yes"), r"line 1: 'label' is a string \(\"yes\"\); expected the string"),
    "directory a list": (_line(directory=[7]), r"line 1: 'directory' is a list \(\[7\]\); expected the image sub-f"),
    "a repeated identifier": (
        _line() + "\n" + _line(),
        r"records\.jsonl, line 2: identifier 'dev-850-0-0' is also that of line 1; NLVR2 identifiers are unique",
    ),
    "labelled and unlabelled mixed": (
        _line() + "\n" + _line(identifier="dev-850-0-1", label=...),
        r"records\.jsonl: line 2 has no label but line 1 has one; the records of a file are all labelled",
    ),
}


@pytest.mark.parametrize("case", list(NLVR2_CASES))
def test_nlvr2_loader_names_the_file_line_and_field_of_a_malformed_record(tmp_path, case):
    text, message = NLVR2_CASES[case]
    path = _nlvr2_file(tmp_path, text)
    with pytest.raises(ValueError, match=message) as error:
        load_nlvr2(path, str(tmp_path))
    assert str(error.value).startswith(str(path))


def test_nlvr2_loader_reads_an_unlabelled_file_and_any_label_case(tmp_path):
    path = _nlvr2_file(tmp_path, _line(label=...) + "\n" + _line(identifier="dev-850-0-1", label=...) + "\n")
    assert load_nlvr2(path, str(tmp_path))["label"] == [-1, -1]
    path.write_text(_line(label="true", directory=3) + "\n" + _line(identifier="dev-850-0-1", label="FALSE"))
    assert load_nlvr2(path, str(tmp_path))["label"] == [1, 0]


# ---------------------------------------------------------------- VQAv2 files


def _vqa_files(tmp_path, questions=None, annotations=None):
    Image.new("RGB", (8, 8)).save(tmp_path / "COCO_val2014_000000000042.jpg")
    question = {"image_id": 42, "question": "Is it dark?", "question_id": 7}
    note = {
        "question_id": 7,
        "answer_type": "yes/no",
        "multiple_choice_answer": "yes",
        "answers": [{"answer": "yes", "answer_id": k} for k in range(3)],
    }
    documents = {
        "q.json": {"data_subtype": "val2014", "questions": [question]} if questions is None else questions(question),
        "a.json": {"annotations": [note]} if annotations is None else annotations(note),
    }
    for name, document in documents.items():
        (tmp_path / name).write_text(document if isinstance(document, str) else json.dumps(document))
    return tmp_path / "q.json", tmp_path / "a.json"


def _questions(*records, **document):
    return lambda question: {"data_subtype": "val2014", "questions": [{**question, **r} for r in records], **document}


def _annotations(*records):
    return lambda note: {"annotations": [{k: v for k, v in {**note, **r}.items() if v is not ...} for r in records]}


VQA_CASES = {
    "questions file empty": (dict(questions=lambda q: ""), r"q\.json is empty; expected a VQAv2 questions file"),
    "questions file invalid JSON": (
        dict(questions=lambda q: '{"questions": ['),
        r"q\.json is not valid JSON \(Expecting value at line 1, column 16\); expected a VQAv2 questions file",
    ),
    "questions file as JSON Lines": (
        dict(questions=lambda q: json.dumps(q) + "\n" + json.dumps(q)),
        r"q\.json holds one JSON value per line \(JSON Lines\), not one JSON document; expected a VQAv2 questions",
    ),
    "questions file a list": (dict(questions=lambda q: [q]), r"q\.json is a list; expected a VQAv2 questions file"),
    "no questions list": (
        dict(questions=lambda q: {"data_subtype": "val2014", "question": [q]}),
        r"q\.json: no 'questions' field \(the fields are \['data_subtype', 'question'\]\)",
    ),
    "empty questions list": (dict(questions=_questions()), r"q\.json: 'questions' is an empty list; expected"),
    "a question that is a list": (
        dict(questions=lambda q: {"data_subtype": "val2014", "questions": [q, [7]]}),
        r"q\.json, questions\[1\] is a list \(\[7\]\); expected an object, one record of a VQAv2 questions file",
    ),
    "image_id a string": (
        dict(questions=_questions({"image_id": "42"})),
        r"q\.json, questions\[0\]: 'image_id' is a string \(\"42\"\); expected a non-negative integer",
    ),
    "question_id a number": (
        dict(questions=_questions({"question_id": 7.5})),
        r"q\.json, questions\[0\]: 'question_id' is a number \(7\.5\); expected an integer",
    ),
    "no question": (
        dict(questions=lambda q: {"questions": [{"image_id": 42, "question_id": 7}]}),
        r"q\.json, questions\[0\]: no 'question' field \(the fields are \['image_id', 'question_id'\]\)",
    ),
    "data_subtype a number": (
        dict(questions=_questions({}, data_subtype=2014)),
        r"q\.json: 'data_subtype' is an integer \(2014\); expected a string such as \"val2014\"",
    ),
    "a repeated question id": (
        dict(questions=_questions({}, {})),
        r"q\.json, questions\[1\]: question_id 7 is also that of questions\[0\]; question ids are unique",
    ),
    "answers a string": (
        dict(annotations=_annotations({"answers": "yes"})),
        r"a\.json, annotations\[0\]: 'answers' is a string \(\"yes\"\); expected a list of \{\"answer\": ",
    ),
    "an answer without its text": (
        dict(annotations=_annotations({"answers": [{"answer": "yes"}, {"ans": "no"}]})),
        r"a\.json, annotations\[0\], answers\[1\]: no 'answer' field \(the fields are \['ans'\]\)",
    ),
    "an answer that is a string": (
        dict(annotations=_annotations({"answers": ["yes"]})),
        r"a\.json, annotations\[0\]: answers\[0\] is a string \(\"yes\"\); expected an object",
    ),
    "no multiple_choice_answer": (
        dict(annotations=_annotations({"multiple_choice_answer": ...})),
        r"a\.json, annotations\[0\]: no 'multiple_choice_answer' field",
    ),
    "a repeated annotation": (
        dict(annotations=_annotations({}, {})),
        r"a\.json, annotations\[1\]: question_id 7 is also that of annotations\[0\]; each question has one",
    ),
}


@pytest.mark.parametrize("case", list(VQA_CASES))
def test_vqav2_loader_names_the_file_record_and_field_of_a_malformed_input(tmp_path, case):
    files, message = VQA_CASES[case]
    questions, annotations = _vqa_files(tmp_path, **files)
    with pytest.raises(ValueError, match=message) as error:
        load_vqav2(questions, annotations, str(tmp_path))
    assert str(tmp_path) in str(error.value)


def test_vqav2_loader_names_swapped_questions_and_annotations_files(tmp_path):
    questions, annotations = _vqa_files(tmp_path)
    assert load_vqav2(questions, annotations, str(tmp_path))["answer"] == ["yes"]
    with pytest.raises(ValueError, match=r"a\.json holds VQAv2 annotations \(it has 'annotations', no 'questions'\): "
                       r"the questions and annotations files look swapped"):  # fmt: skip
        load_vqav2(annotations, questions, str(tmp_path))
    with pytest.raises(ValueError, match=r"q\.json holds VQAv2 questions \(it has 'questions', no 'annotations'\)"):
        load_vqav2(questions, questions, str(tmp_path))


# ---------------------------------------------------------------- Karpathy JSON


KARPATHY_CASES = {
    "empty file": ("", r"k\.json is empty; expected a JSON list of \{'image': image path, 'caption': caption or"),
    "invalid JSON": ('[{"image": "a.png",', r"k\.json is not valid JSON \(Expecting property name enclosed in"),
    "JSON Lines": (
        '{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": "y"}\n',
        r"k\.json holds one JSON value per line \(JSON Lines\), not one JSON document; expected a JSON list",
    ),
    "one object": (
        {"image": "a.png", "caption": "x"},
        r"k\.json: expected a JSON list of \{'image': .*\(Karpathy format\), got an object\.",
    ),
    "empty list": ([], r"k\.json has no entries \(an empty list\)"),
    "an entry that is a string": (
        [{"image": "a.png", "caption": "x"}, "b.png"],
        r"k\.json: entry 1 is a string \(\"b\.png\"\), expected an object",
    ),
    "a caption that is a number": (
        [{"image": "a.png", "caption": 5}],
        r"k\.json: entry 0: 'caption' is an integer \(5\); expected a caption \(a string\) or a list of captions",
    ),
    "a caption list holding a number": (
        [{"image": "a.png", "caption": ["x"]}, {"image": "a.png", "caption": ["y", 3]}],
        r"k\.json: entry 1: 'caption'\[1\] is an integer \(3\); expected a caption \(a string\)",
    ),
    "an image that is a number": (
        [{"image": 3, "caption": "x"}],
        r"k\.json: entry 0: 'image' is an integer \(3\); expected the image's path \(a string\)",
    ),
}


@pytest.mark.parametrize("case", list(KARPATHY_CASES))
def test_karpathy_loader_names_the_file_entry_and_field_of_a_malformed_input(tmp_path, case):
    content, message = KARPATHY_CASES[case]
    path = tmp_path / "k.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message) as error:
        load_image_text_dataset(path, show_progress=False)
    assert str(error.value).startswith(str(path))
