"""LangBridge generation: visual tokens as weightings over vocabulary words, moved to another LM without training."""

import copy

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from conftest import make_model, random_inputs
from modeling_bridge.modeling_langbridge import (
    BridgeForConditionalGeneration,
    build_vocabulary_subset,
    single_token_id,
)


WORDS = ["[PAD]", "[UNK]", "[EOS]", "a", "red", "blue", "green", "circle", "square", "left", "of", "above", "the"]
SUBSET = ["red", "blue", "circle", "square", "left", "of"]


def word_tokenizer(words, order=None, eos_token="[EOS]"):
    """A word-level tokenizer; `order[i]` is the id of words[i] (default: i)."""
    order = order or list(range(len(words)))
    vocab = {word: order[i] for i, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token=eos_token)


def tiny_lm(vocab_size, width=16, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=width, n_layer=1, n_head=2, n_positions=40, eos_token_id=2,
                        pad_token_id=0, bos_token_id=2)  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def permuted_lm(lm, order):
    """The same LM with word i's embedding row moved to id order[i] (the head is tied to the embeddings)."""
    other = copy.deepcopy(lm)
    weight = lm.get_input_embeddings().weight
    with torch.no_grad():
        other.get_input_embeddings().weight[torch.tensor(order)] = weight
    return other


def _model(adapter_type="langbridge"):
    torch.manual_seed(0)
    lm, tokenizer = tiny_lm(len(WORDS)), word_tokenizer(WORDS)
    subset = SUBSET if adapter_type == "langbridge" else None
    model = BridgeForConditionalGeneration.from_parts(
        make_model(), lm, tokenizer, subset, adapter_type=adapter_type, adapter_hidden_size=32
    )
    return model.eval(), tokenizer


def test_adapter_weights_are_normalised_per_visual_token_and_readable_as_words():
    model, _ = _model()
    pixel_values = random_inputs(2, 1)[0]
    prefix, weights = model.prefix_embeddings(pixel_values)
    tokens = model.config.bridge_config.num_vision_positions
    assert prefix.shape == (2, tokens, 16) and weights.shape == (2, tokens, len(SUBSET))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, tokens))
    rows = model.language_model.get_input_embeddings().weight[model.subset_token_ids]
    torch.testing.assert_close(prefix, weights @ rows)
    words = model.top_words(pixel_values, k=3)
    assert len(words) == 2 and len(words[0]) == tokens and len(words[0][0]) == 3
    first = words[0][0]
    assert [w for w, _ in first] == [SUBSET[i] for i in weights[0, 0].topk(3).indices.tolist()]
    assert first[0][1] >= first[1][1] >= first[2][1] and first[0][1] == pytest.approx(
        float(weights[0, 0].max().detach())
    )


def test_transfer_to_the_same_rows_under_other_ids_gives_identical_prefix_and_generations():
    model, tokenizer = _model()
    pixel_values = random_inputs(2, 1)[0]
    order = list(reversed(range(len(WORDS))))
    other_lm, other_tokenizer = permuted_lm(model.language_model, order), word_tokenizer(WORDS, order)
    prompt = tokenizer(["a red", "the"], return_tensors="pt", padding=True)
    other_prompt = other_tokenizer(["a red", "the"], return_tensors="pt", padding=True)
    with torch.no_grad():
        prefix = model.prefix_embeddings(pixel_values)[0]
        new = model.generate(pixel_values, max_new_tokens=6, do_sample=False, eos_token_id=None)
        prompted = model.generate(pixel_values, **prompt, max_new_tokens=4, do_sample=False, eos_token_id=None)
    moved = copy.deepcopy(model)
    assert moved.transfer_to(other_lm, other_tokenizer) == 0
    assert moved.subset_token_ids.tolist() == [order[WORDS.index(w)] for w in SUBSET]
    with torch.no_grad():
        assert torch.equal(moved.prefix_embeddings(pixel_values)[0], prefix)
        moved_new = moved.generate(pixel_values, max_new_tokens=6, do_sample=False, eos_token_id=None)
        moved_prompted = moved.generate(
            pixel_values, **other_prompt, max_new_tokens=4, do_sample=False, eos_token_id=None
        )
    assert tokenizer.batch_decode(new) == other_tokenizer.batch_decode(moved_new)
    assert tokenizer.batch_decode(prompted) == other_tokenizer.batch_decode(moved_prompted)
    assert new.shape == (2, 6) and prompted.shape == (2, 4)  # new tokens only


def test_transfer_to_an_lm_with_another_width_and_missing_words(caplog):
    model, _ = _model()
    pixel_values = random_inputs(1, 1)[0]
    smaller = [w for w in WORDS if w != "left"]
    lm, tokenizer = tiny_lm(len(smaller), width=24, seed=3), word_tokenizer(smaller)
    assert model.transfer_to(lm, tokenizer) == 1  # "left" is dropped
    prefix, weights = model.prefix_embeddings(pixel_values)
    assert prefix.shape[-1] == 24 and model.config.lm_config.n_embd == 24
    assert torch.all(weights[..., SUBSET.index("left")] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    assert not any(p.requires_grad for p in model.language_model.parameters())  # still frozen

    none = word_tokenizer([w for w in WORDS if w not in SUBSET])
    with pytest.raises(ValueError, match="has none of the adapter's 6 subset words as a single token"):
        model.transfer_to(tiny_lm(len(WORDS) - 6), none)
    assert model.language_model is lm  # a failed transfer leaves the model as it was
    mlp, _ = _model("mlp")
    with pytest.raises(ValueError, match="Only a LangBridge adapter"):
        mlp.transfer_to(lm, tokenizer)


def test_captioning_loss_trains_the_adapter_not_the_frozen_lm():
    model, tokenizer = _model()
    model.train()
    pixel_values = random_inputs(2, 1)[0]
    text = tokenizer(["a red circle", "a blue square"], return_tensors="pt")
    out = model(pixel_values=pixel_values, **text, labels=text["input_ids"])
    logits = out.logits[:, model.config.bridge_config.num_vision_positions - 1 : -1]  # the text positions' predictions
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), text["input_ids"].flatten())
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.adapter.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.language_model.parameters())


def _trainable_lm_model():
    """The generation model with its LM trainable too and every dropout off (so that two runs can be compared)."""
    model, tokenizer = _model()
    model.language_model.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    text = tokenizer(["a red circle", "the blue square left"], return_tensors="pt", padding=True)
    batch = dict(pixel_values=random_inputs(2, 1)[0], **text)
    batch["labels"] = text["input_ids"].masked_fill(text["attention_mask"] == 0, -100)
    return model, batch


def _loss_and_grads(model, batch):
    model.train()
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(use_reentrant):
    model, batch = _trainable_lm_model()
    loss, grads = _loss_and_grads(model, batch)
    model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    checkpointed = {type(m).__name__ for m in model.modules() if getattr(m, "gradient_checkpointing", False)}
    assert {"GPT2Block", "BridgeInteractionLayer"} <= checkpointed  # the LM's blocks and BRIDGE's layers
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(checkpointed_loss, loss)
    assert checkpointed_grads.keys() == grads.keys() and any(n.startswith("language_model.") for n in grads)
    for name, grad in grads.items():  # the same operations recomputed: equal up to float32 rounding
        torch.testing.assert_close(checkpointed_grads[name], grad, msg=name)


def test_peft_lora_on_the_language_model_trains_and_reloads(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, batch = _trainable_lm_model()
    model.language_model.requires_grad_(False)
    lm_weight = model.language_model.transformer.h[0].attn.c_attn.weight.detach().clone()
    # GPT-2 keeps its attention projection in a Conv1D: fan_in_fan_out
    config = LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, modules_to_save=["adapter"])
    lora = get_peft_model(model, config)
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or ".adapter." in name for name in trainable)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # two steps: LoRA's B starts at zero, so A first moves in the second
        loss, _ = _loss_and_grads(lora, batch)
        optimizer.step()
    assert torch.equal(model.language_model.transformer.h[0].attn.c_attn.base_layer.weight, lm_weight)
    lora.eval()
    with torch.no_grad():
        logits = lora(**batch).logits
    lora.save_pretrained(tmp_path / "lora")

    reloaded = PeftModel.from_pretrained(_model()[0], tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, logits)
        base_logits = _model()[0](**batch).logits
    assert not torch.allclose(base_logits, logits)  # the trained LoRA and adapter change the output
    generated = reloaded.generate(pixel_values=batch["pixel_values"], max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, 3)


def test_round_trip_and_bad_inputs(tmp_path):
    from transformers import AutoModelForImageTextToText

    import modeling_bridge  # noqa: F401  (registers the Auto classes)

    model, tokenizer = _model()
    pixel_values = random_inputs(1, 1)[0]
    model.save_pretrained(tmp_path / "gen")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "gen").eval()
    assert type(reloaded) is BridgeForConditionalGeneration
    assert reloaded.subset_token_ids.tolist() == model.subset_token_ids.tolist()
    with torch.no_grad():
        assert torch.equal(reloaded.generate(pixel_values, max_new_tokens=3, do_sample=False),
                           model.generate(pixel_values, max_new_tokens=3, do_sample=False))  # fmt: skip

    with pytest.raises(ValueError, match="needs pixel_values"):
        model.generate(None, max_new_tokens=2)
    too_long = torch.full((1, 40), 3)
    with pytest.raises(ValueError, match="more than the language model's context of 40"):
        model(pixel_values=pixel_values, input_ids=too_long)
    with pytest.raises(ValueError, match="vocabulary_subset must be a non-empty list of words"):
        BridgeForConditionalGeneration.from_parts(make_model(), tiny_lm(len(WORDS)), tokenizer, [])


def test_vocabulary_subset_is_shared_and_ranked_by_the_corpus():
    first = word_tokenizer(WORDS)
    second = word_tokenizer([w for w in WORDS if w != "blue"])
    corpus = ["a red circle left of a blue square", "the red square", "A red circle."]
    assert single_token_id(first, "blue") == WORDS.index("blue") and single_token_id(second, "blue") is None
    # a: 3, red: 3, circle: 2, square: 2, then left, of, the (1 each); "blue" is not shared
    assert build_vocabulary_subset([first, second], corpus, 5) == ["a", "red", "circle", "square", "left"]
    filled = build_vocabulary_subset([first], ["red"], 3)
    assert filled[0] == "red" and len(filled) == 3 and all(w in WORDS for w in filled)


def test_loads_as_hub_remote_code(tmp_path):
    from conftest import run_as_hub_code

    model, _ = _model()
    pixel_values = random_inputs(1, 1)[0]
    model.save_pretrained(tmp_path / "gen")
    torch.save({"pixel_values": pixel_values}, tmp_path / "inputs.pt")
    out = run_as_hub_code(
        tmp_path,
        """
        import json, sys
        import torch
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        pixel_values = torch.load(sys.argv[2], weights_only=True)["pixel_values"]
        tokens = model.generate(pixel_values, max_new_tokens=4, do_sample=False)
        json.dump({"class": type(model).__name__, "tokens": tokens.tolist()}, open(sys.argv[3], "w"))
        """,
        tmp_path / "gen",
        tmp_path / "inputs.pt",
    )
    assert out["class"] == "BridgeForConditionalGeneration"
    with torch.no_grad():
        assert out["tokens"] == model.generate(pixel_values, max_new_tokens=4, do_sample=False).tolist()


def _processor(tokenizer):
    from transformers import ViTImageProcessor

    from conftest import IMAGE_SIZE
    from modeling_bridge import BridgeGenerationProcessor

    image_processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return BridgeGenerationProcessor(image_processor=image_processor, tokenizer=tokenizer)


def test_processor_masks_prompts_and_padding_and_batches_like_single_rows():
    from conftest import random_images

    model, tokenizer = _model()
    processor = _processor(tokenizer)
    images = random_images(2)
    batch = processor(images=images, text=["the", "a red circle"], labels=["red", "blue square"])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = [[WORDS.index(w) for w in words.split()] for words in ("the red", "a red circle blue square")]
    assert batch["input_ids"].tolist() == [ids[0] + [eos] + [pad] * 3, ids[1] + [eos]]
    assert batch["labels"].tolist() == [[-100, ids[0][1], eos, -100, -100, -100], [-100] * 3 + ids[1][3:] + [eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    with torch.no_grad():  # the padded row's loss and generations equal the row's own
        together = model(**batch).logits
        alone = model(**processor(images=images[:1], text=["the"], labels=["red"])).logits
        torch.testing.assert_close(together[0, 3:], alone[0], rtol=1e-4, atol=1e-5)  # its 3 pads moved in front
        prompts = processor(images=images, text=["the", "a red circle"])
        both = model.generate(**prompts, max_new_tokens=3, do_sample=False, eos_token_id=None)
        first = model.generate(**processor(images=images[:1], text=["the"]), max_new_tokens=3, do_sample=False,
                               eos_token_id=None)  # fmt: skip
    assert both[0].tolist() == first[0].tolist()
    with pytest.raises(ValueError, match="has no end-of-sequence token"):
        from modeling_bridge import BridgeGenerationProcessor

        BridgeGenerationProcessor(
            image_processor=processor.image_processor, tokenizer=word_tokenizer(WORDS, eos_token=None)
        )


PIPELINE_SCRIPT = """
import json, sys
from PIL import Image
from transformers import pipeline
captioner = pipeline("image-text-to-text", model=sys.argv[1], trust_remote_code=True)
image = Image.open(sys.argv[2])
messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "a red"}]}]
out = captioner(text=messages, max_new_tokens=3, do_sample=False, return_full_text=False)
json.dump({"generated": out[0]["generated_text"]}, open(sys.argv[3], "w"))
"""


def test_image_text_to_text_pipeline_installed_and_as_hub_code(tmp_path):
    from transformers import pipeline

    from conftest import random_images, run_as_hub_code

    model, tokenizer = _model()
    processor = _processor(tokenizer)
    model.save_pretrained(tmp_path / "gen")
    processor.save_pretrained(tmp_path / "gen")
    image = random_images(1)[0]
    image.save(tmp_path / "image.png")
    with torch.no_grad():
        tokens = model.generate(**processor(images=[image], text=["a red"]), max_new_tokens=3, do_sample=False)
    expected = tokenizer.decode(tokens[0], skip_special_tokens=True)
    captioner = pipeline("image-text-to-text", model=str(tmp_path / "gen"), trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "a red"}]}]
    out = captioner(text=messages, max_new_tokens=3, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"] == expected
    remote = run_as_hub_code(tmp_path, PIPELINE_SCRIPT, tmp_path / "gen", tmp_path / "image.png")
    assert remote["generated"] == expected


def test_frozen_parts_stay_in_eval_mode_while_the_adapter_trains():
    model, _ = _model()
    model.bridge.requires_grad_(False)
    model.train()
    assert model.adapter.training and not model.language_model.training and not model.bridge.training
    model.bridge.interaction_layers.requires_grad_(True)
    model.train()
    assert model.bridge.training and not model.bridge.vision_model.training  # a frozen tower stays in eval mode


def test_langbridge_experiment_runs_end_to_end(processor, tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import run_langbridge

    make_model().save_pretrained(tmp_path / "bridge")
    processor.save_pretrained(tmp_path / "bridge")
    summary = run_langbridge.main([
        "--model_name_or_path", str(tmp_path / "bridge"), "--output_dir", str(tmp_path / "out"), "--num_train", "16",
        "--lm_steps", "2", "--adapter_steps", "2", "--batch_size", "4", "--max_eval_samples", "4",
        "--width_a", "16", "--width_b", "24", "--adapter_hidden_size", "16",
    ])  # fmt: skip
    results = summary["results"]
    assert len(results) == 6 and all(0.0 <= r["attribute_accuracy"] <= 1.0 for r in results.values())
    assert summary["subset_words_dropped_by_transfer"] == 0 and "red" in summary["vocabulary_subset"]
    assert sorted(summary["lm_text_ceiling"]) == ["A", "B", "C"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["results"] == results
    assert (tmp_path / "out" / "top_words.png").is_file()


def test_caption_lm_text_trains_on_the_caption_only():
    """The caption LMs learn to read a scene only when the scene is context: labels -100 on it (and on padding)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import run_langbridge

    captions = ["a red circle left of a blue square", "a green triangle"]
    words = run_langbridge.SPECIAL_TOKENS + sorted({w for c in captions for w in c.split()})
    tokenizer = run_langbridge.word_tokenizer(words, seed=3)
    columns = run_langbridge.lm_corpus(tokenizer, captions, side=4, layouts=2, seed=0)
    assert len(columns["input_ids"]) == 4
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for ids, mask, labels in zip(columns["input_ids"], columns["attention_mask"], columns["labels"]):
        assert len(ids) == len(mask) == len(labels) == 16 + 1 + 8 + 1  # scene, eos, the longest caption, eos
        assert labels[:17] == [-100] * 17 and ids[16] == eos
        caption = tokenizer.decode([t for t, label in zip(ids, labels) if label != -100], skip_special_tokens=True)
        assert caption in captions
        real = sum(mask)
        assert ids[real - 1] == eos and labels[real - 1] == eos
        assert all(t == pad and label == -100 for t, label in zip(ids[real:], labels[real:]))


def test_from_parts_keeps_the_parts_weights_and_attention_implementation():
    lm, bridge = tiny_lm(len(WORDS)), make_model()
    before = {**{f"lm.{k}": v.clone() for k, v in lm.state_dict().items()},
              **{f"bridge.{k}": v.clone() for k, v in bridge.state_dict().items()}}  # fmt: skip
    implementation = lm.config._attn_implementation
    model = BridgeForConditionalGeneration.from_parts(bridge, lm, word_tokenizer(WORDS), SUBSET)
    after = {**{f"lm.{k}": v for k, v in model.language_model.state_dict().items()},
             **{f"bridge.{k}": v for k, v in model.bridge.state_dict().items()}}  # fmt: skip
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.language_model.config._attn_implementation == implementation is not None


def test_a_bridge_prompt_reads_the_vision_states_after_the_interaction_layers():
    model, _ = _model()
    pixel_values, input_ids, attention_mask = random_inputs(2, 2)
    with torch.no_grad():
        prompted = model.visual_states(pixel_values, input_ids, attention_mask)
        tower = model.visual_states(pixel_values)
        vision = model.bridge.get_image_features(pixel_values).last_hidden_state
        text = model.bridge.get_text_features(input_ids, attention_mask).last_hidden_state
        expected = model.bridge.interact(vision, text, attention_mask, output_last_hidden_state=True)
        # a prompt longer than the text tower takes is truncated once, mask included (no shape mismatch)
        limit = model.config.bridge_config.max_text_positions
        long_ids = torch.cat([input_ids, input_ids[:, 1:].repeat(1, limit)], dim=1)
        long_states = model.visual_states(pixel_values, long_ids, torch.ones_like(long_ids))
    project = model.bridge.interaction_layers[0].project_vision
    torch.testing.assert_close(prompted, project(expected.vision_last_hidden_state))
    assert prompted.shape == tower.shape and not torch.allclose(prompted, tower)
    assert long_states.shape == tower.shape
    with torch.no_grad():  # the adapter reads either (the prompted path once returned the tower's width: a crash)
        prefix, _ = model.prefix_embeddings(pixel_values, input_ids, attention_mask)
    assert prefix.shape == (2, tower.shape[1], 16)


# ---------------------------------------------------------------------------------------------- bad arguments


def test_generate_checks_the_prompt_and_the_new_tokens_against_the_lm_context():
    """The adapter's visual tokens, the prompt and the new tokens must fit the LM's context (GPT-2's n_positions,
    40 here): checked before generating, not an IndexError deep in the LM's position embeddings."""
    from transformers import GenerationConfig

    model, tokenizer = _model()
    pixel_values = random_inputs(1, 1)[0]
    visual = model.config.bridge_config.num_vision_positions
    room = 40 - visual + 1  # the last new token is never fed back
    prefix = f"The {visual} prompt positions ({visual} visual tokens from the adapter + 0 text tokens) leave room for "
    with torch.no_grad():
        assert model.generate(pixel_values, max_new_tokens=room, do_sample=False, eos_token_id=None).shape == (1, room)
        with pytest.raises(ValueError) as error:
            model.generate(pixel_values, max_new_tokens=room + 1, do_sample=False)
        assert str(error.value) == (
            f"{prefix}at most {room} new tokens in the language model's context of 40 positions (n_positions), but "
            f"max_new_tokens={room + 1} asks for {room + 1}: shorten the prompt or pass max_new_tokens={room} or "
            "fewer."
        )
        with pytest.raises(ValueError, match=rf"but max_length=50 \(the prompt and the new tokens together\) asks "
                                             rf"for {50 - visual}: .* max_new_tokens={room} or fewer\.$"):  # fmt: skip
            model.generate(pixel_values, max_length=50)
        with pytest.raises(ValueError, match=r"max_new_tokens=30 \(from the generation_config passed\) asks for 30"):
            model.generate(pixel_values, generation_config=GenerationConfig(max_new_tokens=30))
        with pytest.raises(ValueError, match=f"max_length={visual} counts the prompt, .* no token is left"):
            model.generate(pixel_values, max_length=visual)
        prompt = torch.full((1, 20), WORDS.index("red"))  # no length given: transformers' default of 20 new tokens
        with pytest.raises(ValueError, match=rf"The {visual + 20} prompt positions \({visual} visual tokens from the "
                                             rf"adapter \+ 20 text tokens\) leave room for at most {room - 20} new "
                                             r"tokens .* but transformers' default generation length"):  # fmt: skip
            model.generate(pixel_values, input_ids=prompt)
        for bad in (0, -1, 2.5):
            with pytest.raises(ValueError, match=rf"^max_new_tokens must be a positive integer, got {bad}\.$"):
                model.generate(pixel_values, max_new_tokens=bad)
        model.language_model.generation_config.max_new_tokens = 64  # the LM's own generation config counts too
        with pytest.raises(ValueError, match=r"max_new_tokens=64 \(from the language model's generation_config\)"):
            model.generate(pixel_values)


def test_image_text_to_text_pipeline_checks_the_new_tokens_against_the_lm_context(tmp_path):
    from transformers import pipeline

    from conftest import random_images

    model, tokenizer = _model()
    model.save_pretrained(tmp_path / "gen")
    _processor(tokenizer).save_pretrained(tmp_path / "gen")
    captioner = pipeline("image-text-to-text", model=str(tmp_path / "gen"), trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": random_images(1)[0]},
                                             {"type": "text", "text": "a red"}]}]  # fmt: skip
    visual = model.config.bridge_config.num_vision_positions
    room = 40 - visual - 2 + 1
    expected = (
        rf"^The {visual + 2} prompt positions \({visual} visual tokens from the adapter \+ 2 text tokens\) leave room "
        rf"for at most {room} new tokens in the language model's context of 40 positions \(n_positions\), but "
        rf"max_new_tokens=(256|30) asks for (256|30): shorten the prompt or pass max_new_tokens={room} or fewer\.$"
    )
    with pytest.raises(ValueError, match=expected):  # the pipeline's default max_new_tokens, 256
        captioner(text=messages, return_full_text=False)
    with pytest.raises(ValueError, match=expected):
        captioner(text=messages, max_new_tokens=30, return_full_text=False)
    assert captioner(text=messages, max_new_tokens=room, do_sample=False, return_full_text=False)


def test_top_words_and_the_other_entry_points_check_their_arguments():
    model, tokenizer = _model()
    pixel_values = random_inputs(1, 1)[0]
    for k in (-1, 0, 2.5, len(SUBSET) + 1, True, "3"):
        with pytest.raises(ValueError) as error:
            model.top_words(pixel_values, k=k)
        assert str(error.value) == (
            f"top_words: k must be an integer from 1 to {len(SUBSET)} (the words of the adapter's vocabulary "
            f"subset), got {k!r}."
        )
    assert len(model.top_words(pixel_values, k=len(SUBSET))[0][0]) == len(SUBSET)
    with pytest.raises(ValueError, match=r"^build_vocabulary_subset: size must be a positive integer, got 2\.5\.$"):
        build_vocabulary_subset([tokenizer], ["a red circle"], 2.5)
    with pytest.raises(ValueError, match="takes the corpus as a list of texts, got one string"):
        build_vocabulary_subset([tokenizer], "a red circle", 2)
    with pytest.raises(ValueError, match=rf"takes a list of tokenizers .* got one {type(tokenizer).__name__}; pass"):
        build_vocabulary_subset(tokenizer, ["a red circle"], 2)
    for call in (
        lambda: BridgeForConditionalGeneration.from_parts(make_model(), tiny_lm(len(WORDS)), None, SUBSET),
        lambda: copy.deepcopy(model).transfer_to(tiny_lm(len(WORDS)), None),
    ):
        with pytest.raises(ValueError, match="needs the language model's tokenizer, .* got NoneType"):
            call()
    prompt = tokenizer(["a red"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\) but input_ids \(1, 2\)"):
        model.generate(pixel_values, input_ids=prompt["input_ids"], attention_mask=torch.ones(1, 3, dtype=torch.long))


def test_vocabulary_subset_says_when_the_corpus_cannot_fill_it(caplog):
    """A corpus with fewer distinct shared words than `size` is filled up from the first tokenizer's vocabulary with
    words that never occur in the corpus: a warning names them (and says so when even the vocabulary runs out)."""
    tokenizer = word_tokenizer(WORDS)
    with caplog.at_level("WARNING"):
        assert build_vocabulary_subset([tokenizer], ["a red circle", "The red circle."], 3) == ["circle", "red", "a"]
    assert "build_vocabulary_subset" not in caplog.text  # the corpus fills it: nothing to say

    caplog.clear()
    with caplog.at_level("WARNING"):
        filled = build_vocabulary_subset([tokenizer], ["red circle"], 6)
    assert filled == ["circle", "red", "a", "blue", "green", "square"]
    assert caplog.messages == [
        "build_vocabulary_subset: the corpus has 2 distinct words that are a single token of every tokenizer, fewer "
        "than size=6. Added 4 words of the first tokenizer's vocabulary, in id order, that are not in the corpus: a, "
        "blue, green, square. Pass a corpus with more distinct words, or size=2 to keep the corpus words only."
    ]

    caplog.clear()
    with caplog.at_level("WARNING"):
        everything = build_vocabulary_subset([tokenizer], ["red circle"], 20)
    assert len(everything) == 10 and everything[:2] == ["circle", "red"]
    (message,) = caplog.messages
    assert "Added 8 words" in message and "a, blue, green, square, left, of, above, the." in message
    assert "No other word qualifies: the subset has 10 words, not 20." in message

    caplog.clear()
    with caplog.at_level("WARNING"):
        assert build_vocabulary_subset([tokenizer], ["zebra"], 2) == ["a", "red"]
    (message,) = caplog.messages
    assert message.startswith("build_vocabulary_subset: the corpus has 0 distinct words")
    assert message.endswith("Pass a corpus with more distinct words.")  # no size=0 advice
