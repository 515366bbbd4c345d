"""What transformers' common model tests expect of every model: checkpointing (reentrant and not), `output_*` and
`return_dict` from arguments and from the config, reproducible eval losses, and loading info on request."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.modeling_outputs import BaseModelOutputWithPooling

from conftest import make_config, make_model, random_inputs
from modeling_bridge import BridgeForPreTraining, BridgeModel


def pretraining_model(seed=0, attn_implementation=None, **overrides):
    torch.manual_seed(seed)
    return BridgeForPreTraining._from_config(make_config(**overrides), attn_implementation=attn_implementation)


def eager_model():
    """Attention maps need eager attention (transformers refuses output_attentions with SDPA)."""
    torch.manual_seed(0)
    return BridgeModel._from_config(make_config(), attn_implementation="eager").eval()


def pretraining_batch(batch=4):
    pixel_values, input_ids, attention_mask = random_inputs(batch, batch, pad_rows=(1,))
    return dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_pretraining_checkpointing_gives_the_same_loss_and_gradients(use_reentrant):
    inputs = pretraining_batch()
    results = []
    for checkpointing in (False, True):
        model = pretraining_model(cycle_loss_weight=0.5).train()  # dropout 0: train mode is deterministic
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
        torch.manual_seed(1)  # the same semi-hard negatives in both runs
        out = model(**inputs)
        out.loss.backward()
        grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        results.append((out.loss.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-6)
    assert sum(bool(g.abs().sum() > 0) for g in results[0][1].values()) > 50
    for name, reference in results[0][1].items():
        scale = max(reference.abs().max().item(), 1.0)  # float32 noise grows with the tensor's largest entries
        torch.testing.assert_close(results[1][1][name], reference, atol=1e-6 * scale, rtol=1e-5, msg=name)


def test_pretraining_forward_returns_tower_and_interaction_outputs_on_request():
    model = pretraining_model(attn_implementation="eager").eval()
    inputs = pretraining_batch()
    plain = model(**inputs)
    assert plain.vision_model_output is None and plain.interaction_text_attentions is None
    out = model(**inputs, output_attentions=True, output_hidden_states=True)
    vision, text = out.vision_model_output, out.text_model_output
    assert len(vision.hidden_states) == 3 and len(vision.attentions) == 2  # embeddings + 2 blocks
    assert len(text.hidden_states) == 3 and text.attentions[0].shape == (4, 4, 7, 7)
    assert len(out.interaction_text_attentions) == 2
    assert out.interaction_text_attentions[0].shape == (4, 2, 7, 17)  # (batch, heads, Nt, Nv)
    assert out.interaction_vision_attentions[0].shape == (4, 2, 17, 7)
    torch.testing.assert_close(out.interaction_text_attentions[0].sum(-1), torch.ones(4, 2, 7))
    torch.testing.assert_close(out.loss, plain.loss)  # asking for outputs changes no number

    model.config.output_hidden_states = True  # the config's default applies when the argument is not given
    assert len(model(**inputs).text_model_output.hidden_states) == 3


def test_pretraining_eval_loss_is_reproducible_and_survives_save_and_load(tmp_path):
    model = pretraining_model(itm_margin_min=0.0, itm_margin_max=2.0).eval()  # every candidate in the band
    inputs = pretraining_batch(6)
    losses = [model(**inputs).loss for _ in range(3)]
    assert losses[0] == losses[1] == losses[2]
    torch.manual_seed(123)  # the global generator does not matter in eval
    assert model(**inputs).loss == losses[0]
    model.save_pretrained(tmp_path)
    again = BridgeForPreTraining.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(**inputs).loss, losses[0], rtol=1e-6, atol=1e-6)
    # training still samples: over a few draws the band's random order changes the loss
    model.train()
    assert len({round(model(**inputs).loss.item(), 6) for _ in range(6)}) > 1


def test_pretraining_warns_about_a_batch_of_one(caplog):
    model = pretraining_model().eval()
    with caplog.at_level("WARNING"):
        out = model(**pretraining_batch(1))
    assert out.unimodal_itc_loss.item() == 0.0
    assert "batch of 1 pair" in caplog.text and "at least 2 pairs" in caplog.text


def test_pretraining_refuses_text_longer_than_the_positions():
    model = pretraining_model()
    batch = pretraining_batch(2)
    batch["input_ids"] = torch.randint(5, 20, (2, 17))
    batch["attention_mask"] = torch.ones(2, 17, dtype=torch.long)
    with pytest.raises(ValueError, match="17 tokens exceed the model's 16 text positions.*max_length=16"):
        model(**batch)


@pytest.mark.parametrize("method", ["get_image_features", "get_text_features"])
def test_features_honour_return_dict_and_the_configs_output_flags(method):
    model = eager_model()
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    args = (pixel_values,) if method == "get_image_features" else (input_ids, attention_mask)
    features = getattr(model, method)
    out = features(*args)
    assert isinstance(out, BaseModelOutputWithPooling) and out.hidden_states is None and out.attentions is None

    as_tuple = features(*args, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[1], out.pooler_output)

    model.config.output_hidden_states = True
    model.config.output_attentions = True
    out = features(*args)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert features(*args, output_attentions=False).attentions is None  # an explicit argument wins

    model.config.return_dict = False
    as_tuple = features(*args)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 4  # last_hidden_state, pooler, hidden_states, attentions
    full = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    assert isinstance(full, tuple)  # forward follows config.return_dict too


def test_loading_info_is_returned_instead_of_the_strict_error(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = "interaction_layers.1.vision_gate.value"
    del weights[dropped]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"Missing keys: \['interaction_layers.1.vision_gate.value'\]"):
        BridgeModel.from_pretrained(tmp_path)
    loaded, info = BridgeModel.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(loaded, BridgeModel) and set(info["missing_keys"]) == {dropped}


def test_a_damaged_weights_file_is_named(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a save killed halfway
    with pytest.raises(OSError, match=r"model\.safetensors: .*damaged.*save the model again"):
        BridgeModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("path", ["./no/such/folder", "outputs/missing/bridge", "/tmp/no-such-bridge-folder"])
def test_a_missing_local_folder_is_named_not_taken_for_a_repo_id(path):
    with pytest.raises(FileNotFoundError, match=f"model folder '{path}' does not exist"):
        BridgeModel.from_pretrained(path)


def test_towers_without_a_config_get_the_default_interaction_size():
    towers = make_model()
    model = BridgeModel(vision_model=towers.vision_model, text_model=towers.text_model)
    assert (model.config.num_interaction_layers, model.config.shared_dim, model.config.num_interaction_heads) == (
        6,
        768,
        12,
    )
    assert json.loads(model.config.to_json_string())["vision_config"]["hidden_size"] == 32


@torch.no_grad()
def test_the_interaction_primitive_agrees_across_aligned_indexed_and_chunked_calls():
    """Aligned pairs (each layer projects its inputs), the same pairs by index (layer-1 cache) and any chunk size give
    the same pooled states and attention maps."""
    model = make_model()
    pixel_values, input_ids, attention_mask = random_inputs(3, 3)
    vision = model.get_image_features(pixel_values).last_hidden_state
    text = model.get_text_features(input_ids, attention_mask).last_hidden_state
    encoder = model.interaction_layers
    aligned = encoder(vision, text, attention_mask, output_attentions=True)
    index = torch.arange(3)
    for out in (
        encoder(vision, text, attention_mask, index, index, output_attentions=True),
        encoder(vision, text, attention_mask, output_attentions=True, pair_chunk_size=1),
        encoder(vision, text, attention_mask, index, index, output_attentions=True, pair_chunk_size=2),
    ):
        torch.testing.assert_close(out.pooled_vision, aligned.pooled_vision, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.pooled_text, aligned.pooled_text, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.text_attentions[1], aligned.text_attentions[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Give both image_index and text_index"):
        encoder(vision, text, attention_mask, index, None)
