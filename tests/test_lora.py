"""PEFT LoRA on BRIDGE: tower-aware targets, what trains, adapter save/reload/merge, checkpointing, the example."""

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining

from conftest import make_config, random_inputs
from modeling_bridge import BridgeForPreTraining, BridgeModel
from modeling_bridge.towers_bridge import TOWER_TYPES, TowerType
from modeling_bridge.training import (
    default_lora_target_modules,
    find_bridge_model,
    make_lora_model,
    save_pretrained_atomically,
)
from modeling_bridge.training import lora as lora_module
from modeling_bridge.training.lora import LoraAdapterMismatchError, load_lora_adapter


ROOT = Path(__file__).resolve().parents[1]
LAYERS = range(2)  # conftest: 2 tower blocks, 2 interaction layers

# Written out by hand from the towers' real module names, independently of the code under test.
TOWER_QKV = {
    "vit": [f"bridge.vision_model.layers.{i}.attention.{p}" for i in LAYERS for p in ("q_proj", "k_proj", "v_proj")],
    "clip_vision_model": [
        f"bridge.vision_model.encoder.layers.{i}.self_attn.{p}" for i in LAYERS for p in ("q_proj", "k_proj", "v_proj")
    ],
    "siglip_vision_model": [
        f"bridge.vision_model.encoder.layers.{i}.self_attn.{p}" for i in LAYERS for p in ("q_proj", "k_proj", "v_proj")
    ],
    "dinov2": [
        f"bridge.vision_model.encoder.layer.{i}.attention.{p}" for i in LAYERS for p in ("q_proj", "k_proj", "v_proj")
    ],
    "bert": [
        f"bridge.text_model.encoder.layer.{i}.attention.self.{p}" for i in LAYERS for p in ("query", "key", "value")
    ],
}
TOWER_QKV["roberta"] = TOWER_QKV["bert"]
INTERACTION = [
    f"bridge.interaction_layers.{i}.{d}_attention.{p}"
    for i in LAYERS
    for d in ("text", "vision")
    for p in ("q_proj", "k_proj", "v_proj", "o_proj")
]
SCALARS = {"bridge.logit_scale", "itc_alpha"} | {
    f"bridge.interaction_layers.{i}.{name}"
    for i in LAYERS
    for name in ("text_gate", "vision_gate", "text_attention.temperature", "vision_attention.temperature")
}
PEFT_PREFIX = "base_model.model."


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is fastest, and on a busy 2-core machine two threads spin against
    each other (a backward pass goes from milliseconds to seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pretraining_model(vision="vit", text="bert", seed=0, **overrides):
    torch.manual_seed(seed)
    return BridgeForPreTraining(make_config(vision, text, **overrides))


def _names_of(model, kind):
    return {n.removeprefix(PEFT_PREFIX) for n, m in model.named_modules() if isinstance(m, kind)}


def _scores(model, inputs):
    """Unimodal, fused and ITM score matrices from the inner BridgeModel, in eval mode."""
    bridge = find_bridge_model(model)
    pixel_values, input_ids, attention_mask = inputs
    model.eval()
    with torch.no_grad():
        return {
            score: bridge(
                input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score=score
            ).logits_per_image
            for score in ("unimodal", "fused", "itm")
        }


def _realign_parameters(model):
    """Copy every parameter into freshly allocated memory. CPU matmul kernels may sum in an order that depends on
    the alignment of the weights, and safetensors maps tensors at arbitrary offsets, so a loaded model can differ
    from the in-memory one by ~1e-6 although every weight is bit-identical; realigned, the scores must match
    exactly."""
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()


def _train_steps(model, steps=2, lr=1e-2):
    pixel_values, input_ids, attention_mask = random_inputs(4, 4, seed=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize(
    "vision,text",
    [("vit", "bert"), ("clip_vision_model", "roberta"), ("siglip_vision_model", "bert"), ("dinov2", "roberta")],
)
def test_lora_targets_exactly_the_attention_projections(vision, text):
    base = _pretraining_model(vision, text)
    expected = set(INTERACTION) | set(TOWER_QKV[vision]) | set(TOWER_QKV[text])
    assert set(default_lora_target_modules(base)) == expected
    peft_model = make_lora_model(base)
    assert _names_of(peft_model, LoraLayer) == expected  # nothing else (heads, projections, FFN) is adapted
    assert _names_of(peft_model, ModulesToSaveWrapper) == SCALARS


def test_only_lora_and_scalar_parameters_train():
    peft_model = make_lora_model(_pretraining_model(), r=4)
    trainable = {n.removeprefix(PEFT_PREFIX) for n, p in peft_model.named_parameters() if p.requires_grad}
    lora = {
        f"{m}.lora_{ab}.default.weight"
        for m in set(INTERACTION) | set(TOWER_QKV["vit"]) | set(TOWER_QKV["bert"])
        for ab in "AB"
    }
    scalars = {f"{m}.modules_to_save.default.value" for m in SCALARS}
    assert trainable == lora | scalars
    config = peft_model.peft_config["default"]
    assert config.task_type is None and config.r == 4 and config.lora_alpha == 16


def test_targets_fail_loudly_when_a_tower_has_no_known_attention(monkeypatch):
    base = _pretraining_model()
    # a tower type whose entry names other projections than BERT's
    monkeypatch.setitem(
        TOWER_TYPES, "bert", TowerType(attention_projections=frozenset({"q_proj", "k_proj", "v_proj"}))
    )
    with pytest.raises(ValueError, match=r"text_model.*attention\.self\.query"):
        default_lora_target_modules(base)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not a PEFT-wrapped"):
        default_lora_target_modules(make_lora_model(base))
    with pytest.raises(ValueError, match="modules_to_save"):
        make_lora_model(_pretraining_model(), modules_to_save=["no_such_scalar"])


def test_adapter_save_reload_and_merge_reproduce_the_trained_scores(tmp_path):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    base = _pretraining_model()
    base.save_pretrained(base_dir)
    inputs = random_inputs(3, 4, seed=2)
    base_scores = _scores(base, inputs)

    peft_model = make_lora_model(base)
    _train_steps(peft_model)
    trained = _scores(peft_model, inputs)
    for score in ("unimodal", "fused"):  # the adapter is not trivial: it changed the scores
        assert (trained[score] - base_scores[score]).abs().max() > 1e-3, score
    save_pretrained_atomically(adapter_dir, peft_model)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter_dir.iterdir()}
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    assert any(".lora_B." in k for k in saved) and any(k.endswith("logit_scale.value") for k in saved)

    reloaded = PeftModel.from_pretrained(AutoModelForPreTraining.from_pretrained(base_dir), adapter_dir)
    assert isinstance(reloaded.get_base_model(), BridgeForPreTraining)
    trained_state = {k: v for k, v in peft_model.state_dict().items()}
    reloaded_state = reloaded.state_dict()
    assert trained_state.keys() == reloaded_state.keys()
    assert all(torch.equal(trained_state[k], reloaded_state[k]) for k in trained_state)
    _realign_parameters(reloaded)
    again = _scores(reloaded, inputs)
    for score in trained:
        assert torch.equal(again[score], trained[score]), score

    merged = reloaded.merge_and_unload()
    assert type(merged) is BridgeForPreTraining
    assert not _names_of(merged, LoraLayer) and not _names_of(merged, ModulesToSaveWrapper)
    merged_scores = _scores(merged, inputs)
    for score in trained:
        torch.testing.assert_close(merged_scores[score], trained[score], rtol=0, atol=1e-5)


# Layer 1 of the interaction, as a 2-layer adapter saves it: written out by hand.
LAYER_1_LORA = [
    f"bridge.interaction_layers.1.{d}_attention.{p}"
    for d in ("text", "vision")
    for p in ("q_proj", "k_proj", "v_proj", "o_proj")
]
LAYER_1_SCALARS = [
    f"bridge.interaction_layers.1.{name}"
    for name in ("text_gate", "vision_gate", "text_attention.temperature", "vision_attention.temperature")
]
LAYER_1_KEYS = {f"{PEFT_PREFIX}{m}.lora_{ab}.weight" for m in LAYER_1_LORA for ab in "AB"} | {
    f"{PEFT_PREFIX}{m}.value" for m in LAYER_1_SCALARS
}


def _saved_adapter(path, model, **lora_kwargs):
    """Save an adapter on `model` whose weights all differ from a fresh adapter's (lora_B is not zero)."""
    peft_model = make_lora_model(model, **lora_kwargs)
    torch.manual_seed(4)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    peft_model.save_pretrained(path)
    return peft_model


def test_adapter_for_two_interaction_layers_is_refused_on_a_one_layer_base(tmp_path):
    adapter_dir = tmp_path / "adapter"
    _saved_adapter(adapter_dir, _pretraining_model())  # conftest: 2 interaction layers

    # What PEFT does on its own: loads without a warning and drops layer 1's weights (`unexpected_keys`).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(_pretraining_model(num_interaction_layers=1), adapter_dir)
    assert not [w for w in caught if "peft" in w.filename], [str(w.message) for w in caught]
    peft_model = PeftModel(_pretraining_model(num_interaction_layers=1), LoraConfig.from_pretrained(adapter_dir))
    dropped = peft_model.load_adapter(adapter_dir, "default").unexpected_keys
    assert set(dropped) == LAYER_1_KEYS

    base = _pretraining_model(num_interaction_layers=1)
    with pytest.raises(LoraAdapterMismatchError) as info:
        load_lora_adapter(base, adapter_dir)
    error = info.value
    assert isinstance(error, ValueError)
    assert set(error.unmatched_keys) == LAYER_1_KEYS and len(error.unmatched_keys) == 20
    assert error.untrained_modules == [] and error.absent_entries == []
    message = str(error)
    assert str(adapter_dir) in message
    assert "it has num_interaction_layers=1" in message and "expects num_interaction_layers=2" in message
    assert "20 adapter weight(s) match nothing" in message and "(20 in all)" in message
    assert min(LAYER_1_KEYS) in message  # the first few keys, sorted, are named
    assert "Load the base model the adapter was trained on" in message
    assert not _names_of(base, LoraLayer)  # refused before the base was touched

    # The base it was trained for takes it.
    assert isinstance(load_lora_adapter(_pretraining_model(), adapter_dir), PeftModel)


@pytest.mark.parametrize("modules_to_save", [lora_module.DEFAULT_MODULES_TO_SAVE, None])
def test_adapter_for_one_interaction_layer_is_refused_on_a_two_layer_base(tmp_path, modules_to_save):
    # PEFT on its own: a bare KeyError with modules_to_save; without them, a warning and an untrained layer 1.
    adapter_dir = tmp_path / "adapter"
    _saved_adapter(adapter_dir, _pretraining_model(num_interaction_layers=1), modules_to_save=modules_to_save)
    with pytest.raises(LoraAdapterMismatchError) as info:
        load_lora_adapter(_pretraining_model(), adapter_dir)
    expected = set(LAYER_1_LORA) | (set(LAYER_1_SCALARS) if modules_to_save else set())
    assert set(info.value.untrained_modules) == expected and info.value.unmatched_keys == []
    message = str(info.value)
    assert "it has num_interaction_layers=2" in message and "expects num_interaction_layers=1" in message
    assert f"{len(expected)} module(s)" in message and "bridge.interaction_layers.1.text_attention.k_proj" in message


def test_adapter_config_naming_absent_modules_is_refused(tmp_path):
    adapter_dir = tmp_path / "adapter"
    _saved_adapter(
        adapter_dir,
        _pretraining_model(),
        modules_to_save=["logit_scale"],
        target_modules=["bridge.interaction_layers.0.text_attention.q_proj"],
    )
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["target_modules"].append("bridge.no_such_block.q_proj")
    config["modules_to_save"].append("no_such_scalar")
    config_file.write_text(json.dumps(config))
    PeftModel.from_pretrained(_pretraining_model(), adapter_dir)  # PEFT ignores both names
    with pytest.raises(LoraAdapterMismatchError) as info:
        load_lora_adapter(_pretraining_model(), adapter_dir)
    assert info.value.absent_entries == [
        "target_modules 'bridge.no_such_block.q_proj'",
        "modules_to_save 'no_such_scalar'",
    ]
    assert info.value.unmatched_keys == [] and info.value.untrained_modules == []
    assert "names modules this model lacks" in str(info.value) and "no_such_scalar" in str(info.value)


def test_adapter_for_pretraining_model_on_a_bare_bridge_model_names_the_class(tmp_path):
    adapter_dir = tmp_path / "adapter"
    _saved_adapter(adapter_dir, _pretraining_model())
    torch.manual_seed(0)
    with pytest.raises(LoraAdapterMismatchError, match=r"weights sit under 'bridge\.', this model's under ''"):
        load_lora_adapter(BridgeModel(make_config()), adapter_dir)


@pytest.mark.parametrize("is_trainable", [False, True])
@pytest.mark.parametrize(
    "model_class,auto_class", [(BridgeForPreTraining, AutoModelForPreTraining), (BridgeModel, AutoModel)]
)
def test_load_lora_adapter_reproduces_the_adapted_scores(tmp_path, model_class, auto_class, is_trainable):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    torch.manual_seed(0)
    base = model_class(make_config())
    base.save_pretrained(base_dir)
    inputs = random_inputs(3, 4, seed=2)
    base_scores = _scores(base, inputs)
    adapted = _saved_adapter(adapter_dir, base)
    expected = _scores(adapted, inputs)
    for score in ("unimodal", "fused"):  # the adapter is not trivial: it changed the scores
        assert (expected[score] - base_scores[score]).abs().max() > 1e-1, score

    reloaded = load_lora_adapter(auto_class.from_pretrained(base_dir), adapter_dir, is_trainable=is_trainable)
    assert type(reloaded.get_base_model()) is model_class
    assert reloaded.state_dict().keys() == adapted.state_dict().keys()
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in adapted.state_dict().items())
    trainable = {n for n, p in reloaded.named_parameters() if p.requires_grad}
    assert trainable == ({n for n, p in adapted.named_parameters() if p.requires_grad} if is_trainable else set())
    scores = _scores(reloaded, inputs)
    for score in expected:
        torch.testing.assert_close(scores[score], expected[score], msg=score)  # float32 tolerances

    with pytest.raises(ValueError, match="not a PEFT-wrapped"):
        load_lora_adapter(reloaded, adapter_dir)


@pytest.mark.parametrize("enable", ["activation_checkpointing_enable", "gradient_checkpointing_enable"])
def test_lora_with_checkpointing_and_frozen_towers_gives_every_trainable_parameter_a_gradient(enable):
    inputs = random_inputs(4, 4, seed=3)
    pixel_values, input_ids, attention_mask = inputs

    def gradients(checkpointing):
        model = make_lora_model(_pretraining_model())
        _train_steps(model, steps=1)  # lora_B != 0, so lora_A gets a non-zero gradient too
        if checkpointing:
            if enable == "activation_checkpointing_enable":
                model.activation_checkpointing_enable()  # non-reentrant by default in transformers v5
            else:
                with pytest.warns(FutureWarning):
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        calls = []
        attention = model.get_base_model().bridge.vision_model.layers[0].attention.q_proj.base_layer
        attention.register_forward_hook(lambda *_: calls.append(1))
        model.train()
        loss = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).loss
        forward_calls = len(calls)
        loss.backward()
        recomputed = len(calls) > forward_calls
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, recomputed

    plain, recomputed = gradients(checkpointing=False)
    assert not recomputed
    checkpointed, recomputed = gradients(checkpointing=True)
    assert recomputed  # checkpointing really ran: the frozen tower block was recomputed in backward
    missing = sorted(n for n, g in checkpointed.items() if g is None or not g.abs().sum() > 0)
    assert not missing, f"trainable parameters without a gradient under checkpointing: {missing}"
    assert checkpointed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def _load_example():
    spec = importlib.util.spec_from_file_location("run_lora_finetuning", ROOT / "examples" / "run_lora_finetuning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the argument classes' annotations through it
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_example_trains_saves_and_verifies_an_adapter(tmp_path, processor):
    base_dir, output_dir = tmp_path / "base", tmp_path / "out"
    base = _pretraining_model()
    base.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    example = _load_example()
    results = example.main(
        [
            "--model_name_or_path",
            str(base_dir),
            "--dataset",
            "bridge-shapes",
            "--shapes_num_train",
            "16",
            "--shapes_image_size",
            "32",
            "--max_train_samples",
            "16",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--learning_rate",
            "1e-2",
            "--output_dir",
            str(output_dir),
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--dataloader_num_workers",
            "0",
            "--use_cpu",
            "--do_train",
            "--do_eval",
            "--eval_split",
            "test",
            "--max_eval_samples",
            "4",
            "--merged_dir",
            str(output_dir / "merged"),
        ]
    )
    adapter_dir = output_dir / "adapter"
    assert results["adapter_dir"] == str(adapter_dir)
    files = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "processor_config.json"} <= files
    assert not [p for p in output_dir.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["task_type"] is None
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    # (PEFT stores long target lists as equivalent minimal suffixes, so check the saved LoRA weights instead)
    adapted = {k.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight") for k in weights if ".lora_A." in k}
    assert adapted == set(default_lora_target_modules(base))
    lora_b = [v for k, v in weights.items() if ".lora_B." in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # trained: lora_B starts at zero
    assert torch.isfinite(torch.tensor(results["train"]["train_loss"]))
    assert torch.isfinite(torch.tensor(results["eval"]["eval_loss"]))  # Trainer must not wait for `mlm_labels`
    verification = results["verification"]
    assert set(verification) == {"reload_unimodal", "reload_fused", "merged_unimodal", "merged_fused"}
    assert all(0 <= value <= 1e-4 for value in verification.values())
    assert json.loads((output_dir / "lora_results.json").read_text())["verification"] == verification
    # The merged folder is a plain BRIDGE checkpoint: AutoModel loads it without PEFT, with the trained scalars.
    merged = AutoModel.from_pretrained(output_dir / "merged")
    assert type(merged).__name__ == "BridgeModel" and not _names_of(merged, LoraLayer)
    trained_scale = next(v for k, v in weights.items() if k.endswith("bridge.logit_scale.value"))
    assert torch.equal(merged.logit_scale.value.detach(), trained_scale)
    assert not torch.equal(trained_scale, base.bridge.logit_scale.value.detach())
