"""Conversion of original-code checkpoints: key mapping, parameter equality, output equality with an independent
re-implementation of the original forward, and the error messages."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BertConfig, BertModel, BertTokenizer, ViTConfig, ViTImageProcessor, ViTModel

from conftest import IMAGE_SIZE, VOCAB
from modeling_bridge import BridgeModel
from modeling_bridge.original_checkpoint import (
    ConversionError,
    _expected_checkpoint_tensors,
    bridge_to_original_key,
    check_model_source,
    convert_original_checkpoint,
    looks_like_local_path,
    original_to_bridge_key,
)


ROOT = Path(__file__).resolve().parents[1]
NUM_LAYERS, SHARED, HEADS, PROJ = 2, 16, 2, 8
TEXT_LEN = 7  # the text length the original's positional bias was created for
DV, DT = 32, 24
NV = (IMAGE_SIZE // 8) ** 2 + 1


class NotATensor:
    """A Python object in a checkpoint: torch.load(weights_only=True) refuses to build it."""


def load_cli(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "conversion" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """Pretrained-like tiny ViT and BERT saved as the original loads them (with pooling layers), plus processors."""
    root = tmp_path_factory.mktemp("original")
    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(
            hidden_size=DV,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=IMAGE_SIZE,
            patch_size=8,
        )
    )
    bert = BertModel(
        BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=DT,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=64,
        )
    )
    vit.save_pretrained(root / "towers" / "vit")
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(root / "towers" / "vit")
    bert.save_pretrained(root / "towers" / "bert")
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(root / "towers" / "bert")
    return root


def original_state_dict(towers, seed=0):
    """A state dict with the original code's names and shapes: fine-tuned towers (the saved towers' on-disk tensors,
    perturbed) and random interaction layers and heads, positional biases for TEXT_LEN tokens."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    sd = {}
    for prefix, folder in (("vision_encoder.vit.", "vit"), ("text_encoder.bert.", "bert")):
        for key, tensor in load_file(towers / "towers" / folder / "model.safetensors").items():
            sd[prefix + key] = tensor + rand(*tensor.shape) * 0.1
    linear = lambda name, n_in, n_out: sd.update({f"{name}.weight": rand(n_out, n_in), f"{name}.bias": rand(n_out)})  # noqa: E731
    norm = lambda name, n: sd.update({f"{name}.weight": 1 + rand(n), f"{name}.bias": rand(n)})  # noqa: E731
    for i in range(NUM_LAYERS):
        p = f"interaction_layers.{i}."
        norm(p + "vision_norm", DV)
        norm(p + "text_norm", DT)
        linear(p + "vision_to_shared", DV, SHARED)
        linear(p + "text_to_shared", DT, SHARED)
        for name in (
            "Q_text",
            "K_vision_to_text",
            "V_vision_to_text",
            "O_text",
            "Q_vision",
            "K_text_to_vision",
            "V_text_to_vision",
            "O_vision",
        ):
            linear(p + name, SHARED, SHARED)
        sd[p + "tau_text_param"] = torch.tensor(0.3 + 0.1 * i)
        sd[p + "tau_vision_param"] = torch.tensor(-0.2 + 0.1 * i)
        sd[p + "bias_text_from_vision"] = rand(TEXT_LEN, NV)
        sd[p + "bias_vision_from_text"] = rand(NV, TEXT_LEN)
        linear(p + "shared_to_text", SHARED, DT)
        linear(p + "shared_to_vision", SHARED, DV)
        sd[p + "gate_text_bias"] = torch.tensor(0.4 - i)
        sd[p + "gate_vision_bias"] = torch.tensor(-0.3 + i)
    linear("vision_pool_proj_cross", SHARED, PROJ)
    linear("text_pool_proj_cross", SHARED, PROJ)
    linear("vision_pool_proj_uni", DV, PROJ)
    linear("text_pool_proj_uni", DT, PROJ)
    sd["logit_scale"] = torch.tensor(2.1)
    sd["itc_alpha"] = torch.tensor(0.7)
    for head, n_in, n_out in (("mlm_head", DT, len(VOCAB)), ("mim_head", DV, DV)):
        linear(f"{head}.0", n_in, n_in)
        norm(f"{head}.1", n_in)
        linear(f"{head}.3", n_in, n_out)
    linear("itm_head.0", 2 * PROJ + 1, PROJ)
    linear("itm_head.3", PROJ, 2)
    return sd


def original_yaml(towers, **changes):
    config = {
        "vision_config": {"model_name": "./towers/vit", "hidden_dim": DV, "freeze": False},
        "text_config": {"model_name": "./towers/bert", "hidden_dim": DT, "freeze": False},
        "cross_modal_config": {
            "shared_dim": SHARED,
            "num_layers": NUM_LAYERS,
            "num_heads": HEADS,
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "use_positional_bias": True,
            "init_temperature": 1.0,
            "init_gate_bias": -2.2,
            "use_caption_decoder": False,
        },
        "pooling_config": {"type": "mean", "projection_dim": PROJ},
        "batch_size": 4,
    }
    for section, value in changes.items():
        if value is None:
            config.pop(section)
        else:
            config[section] = {**config[section], **value}
    path = towers / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_checkpoint(path, sd, wrapped=True):
    torch.save({"model": sd, "config": {"note": "training config"}, "epoch": 3} if wrapped else sd, path)
    return path


@pytest.fixture(scope="module")
def converted(towers):
    sd = original_state_dict(towers)
    ckpt = write_checkpoint(towers / "checkpoint_best.pth", sd)
    model, processor, parsed = convert_original_checkpoint(ckpt, original_yaml(towers))
    return sd, model, processor, parsed


# ----------------------------------------------------------------------------------------------------------------
# An independent re-implementation of the original forward (CrossModalVLM in eval mode), from reading its code.
# ----------------------------------------------------------------------------------------------------------------


class OriginalReference:
    def __init__(self, sd, towers, tmp):
        self.sd = sd
        # The original holds HF ViTModel / BertModel (with poolers) inside wrappers; load them with the checkpoint's
        # tower tensors the way transformers loads any checkpoint.
        self.vit = self._tower(ViTModel, "vision_encoder.vit.", towers / "towers" / "vit", tmp / "ref_vit")
        self.bert = self._tower(BertModel, "text_encoder.bert.", towers / "towers" / "bert", tmp / "ref_bert")

    def _tower(self, cls, prefix, source, folder):
        cls.config_class.from_pretrained(source).save_pretrained(folder)
        save_file(
            {k[len(prefix) :]: v.contiguous() for k, v in self.sd.items() if k.startswith(prefix)},
            folder / "model.safetensors",
            metadata={"format": "pt"},
        )
        return cls.from_pretrained(folder).eval()

    def linear(self, x, name):
        return F.linear(x, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"])

    def layer_norm(self, x, name):
        w = self.sd[f"{name}.weight"]
        return F.layer_norm(x, w.shape, w, self.sd[f"{name}.bias"])

    def attention(self, q, k, v, tau, bias):
        b, nq, _ = q.shape
        split = lambda x: x.view(b, x.shape[1], HEADS, SHARED // HEADS).transpose(1, 2)  # noqa: E731
        q, k, v = F.normalize(split(q), dim=-1, eps=1e-8), F.normalize(split(k), dim=-1, eps=1e-8), split(v)
        scores = q @ k.transpose(-2, -1) / tau + bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, nq, SHARED)

    def layer(self, i, hv, ht):
        p = f"interaction_layers.{i}."
        zv = self.linear(self.layer_norm(hv, p + "vision_norm"), p + "vision_to_shared")
        zt = self.linear(self.layer_norm(ht, p + "text_norm"), p + "text_to_shared")
        at = self.linear(
            self.attention(
                self.linear(zt, p + "Q_text"),
                self.linear(zv, p + "K_vision_to_text"),
                self.linear(zv, p + "V_vision_to_text"),
                F.softplus(self.sd[p + "tau_text_param"]),
                self.sd[p + "bias_text_from_vision"],
            ),
            p + "O_text",
        )
        av = self.linear(
            self.attention(
                self.linear(zv, p + "Q_vision"),
                self.linear(zt, p + "K_text_to_vision"),
                self.linear(zt, p + "V_text_to_vision"),
                F.softplus(self.sd[p + "tau_vision_param"]),
                self.sd[p + "bias_vision_from_text"],
            ),
            p + "O_vision",
        )
        ht = ht + torch.sigmoid(self.sd[p + "gate_text_bias"]) * self.linear(at, p + "shared_to_text")
        hv = hv + torch.sigmoid(self.sd[p + "gate_vision_bias"]) * self.linear(av, p + "shared_to_vision")
        return hv, ht, zv, zt

    @torch.no_grad()
    def __call__(self, pixel_values, input_ids):
        """One image-text pair batch (image b with text b), unpadded text: the original's outputs."""
        mask = torch.ones_like(input_ids)
        hv = self.vit(pixel_values=pixel_values).last_hidden_state
        ht = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        u_v = F.normalize(self.linear(hv.mean(1), "vision_pool_proj_uni"), dim=-1)
        u_t = F.normalize(self.linear(ht.mean(1), "text_pool_proj_uni"), dim=-1)
        for i in range(NUM_LAYERS):
            hv, ht, zv, zt = self.layer(i, hv, ht)  # the last layer's Z is computed from its input
        c_v = F.normalize(self.linear(zv.mean(1), "vision_pool_proj_cross"), dim=-1)
        c_t = F.normalize(self.linear(zt.mean(1), "text_pool_proj_cross"), dim=-1)
        fused = self.sd["logit_scale"].exp() * (c_v * c_t).sum(-1)
        features = torch.cat([c_t, c_v, (c_v * c_t).sum(-1, keepdim=True)], dim=-1)
        itm = self.linear(torch.relu(self.linear(features, "itm_head.0")), "itm_head.3")
        return u_v, u_t, fused, itm


# ----------------------------------------------------------------------------------------------------------------


def test_every_converted_parameter_equals_its_source(converted, tmp_path):
    sd, model, _, _ = converted
    # the conversion is a BridgeForPreTraining: BridgeModel's weights under `bridge.`, the pre-training heads on top
    params = {k.removeprefix("bridge."): v for k, v in model.state_dict().items()}
    layer_names = {
        "Q_text": "text_attention.q_proj",
        "K_vision_to_text": "text_attention.k_proj",
        "V_vision_to_text": "text_attention.v_proj",
        "O_text": "text_attention.o_proj",
        "Q_vision": "vision_attention.q_proj",
        "K_text_to_vision": "vision_attention.k_proj",
        "V_text_to_vision": "vision_attention.v_proj",
        "O_vision": "vision_attention.o_proj",
        "tau_text_param": "text_attention.temperature.value",
        "tau_vision_param": "vision_attention.temperature.value",
        "gate_text_bias": "text_gate.value",
        "gate_vision_bias": "vision_gate.value",
    }
    top_names = {
        "vision_pool_proj_cross": "vision_cross_projection",
        "text_pool_proj_cross": "text_cross_projection",
        "vision_pool_proj_uni": "vision_unimodal_projection",
        "text_pool_proj_uni": "text_unimodal_projection",
        "logit_scale": "logit_scale.value",
        "itc_alpha": "itc_alpha.value",
        "mlm_head.0": "mlm_head.dense",
        "mlm_head.1": "mlm_head.layer_norm",
        "mlm_head.3": "mlm_head.decoder",
        "mim_head.0": "mim_head.dense",
        "mim_head.1": "mim_head.layer_norm",
        "mim_head.3": "mim_head.decoder",
        "itm_head.0": "itm_head.dense",
        "itm_head.3": "itm_head.classifier",
    }
    checked = 0
    for key, tensor in sd.items():
        if key.startswith(("vision_encoder.", "text_encoder.")):
            continue
        name = key
        for old, new in {**top_names, **layer_names}.items():
            name = re.sub(rf"(^|\.){re.escape(old)}(\.|$)", rf"\g<1>{new}\g<2>", name)
        if "bias_text_from_vision" in key or "bias_vision_from_text" in key:
            ours = params[
                name.replace("bias_text_from_vision", "text_attention.position_bias").replace(
                    "bias_vision_from_text", "vision_attention.position_bias"
                )
            ]
            assert torch.equal(ours[: tensor.shape[0], : tensor.shape[1]], tensor), key
            rest = ours.clone()
            rest[: tensor.shape[0], : tensor.shape[1]] = 0
            assert ours.shape[0] > tensor.shape[0] or ours.shape[1] > tensor.shape[1], key
            assert not rest.any(), f"{key}: the rest of the table must be zero"
        else:
            assert torch.equal(params[name], tensor), key
        checked += 1
    assert checked == len([k for k in sd if not k.startswith(("vision_encoder.", "text_encoder."))])
    # Towers: what save_pretrained writes (the on-disk names) equals the checkpoint's tensors; poolers are dropped.
    for attr, prefix in (("vision_model", "vision_encoder.vit."), ("text_model", "text_encoder.bert.")):
        getattr(model.bridge, attr).save_pretrained(tmp_path / attr)
        saved = load_file(tmp_path / attr / "model.safetensors")
        source = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix) and ".pooler." not in k}
        assert saved.keys() == source.keys()
        for key in source:
            assert torch.equal(saved[key], source[key]), key
    assert model.config.cross_embed_source == "layer_input"
    assert (model.config.num_interaction_layers, model.config.shared_dim, model.config.projection_dim) == (
        NUM_LAYERS,
        SHARED,
        PROJ,
    )


def test_converted_model_reproduces_the_original_on_unpadded_pairs(converted, towers, tmp_path):
    sd, model, _, _ = converted
    reference = OriginalReference(sd, towers, tmp_path)
    g = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    input_ids = torch.randint(5, len(VOCAB), (2, TEXT_LEN), generator=g)
    with torch.no_grad():
        out = model.bridge(pixel_values=pixel_values, input_ids=input_ids, score="fused")
        itm_scores = model.bridge(pixel_values=pixel_values, input_ids=input_ids, score="itm").logits_per_image
    for i in range(3):
        for j in range(2):
            u_v, u_t, fused, itm = reference(pixel_values[i : i + 1], input_ids[j : j + 1])
            torch.testing.assert_close(out.image_embeds[i], u_v[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(out.text_embeds[j], u_t[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(out.logits_per_image[i, j], fused[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(out.itm_logits[i, j], itm[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(itm_scores[i, j], itm[0, 1], atol=1e-5, rtol=0)
    # and the scores are not degenerate: pairs differ
    assert out.logits_per_image.std() > 1e-3 and out.itm_logits.std() > 1e-3


def test_cli_writes_a_folder_that_automodel_loads(towers, tmp_path, converted):
    sd, model, _, _ = converted
    cli = load_cli("convert_original_checkpoint")
    ckpt = write_checkpoint(tmp_path / "bare.pth", sd, wrapped=False)  # a bare state dict
    out = tmp_path / "converted"
    assert (
        cli.run_command(
            cli.main, ["--checkpoint", str(ckpt), "--config", str(original_yaml(towers)), "--output_dir", str(out)]
        )
        == 0
    )
    assert {
        "config.json",
        "model.safetensors",
        "modeling_bridge.py",
        "processor_config.json",
        "README.md",
        "tokenizer_config.json",
    } <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    reloaded = AutoModel.from_pretrained(out).eval()
    assert type(reloaded) is BridgeModel
    for key, value in model.bridge.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_cli_help(capsys):
    for name in ("convert_original_checkpoint", "build_from_encoders", "push_to_hub"):
        with pytest.raises(SystemExit) as exit_info:
            load_cli(name).parse_args(["--help"])
        assert exit_info.value.code == 0
        assert "--output_dir" in capsys.readouterr().out


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.update({"interaction_layers.0.mystery.weight": torch.zeros(2)}),
            r"Unknown keys: \['interaction_layers\.0\.mystery\.weight'\]",
        ),
        (
            lambda sd: sd.pop("interaction_layers.1.Q_vision.weight"),
            r"Missing keys: \['interaction_layers\.1\.Q_vision\.weight'\]",
        ),
        (
            lambda sd: sd.pop("vision_encoder.vit.encoder.layer.1.attention.attention.query.bias"),
            r"Missing keys: \['vision_encoder\.vit\.encoder\.layer\.1\.attention\.attention\.query\.bias'\]",
        ),
        (
            lambda sd: sd.update({"interaction_layers.2.O_text.weight": torch.zeros(SHARED, SHARED)}),
            r"Unknown keys: \['interaction_layers\.2\.O_text\.weight'\]",
        ),
        (
            lambda sd: sd.update({"vision_pool_proj_uni.weight": torch.zeros(PROJ, DV + 1)}),
            r"Wrong shapes: \['vision_pool_proj_uni\.weight \(8, 33\) \(expected \(8, 32\)\)'\]",
        ),
        (
            lambda sd: sd.update({"text_encoder.projection.weight": torch.zeros(DT, DT)}),
            r"modules that BridgeModel does not have: .*\['text_encoder\.projection\.weight'\]",
        ),
        (
            lambda sd: sd.update({"interaction_layers.0.bias_text_from_vision": torch.zeros(TEXT_LEN, NV + 2)}),
            r"covers 19 vision tokens but the vision tower emits 17",
        ),
    ],
)
def test_bad_checkpoints_are_refused_with_the_keys_named(towers, tmp_path, edit, message):
    sd = original_state_dict(towers)
    edit(sd)
    ckpt = write_checkpoint(tmp_path / "bad.pth", sd)
    with pytest.raises(ConversionError, match=message):
        convert_original_checkpoint(ckpt, original_yaml(towers))


def test_bad_inputs_are_refused_with_a_clear_message(towers, tmp_path, converted, capsys):
    sd = converted[0]
    ckpt = write_checkpoint(tmp_path / "ok.pth", sd)
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pth not found"):
        convert_original_checkpoint(tmp_path / "missing.pth", original_yaml(towers))
    with pytest.raises(IsADirectoryError, match=r"checkpoint .* is a folder; pass the \.pth file"):
        convert_original_checkpoint(tmp_path, original_yaml(towers))
    with pytest.raises(FileNotFoundError, match="config .*nope.yaml not found"):
        convert_original_checkpoint(ckpt, tmp_path / "nope.yaml")
    with pytest.raises(ConversionError, match=r"no `vision_config.model_name`; add it or pass --vision_model"):
        convert_original_checkpoint(ckpt, original_yaml(towers, vision_config={"model_name": None}))
    with pytest.raises(ConversionError, match=r"no `cross_modal_config.shared_dim`"):
        convert_original_checkpoint(ckpt, original_yaml(towers, cross_modal_config={"shared_dim": None}))
    with pytest.raises(
        ConversionError, match=r"text_config.hidden_dim=32 differs from the text tower's hidden_size=24"
    ):
        convert_original_checkpoint(ckpt, original_yaml(towers, text_config={"hidden_dim": 32}))
    with pytest.raises(ConversionError, match="stores no config; pass --config"):
        convert_original_checkpoint(write_checkpoint(tmp_path / "bare.pth", sd, wrapped=False))
    with pytest.raises(FileNotFoundError, match=r"--vision_model: the folder .*nowhere does not exist"):
        convert_original_checkpoint(ckpt, original_yaml(towers), vision_model=str(tmp_path / "nowhere"))
    # The command prints one line and exits 1.
    cli = load_cli("convert_original_checkpoint")
    code = cli.run_command(
        cli.main, ["--checkpoint", str(tmp_path / "missing.pth"), "--output_dir", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: checkpoint") and err.count("\n") == 1


def run_cli(name, argv, capsys):
    """Exit code and the stderr of a conversion command, which must be one `error: ...` line when it fails."""
    cli = load_cli(name)
    capsys.readouterr()
    code = cli.run_command(cli.main, [str(a) for a in argv])
    err = capsys.readouterr().err
    if code:
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return code, err


# Keys of every kind: towers, interaction-layer tensors and scalars, positional biases, top-level scalars, heads.
ORIGINAL_KEYS_OF_EVERY_KIND = [
    "vision_encoder.vit.encoder.layer.0.output.dense.weight",
    "vision_encoder.vit.layernorm.bias",
    "text_encoder.bert.embeddings.word_embeddings.weight",
    "text_encoder.bert.encoder.layer.1.attention.self.key.bias",
    "interaction_layers.0.gate_vision_bias",
    "interaction_layers.1.tau_text_param",
    "interaction_layers.0.bias_vision_from_text",
    "interaction_layers.1.K_text_to_vision.bias",
    "interaction_layers.0.text_norm.weight",
    "logit_scale",
    "itc_alpha",
    "vision_pool_proj_cross.weight",
    "text_pool_proj_uni.bias",
    "mlm_head.3.bias",
    "mim_head.1.weight",
    "itm_head.0.weight",
    "itm_head.3.bias",
]


def test_missing_keys_are_named_as_the_original_checkpoint_names_them(towers, tmp_path):
    sd = original_state_dict(towers)
    for key in ORIGINAL_KEYS_OF_EVERY_KIND:
        del sd[key]
    with pytest.raises(ConversionError) as error:
        convert_original_checkpoint(write_checkpoint(tmp_path / "holes.pth", sd), original_yaml(towers))
    assert f"Missing keys: {sorted(ORIGINAL_KEYS_OF_EVERY_KIND)}." in str(error.value)
    assert "Unknown keys: none." in str(error.value) and "Wrong shapes: none." in str(error.value)


def test_a_config_that_is_not_yaml_gives_one_line(towers, tmp_path, converted, capsys):
    ckpt = write_checkpoint(tmp_path / "ok.pth", converted[0])
    (tmp_path / "broken.yaml").write_text("cross_modal_config: {num_layers: 2\npooling_config: [\n")
    for config, expected in (
        (tmp_path / "broken.yaml", f"error: {tmp_path / 'broken.yaml'} is not valid YAML (line "),
        (ckpt, f"error: {ckpt} is not valid YAML; pass the training config"),
    ):  # swapped files
        code, err = run_cli(
            "convert_original_checkpoint",
            ["--checkpoint", ckpt, "--config", config, "--output_dir", tmp_path / "out"],
            capsys,
        )
        assert code == 1 and err.startswith(expected), err


def test_key_mapping_inverts_over_both_schemas(towers, converted):
    """Every original key maps back to itself, and every key BridgeModel saves has an original name."""
    sd, model, _, _ = converted
    for key in sd:
        ours = original_to_bridge_key(key)
        if ".pooler." not in key:
            assert ours is not None and bridge_to_original_key(ours) == key, key
    saved = _expected_checkpoint_tensors(model.config)
    flat = [k.removeprefix("bridge.") for k in model.state_dict()]
    for ours in list(saved) + flat:  # on-disk and in-memory tower names
        original = bridge_to_original_key(ours)
        assert original is not None and original_to_bridge_key(original) == ours, ours
    assert bridge_to_original_key("interaction_layers.3.vision_gate.value") == "interaction_layers.3.gate_vision_bias"
    assert bridge_to_original_key("interaction_layers.0.mystery.weight") is None
    assert bridge_to_original_key("logit_scale") is None


def test_unreadable_checkpoints_say_what_the_file_is_and_never_suggest_unsafe_loading(
    towers, tmp_path, converted, capsys
):
    sd = converted[0]
    good = write_checkpoint(tmp_path / "good.pth", sd).read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.pth").write_text("epoch 3: loss 0.41\nthis is a text file, not a checkpoint\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"model": sd, "stats": NotATensor()}, tmp_path / "pickled.pth")
    yaml_path = original_yaml(towers)
    cases = {
        "truncated.pth": "is not a readable PyTorch checkpoint: its zip archive is incomplete or damaged",
        "notes.pth": "is not a readable PyTorch checkpoint: it is not a file written by torch.save",
        "empty.pth": "is not a readable PyTorch checkpoint: it is empty",
        "pickled.pth": "holds Python objects besides tensors (first: ",
    }
    for name, expected in cases.items():
        with pytest.raises(ConversionError) as error:
            convert_original_checkpoint(tmp_path / name, yaml_path)
        message = str(error.value)
        assert message.startswith(f"{tmp_path / name} {expected}"), message
        assert "weights_only=False" not in message and "weights_only" not in message.replace("=True", ""), message
        if name == "pickled.pth":
            assert "NotATensor)" in message
            assert (
                "In an environment where you trust the file, re-save its state dict with torch.save(state_dict"
                in message
            )
        else:
            assert "Download or copy the checkpoint again" in message and "NotATensor" not in message
        code, err = run_cli(
            "convert_original_checkpoint",
            ["--checkpoint", tmp_path / name, "--config", yaml_path, "--output_dir", tmp_path / "out"],
            capsys,
        )
        assert code == 1 and expected in err and "weights_only=False" not in err
    assert not (tmp_path / "out").exists()


def write_yaml_without(towers, section, key=None):
    """The test YAML with a whole section, or one key of it, removed."""
    path = original_yaml(towers)
    config = yaml.safe_load(path.read_text())
    if key is None:
        del config[section]
    else:
        del config[section][key]
    path.write_text(yaml.safe_dump(config))
    return path


def test_pooling_config_is_required_and_its_projection_dim_checked_against_the_checkpoint(
    towers, tmp_path, converted, capsys
):
    ckpt = write_checkpoint(tmp_path / "ok.pth", converted[0])
    with pytest.raises(
        ConversionError,
        match=r"config\.yaml has no `pooling_config` section \(the original code "
        r"requires it\)",
    ):
        convert_original_checkpoint(ckpt, write_yaml_without(towers, "pooling_config"))
    code, err = run_cli(
        "convert_original_checkpoint",
        [
            "--checkpoint",
            ckpt,
            "--config",
            write_yaml_without(towers, "pooling_config"),
            "--output_dir",
            tmp_path / "out",
        ],
        capsys,
    )
    assert code == 1 and "has no `pooling_config` section" in err
    path = original_yaml(towers)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "pooling_config": ["mean", PROJ]}))
    with pytest.raises(ConversionError, match=r"config\.yaml has a `pooling_config` that is no mapping"):
        convert_original_checkpoint(ckpt, path)
    # The original defaults the keys (type "mean", projection_dim 256); a default or a stated value that does not
    # fit the checkpoint is named as such, not as a list of six wrong shapes.
    with pytest.raises(ConversionError) as error:
        convert_original_checkpoint(ckpt, write_yaml_without(towers, "pooling_config", "projection_dim"))
    assert str(error.value).startswith(
        "pooling_config.projection_dim=256 (the original's default when pooling_config does not set it) but the "
        f"checkpoint's projections have {PROJ} (text_pool_proj_cross.weight, text_pool_proj_uni.weight, "
        f"vision_pool_proj_cross.weight, vision_pool_proj_uni.weight); set `projection_dim: {PROJ}` under "
        "pooling_config"
    ), str(error.value)
    code, err = run_cli(
        "convert_original_checkpoint",
        [
            "--checkpoint",
            ckpt,
            "--config",
            original_yaml(towers, pooling_config={"projection_dim": 12}),
            "--output_dir",
            tmp_path / "out",
        ],
        capsys,
    )
    assert (
        code == 1 and f"error: pooling_config.projection_dim=12 but the checkpoint's projections have {PROJ} " in err
    )
    model, _, _ = convert_original_checkpoint(ckpt, write_yaml_without(towers, "pooling_config", "type"))
    assert model.config.pooling == "mean"  # the original's default type


@pytest.mark.parametrize(
    "name, local",
    [
        ("/models/vit", True),
        ("./vit", True),
        ("../towers/vit", True),
        ("~/towers/vit", True),
        ("~", True),
        (".", True),
        ("towers/vit/v2", True),
        ("C:\\models\\vit", True),
        ("towers\\vit", True),
        ("my vit", True),
        ("bert-base-uncased", False),
        ("google/vit-base-patch16-224-in21k", False),
        ("sentence-transformers/all-MiniLM-L6-v2", False),
    ],
)
def test_local_looking_names(name, local):
    assert looks_like_local_path(name) is local


def test_tower_folders_are_checked_before_transformers_sees_them(towers, tmp_path, converted, capsys, monkeypatch):
    ckpt = write_checkpoint(tmp_path / "ok.pth", converted[0])
    yaml_path = original_yaml(towers)
    monkeypatch.setenv("HOME", str(towers))
    assert check_model_source("~/towers/vit", "--vision_model") == str(towers / "towers" / "vit")
    assert check_model_source("google/vit-base-patch16-224", "--vision_model") == "google/vit-base-patch16-224"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    for flag, value, expected in (
        ("--vision_model", tmp_path / "no_vit", f"--vision_model: the folder {tmp_path / 'no_vit'} does not exist"),
        ("--text_model", "./no_bert", "--text_model: the folder no_bert does not exist"),
        ("--vision_model", "~/no_such_tower", f"--vision_model: the folder {towers / 'no_such_tower'} does not exist"),
        ("--text_model", "towers/bert/extra", "--text_model: the folder towers/bert/extra does not exist"),
        ("--text_model", "empty_dir", "--text_model: the folder empty_dir holds no config.json"),
        ("--vision_model", ckpt, f"--vision_model: {ckpt} is a file, not a model folder"),
    ):
        code, err = run_cli(
            "convert_original_checkpoint",
            ["--checkpoint", ckpt, "--config", yaml_path, "--output_dir", tmp_path / "out", flag, value],
            capsys,
        )
        assert code == 1 and err.startswith(f"error: {expected}"), err
        assert "Repo id must" not in err
    # A YAML entry that names a missing folder is named as such.
    bad_yaml = original_yaml(towers, vision_config={"model_name": "./towers/vit_moved"})
    with pytest.raises(FileNotFoundError) as error:
        convert_original_checkpoint(ckpt, bad_yaml)
    assert str(error.value) == (
        f"`vision_config.model_name` in {bad_yaml}: the folder {towers / 'towers' / 'vit_moved'} does not exist (a "
        "local path, not a Hub id, which is 'name' or 'namespace/name'); fix it there or pass --vision_model DIR."
    )
