import math

import pytest
import torch
import torch.nn.functional as F

from conftest import IMAGE_SIZE, TEXT_CONFIGS, VISION_CONFIGS, make_config, make_model, random_images, random_inputs
from modeling_bridge import BridgeModel


SCORES = ["unimodal", "fused", "itm"]


def reference_pair_scores(model, pixel_values, input_ids, attention_mask):
    """The scoring rule (cross-attention layers, then the fused and ITM scores) written out for one (image, text)
    pair with plain tensor ops, reading the model's weights. Returns (fused logit, itm logits). Padded text tokens are
    dropped instead of masked."""
    keep = attention_mask[0].bool()
    h_v = model.vision_model(pixel_values=pixel_values).last_hidden_state[0]
    h_t = model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[0][keep]
    cfg = model.config
    heads, dh = cfg.num_interaction_heads, cfg.shared_dim // cfg.num_interaction_heads
    n_t, n_v = h_t.shape[0], h_v.shape[0]

    def attend(att, z_q, z_kv, pos):
        q = att.q_proj(z_q).view(-1, heads, dh).transpose(0, 1)
        k = att.k_proj(z_kv).view(-1, heads, dh).transpose(0, 1)
        v = att.v_proj(z_kv).view(-1, heads, dh).transpose(0, 1)
        tau = math.log1p(math.exp(att.temperature.value.item()))
        scores = (q / q.norm(dim=-1, keepdim=True)) @ (k / k.norm(dim=-1, keepdim=True)).transpose(-1, -2) / tau
        a = torch.softmax(scores + pos, dim=-1)
        return att.o_proj((a @ v).transpose(0, 1).reshape(-1, heads * dh))

    for layer in model.interaction_layers:
        z_v = layer.vision_to_shared(layer.vision_norm(h_v))
        z_t = layer.text_to_shared(layer.text_norm(h_t))
        o_t = attend(layer.text_attention, z_t, z_v, layer.text_attention.position_bias[:n_t, :n_v])
        o_v = attend(layer.vision_attention, z_v, z_t, layer.vision_attention.position_bias[:n_v, :n_t])
        h_t = h_t + torch.sigmoid(layer.text_gate.value) * layer.shared_to_text(o_t)
        h_v = h_v + torch.sigmoid(layer.vision_gate.value) * layer.shared_to_vision(o_v)
    last = model.interaction_layers[-1]
    z_v = last.vision_to_shared(last.vision_norm(h_v))
    z_t = last.text_to_shared(last.text_norm(h_t))
    c_v = F.normalize(model.vision_cross_projection(z_v.mean(0)), dim=-1)
    c_t = F.normalize(model.text_cross_projection(z_t.mean(0)), dim=-1)
    fused = model.logit_scale.value.exp() * (c_v @ c_t)
    itm = model.itm_head(c_v[None], c_t[None])[0]
    return fused, itm


@torch.no_grad()
def test_fused_and_itm_match_the_written_out_math(model):
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    out_f = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score="fused")
    out_i = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score="itm")
    for i in range(2):
        for j in range(3):
            fused, itm = reference_pair_scores(
                model, pixel_values[i : i + 1], input_ids[j : j + 1], attention_mask[j : j + 1]
            )
            torch.testing.assert_close(out_f.logits_per_image[i, j], fused, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out_i.itm_logits[i, j], itm, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out_i.logits_per_image[i, j], itm[1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_output_shapes_and_statistics(model):
    pixel_values, input_ids, attention_mask = random_inputs(4, 5)
    out = model(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        output_hidden_states=True,
        output_attentions=True,
    )
    n_v = (IMAGE_SIZE // 8) ** 2 + 1
    assert out.logits_per_image.shape == (4, 5)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    assert out.itm_logits.shape == (4, 5, 2)
    assert out.image_embeds.shape == (4, 8) and out.text_embeds.shape == (5, 8)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    assert out.cross_image_embeds.shape == (4, 5, 8)
    assert len(out.interaction_vision_hidden_states) == 3
    assert out.interaction_vision_hidden_states[-1].shape == (4, 5, n_v, 32)
    assert out.interaction_text_hidden_states[-1].shape == (4, 5, 7, 24)
    assert out.interaction_text_attentions[0].shape == (4, 5, 2, 7, n_v)
    assert out.interaction_vision_attentions[0].shape == (4, 5, 2, n_v, 7)
    # attention never goes to padding (row 1 has its last 2 tokens padded)
    assert out.interaction_vision_attentions[0][:, 1, ..., 5:].abs().max() == 0
    torch.testing.assert_close(out.interaction_vision_attentions[1].sum(-1), torch.ones(4, 5, 2, n_v))
    assert out.gate_values.shape == (2, 2) and out.temperatures.shape == (2, 2)


@torch.no_grad()
def test_fresh_model_gates_and_temperatures_start_at_their_init():
    model = make_model(randomize=False)
    out = model(input_ids=torch.tensor([[5, 6, 7]]), pixel_values=torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    torch.testing.assert_close(out.gate_values, torch.full((2, 2), 1 / (1 + math.exp(2.2))))
    torch.testing.assert_close(out.temperatures, torch.full((2, 2), 0.1))
    torch.testing.assert_close(model.logit_scale.value, torch.tensor(2.6592))
    assert not hasattr(model, "itc_alpha")  # a pre-training parameter: BridgeForPreTraining holds it


@pytest.mark.parametrize("score", SCORES)
@torch.no_grad()
def test_scores_do_not_depend_on_the_rest_of_the_batch(model, score):
    pixel_values, input_ids, attention_mask = random_inputs(4, 5)
    full = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score=score)
    assert full.logits_per_image.shape == (4, 5)
    for i in range(4):
        for j in range(5):
            single = model(
                input_ids=input_ids[j : j + 1],
                pixel_values=pixel_values[i : i + 1],
                attention_mask=attention_mask[j : j + 1],
                score=score,
            )
            torch.testing.assert_close(
                full.logits_per_image[i, j], single.logits_per_image[0, 0], atol=1e-5, rtol=1e-5
            )
    # and a reordered batch gives the reordered matrix
    perm_i, perm_j = torch.tensor([2, 0, 3, 1]), torch.tensor([4, 1, 0, 3, 2])
    shuffled = model(
        input_ids=input_ids[perm_j],
        pixel_values=pixel_values[perm_i],
        attention_mask=attention_mask[perm_j],
        score=score,
    )
    torch.testing.assert_close(
        shuffled.logits_per_image, full.logits_per_image[perm_i][:, perm_j], atol=1e-5, rtol=1e-5
    )


@torch.no_grad()
def test_pair_chunk_size_does_not_change_scores():
    pixel_values, input_ids, attention_mask = random_inputs(3, 4)
    logits = []
    for chunk in (1, 5, 100):
        model = make_model(pair_chunk_size=chunk)
        logits.append(
            model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits_per_image
        )
    torch.testing.assert_close(logits[0], logits[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits[0], logits[2], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("score", SCORES)
@torch.no_grad()
def test_padding_never_changes_a_texts_score(model, score):
    pixel_values, _, _ = random_inputs(3, 1)
    ids = torch.tensor([[2, 5, 6, 7, 10, 13, 3]])
    short = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values, score=score)
    for total in (9, 16):
        padded = torch.zeros(1, total, dtype=torch.long)
        padded[0, :7] = ids
        mask = (padded != 0).long()
        padded[0, 7:] = 11  # garbage under the mask must not matter either
        long = model(input_ids=padded, attention_mask=mask, pixel_values=pixel_values, score=score)
        torch.testing.assert_close(long.logits_per_image, short.logits_per_image, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_every_text_length_up_to_max_text_positions(model):
    pixel_values, _, _ = random_inputs(1, 1)
    bias = model.interaction_layers[0].text_attention.position_bias
    assert bias.shape == (16, (IMAGE_SIZE // 8) ** 2 + 1)
    for length in range(1, 17):
        ids = torch.randint(5, 20, (2, length))
        out = model(input_ids=ids, pixel_values=pixel_values)
        assert out.logits_per_image.shape == (1, 2) and torch.isfinite(out.logits_per_image).all()


@torch.no_grad()
def test_longer_texts_are_truncated_as_the_tokenizer_would(model, processor, caplog):
    """Texts past max_text_positions (16) keep their first 15 tokens and their last (end) token, as the tokenizer's
    truncation=True does, with a warning; the padded short text in the same batch is unchanged."""
    images = random_images(2)
    texts = ["a red circle left of a blue square . " * 3, "a green triangle"]
    long_inputs = processor(images=images, text=texts, return_tensors="pt")
    assert long_inputs["input_ids"].shape[1] > 16
    cut = processor(images=images, text=texts, truncation=True, max_length=16, return_tensors="pt")
    with caplog.at_level("WARNING"):
        got = model(**long_inputs).logits_per_image
    assert "truncated to 16 tokens" in caplog.text
    torch.testing.assert_close(got, model(**cut).logits_per_image, rtol=1e-5, atol=1e-6)
    alone = processor(images=images, text=texts[1:], return_tensors="pt")
    torch.testing.assert_close(got[:, 1], model(**alone).logits_per_image[:, 0], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_positional_bias_reaches_the_scores():
    pixel_values, input_ids, attention_mask = random_inputs(2, 2)
    model = make_model()
    before = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits_per_image
    model.interaction_layers[0].text_attention.position_bias[:, 0] += 3.0
    after = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits_per_image
    assert (after - before).abs().max() > 1e-4


@torch.no_grad()
def test_layer_input_source_with_one_layer_is_a_bi_encoder_and_output_source_is_not():
    """The original pools the last layer's *input*: with one layer the fused embeddings ignore the partner."""
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    for source, interacts in (("layer_input", False), ("output", True)):
        model = make_model(num_interaction_layers=1, cross_embed_source=source)
        out = model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, output_hidden_states=True
        )
        spread = (out.cross_image_embeds - out.cross_image_embeds[:, :1]).abs().max()
        assert (spread > 1e-4) == interacts, source


@torch.no_grad()
@pytest.mark.parametrize("num_layers", [1, 2])
def test_layer_input_source_skips_the_last_layers_attention_without_changing_scores(num_layers):
    """ "layer_input" pools the last layer's input projection, which its attention does not touch: scores equal the
    full stack's (run when its states are requested), with the last layer's attention not run at all."""
    model = make_model(num_interaction_layers=num_layers, cross_embed_source="layer_input")
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    calls = []
    last = model.interaction_layers[-1]
    for attention in (last.text_attention, last.vision_attention):
        attention.register_forward_hook(lambda *args: calls.append(1))

    def fused(**flags):
        return model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score="fused", **flags
        )

    full = fused(output_hidden_states=True)
    assert calls  # the full stack runs it
    calls.clear()
    skipped = fused()
    assert calls == []
    torch.testing.assert_close(skipped.logits_per_image, full.logits_per_image, atol=0, rtol=0)
    # aligned pairs (no layer-1 cache) as pre-training's positives run them
    vision = model.get_image_features(pixel_values).last_hidden_state
    text = model.get_text_features(input_ids[:2], attention_mask[:2]).last_hidden_state
    aligned = model.interaction_layers(vision, text, attention_mask[:2])
    reference = model.interaction_layers(vision, text, attention_mask[:2], output_last_hidden_state=True)
    torch.testing.assert_close(aligned.pooled_vision, reference.pooled_vision, atol=0, rtol=0)
    torch.testing.assert_close(aligned.pooled_text, reference.pooled_text, atol=0, rtol=0)


@torch.no_grad()
def test_eager_and_sdpa_attention_agree():
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    sdpa = make_model(attn_implementation="sdpa")
    eager = make_model(attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    a = sdpa(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits_per_image
    b = eager(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits_per_image
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_unimodal_features_match_forward(model):
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    image = model.get_image_features(pixel_values=pixel_values)
    text = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score="unimodal")
    torch.testing.assert_close(image.pooler_output, out.image_embeds)
    torch.testing.assert_close(text.pooler_output, out.text_embeds)
    torch.testing.assert_close(
        out.logits_per_image, model.logit_scale.value.exp() * image.pooler_output @ text.pooler_output.t()
    )
    assert image.last_hidden_state.shape == (2, 17, 32) and text.last_hidden_state.shape == (3, 7, 24)
    only_images = model(pixel_values=pixel_values)
    assert only_images.logits_per_image is None and only_images.image_embeds.shape == (2, 8)


def test_contrastive_loss_when_requested(model):
    pixel_values, input_ids, attention_mask = random_inputs(3, 3)
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_loss=True)
    logits = out.logits_per_image
    target = torch.arange(3)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    torch.testing.assert_close(out.loss, expected)
    assert model(input_ids=input_ids, pixel_values=pixel_values).loss is None
    with pytest.raises(ValueError, match="as many images as texts"):
        model(input_ids=input_ids[:2], pixel_values=pixel_values, return_loss=True)


@pytest.mark.parametrize("vision", sorted(VISION_CONFIGS))
@pytest.mark.parametrize("text", sorted(TEXT_CONFIGS))
def test_each_tower_type_builds_runs_forward_and_backward(vision, text):
    model = make_model(vision=vision, text=text).train()
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score="fused")
    n_v = model.config.num_vision_positions
    assert n_v == (IMAGE_SIZE // 8) ** 2 + (0 if vision.startswith(("siglip", "resnet", "convnext")) else 1)
    assert out.vision_model_output.last_hidden_state.shape[1] == n_v
    (out.logits_per_image.sum() + out.itm_logits.sum()).backward()
    for name in (
        "interaction_layers.0.text_attention.q_proj.weight",
        "interaction_layers.1.vision_gate.value",
        "interaction_layers.0.vision_attention.position_bias",
        "vision_cross_projection.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    tower_grads = [p.grad for n, p in model.named_parameters() if n.startswith(("vision_model.", "text_model."))]
    assert any(g is not None and g.abs().sum() > 0 for g in tower_grads)


def test_towers_passed_in_keep_their_weights_bit_for_bit():
    torch.manual_seed(1)
    from transformers import AutoModel

    config = make_config()
    vision = AutoModel.from_config(config.vision_config, add_pooling_layer=False)
    text = AutoModel.from_config(config.text_config, add_pooling_layer=False)
    with torch.no_grad():  # weights that no initialiser would produce
        for p in list(vision.parameters()) + list(text.parameters()):
            p.copy_(torch.randn_like(p))
    expected = {
        **{f"vision_model.{k}": v.clone() for k, v in vision.state_dict().items()},
        **{f"text_model.{k}": v.clone() for k, v in text.state_dict().items()},
    }
    model = BridgeModel(config, vision_model=vision, text_model=text)
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    # built from the towers alone, too
    model = BridgeModel(vision_model=vision, text_model=text)
    assert model.config.vision_config.hidden_size == 32 and model.config.num_interaction_layers == 6
    assert torch.equal(
        model.state_dict()["text_model.embeddings.word_embeddings.weight"],
        expected["text_model.embeddings.word_embeddings.weight"],
    )


@torch.no_grad()
def test_bf16_forward_on_cpu():
    model = make_model().to(torch.bfloat16)
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    ref = make_model()(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    for score in SCORES:
        out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, score=score)
        assert out.logits_per_image.dtype == torch.bfloat16 and torch.isfinite(out.logits_per_image.float()).all()
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    torch.testing.assert_close(out.logits_per_image.float(), ref.logits_per_image, atol=0.5, rtol=0.1)


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("cross_embed_source", ["output", "layer_input"])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant, cross_embed_source):
    """Reentrant checkpointing tracks only positional tensor inputs and outputs: the first layer's precomputed
    projections and the `shared` states pooled by "layer_input" must travel as such, or backward fails / loses them."""
    pixel_values, input_ids, attention_mask = random_inputs(2, 2)
    grads = []
    for checkpointing in (False, True):
        # dropout is 0 in the tiny config, so train mode is deterministic
        model = make_model(cross_embed_source=cross_embed_source).train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
            assert all(layer.gradient_checkpointing for layer in model.interaction_layers)
        out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_loss=True)
        (out.loss + out.itm_logits.sum()).backward()
        # No gradient = zero gradient: reentrant checkpointing gives zeros where the plain graph gives None (the
        # last layer's attention, which "layer_input" never pools).
        grads.append(
            {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        )
    assert sum(bool(g.abs().sum() > 0) for g in grads[0].values()) > 50
    for name, reference in grads[0].items():
        # Recomputation sums in another order: float32 noise in units of the tensor's largest entries. A tower bias
        # gradient sums ~70 per-token terms (2 x 2 pairs x 17 tokens) that are larger than the result (they cancel;
        # 1/tau = 10 scales the attention's share), so allow ~80 ulps of the largest entry (1e-5), far below any
        # real difference (a lost gradient is of the size of the entry itself).
        scale = reference.abs().max().item()
        torch.testing.assert_close(grads[1][name], reference, atol=1e-5 * max(scale, 1.0), rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, px, ids, am: m(), "Neither pixel_values nor input_ids"),
        (
            lambda m, px, ids, am: m(input_ids=ids, pixel_values=px, attention_mask=am[:2]),
            r"attention_mask has shape \(2, 7\) but input_ids has \(5, 7\)",
        ),
        (lambda m, px, ids, am: m(input_ids=ids, pixel_values=px[0]), r"pixel_values must have shape \(batch, 3"),
        (lambda m, px, ids, am: m(input_ids=ids, pixel_values=px[:, :1]), r"pixel_values must have shape"),
        (
            lambda m, px, ids, am: m(input_ids=ids, pixel_values=px[..., :16, :16]),
            r"\(16, 16\) pixels but the vision tower expects \(32, 32\)",
        ),
        (lambda m, px, ids, am: m(input_ids=ids, pixel_values=px, score="cross"), "Unknown score='cross'"),
        (lambda m, px, ids, am: m(input_ids=ids[0], pixel_values=px), r"input_ids must have shape \(batch"),
        (lambda m, px, ids, am: m(input_ids=ids[:0], pixel_values=px), "No text given"),
    ],
)
def test_bad_input_raises_a_clear_error(model, call, message):
    pixel_values, input_ids, attention_mask = random_inputs(4, 5)
    with pytest.raises(ValueError, match=message):
        call(model, pixel_values, input_ids, attention_mask)


def test_text_longer_than_the_text_tower_is_refused_by_the_config():
    with pytest.raises(ValueError, match=r"max_text_positions=80: exceeds the 64 positions of the text tower"):
        make_config(max_text_positions=80)
    with pytest.raises(ValueError, match=r"exceeds the 64 positions of the text tower \(roberta\)"):
        make_config(text="roberta", max_text_positions=65)


def test_interaction_stack_never_synchronises_with_the_host():
    """Meta tensors have no data: any `.item()` / `.tolist()` / data-dependent branch in the pairwise path raises."""
    model = make_model().to("meta")
    vision = torch.empty(3, 17, 32, device="meta")
    text = torch.empty(4, 7, 24, device="meta")
    mask = torch.ones(4, 7, dtype=torch.long, device="meta")
    out = model.pairwise_interaction(vision, text, mask, output_attentions=True, output_hidden_states=True)
    assert out["fused_logits"].shape == (3, 4) and out["itm_logits"].shape == (3, 4, 2)
    assert out["vision_attentions"][1].shape == (3, 4, 2, 17, 7)
    gates, temperatures = model.interaction_statistics()
    assert gates.device.type == "meta" and temperatures.shape == (2, 2)


@torch.no_grad()
def test_tuple_outputs(model):
    pixel_values, input_ids, attention_mask = random_inputs(2, 3)
    as_dict = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    as_tuple = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits_per_image)
    assert isinstance(as_tuple[list(as_dict.keys()).index("vision_model_output")], tuple)
