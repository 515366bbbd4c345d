"""What the speed work rests on, checked without timing anything: compiled layers give the same scores, forward and
training steps need no host sync, autocast runs the interaction in the low precision, frozen towers build no
autograd graph, re-ranking projects only what it scores, and the GPU benchmark suite runs its parts at the CPU
regression sizes (their FLOP counts, which do not depend on the machine, are checked)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import make_config, make_model, random_inputs
from modeling_bridge import BridgeForPreTraining, BridgeModel


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def encoded(model, n_images=3, n_texts=4):
    pixel_values, input_ids, attention_mask = random_inputs(n_images, n_texts)
    with torch.no_grad():
        vision = model.get_image_features(pixel_values).last_hidden_state
        text = model.get_text_features(input_ids, attention_mask).last_hidden_state
    return vision, text, attention_mask


def test_compiled_interaction_layers_give_the_same_scores():
    model = make_model()
    vision, text, mask = encoded(model)
    with torch.no_grad():
        expected = model.pairwise_interaction(vision, text, mask)
        for layer in model.interaction_layers:
            layer.compile(dynamic=False)
        compiled = model.pairwise_interaction(vision, text, mask)
    # same float32 arithmetic, fused differently by the compiler: a few ulps of the largest values
    torch.testing.assert_close(compiled.fused_logits, expected.fused_logits, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(compiled.itm_logits, expected.itm_logits, atol=1e-5, rtol=1e-5)


def test_whole_model_compiles_to_one_graph():
    """`torch.compile(model, fullgraph=True)` (which raises at any graph break, such as a host sync) of fused scoring
    and of a pre-training step, towers included: the same scores, loss and gradients as eager. AOT autograd without
    code generation (`aot_eager`), so that the test checks the capture in seconds; inductor adds code generation."""
    torch.manual_seed(0)
    pixel_values, input_ids, attention_mask = random_inputs(3, 4)
    model = make_model().eval()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, score="fused")
        compiled_model = torch.compile(model, backend="aot_eager", fullgraph=True)
        compiled = compiled_model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, score="fused"
        )
    torch.testing.assert_close(compiled.logits_per_image, expected.logits_per_image, atol=1e-5, rtol=1e-5)
    # the token-id check is skipped under compile; an out-of-range id still fails, in the embedding
    bad_ids = input_ids.clone()
    bad_ids[0, 0] = model.config.text_config.vocab_size
    with torch.no_grad(), pytest.raises(IndexError, match="out of range"):
        compiled_model(input_ids=bad_ids, attention_mask=attention_mask, pixel_values=pixel_values, score="fused")

    pretraining = BridgeForPreTraining(make_config()).train()
    for module in pretraining.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # equal losses need the same (no) randomness in both runs
    inputs = dict(input_ids=input_ids[:3], attention_mask=attention_mask[:3], pixel_values=pixel_values)
    losses, grads = [], []
    for step in (pretraining, torch.compile(pretraining, backend="aot_eager", fullgraph=True)):
        pretraining.zero_grad(set_to_none=True)
        loss = step(**inputs).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad for name, p in pretraining.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    assert grads[1].keys() == grads[0].keys() and len(grads[0]) > 0
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_inference_runs_on_sdpa_flash_kernel_with_the_math_kernels_scores():
    """The learned positional bias is a parameter: sliced under no_grad it would still require grad, which SDPA's CPU
    flash kernel refuses (forcing that kernel would then raise). Both directions of every layer must take it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = make_model().eval()
    vision, text, mask = encoded(model)
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.MATH):
            expected = model.pairwise_interaction(vision, text, mask)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = model.pairwise_interaction(vision, text, mask)
    # online softmax vs materialised probabilities: float32 rounding over a few dozen keys
    torch.testing.assert_close(flash.fused_logits, expected.fused_logits, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(flash.itm_logits, expected.itm_logits, atol=1e-5, rtol=1e-5)


def meta_model(cls):
    with torch.device("meta"):
        return cls._from_config(make_config(), attn_implementation="eager")


# transformers' BERT-style text towers check `padding_mask.all()` on the host when given a padding mask (to skip it
# when nothing is padded): a sync inside the tower, not BRIDGE's code. The tests give the towers no mask (or their
# cached states) and BRIDGE's own code the masks.


def test_fused_scoring_needs_no_host_sync():
    """Meta tensors have no values: any .item(), int(tensor), bool(tensor) or data-dependent shape raises."""
    model = meta_model(BridgeModel).eval()
    pixel_values, input_ids, attention_mask = (t.to("meta") for t in random_inputs(3, 4))
    out = model(input_ids=input_ids, pixel_values=pixel_values, score="fused")
    assert out.logits_per_image.shape == (3, 4) and out.logits_per_image.device.type == "meta"
    dv, dt = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
    vision = torch.empty(2, model.config.num_vision_positions, dv, device="meta")
    text = torch.empty(4, input_ids.shape[1], dt, device="meta")
    assert model.pairwise_interaction(vision, text, attention_mask).fused_logits.shape == (2, 4)
    # re-ranking a subset of pairs (fewer pairs than texts: projected per chunk)
    image_index, text_index = torch.tensor([0, 1], device="meta"), torch.tensor([3, 2], device="meta")
    assert model.interact(vision, text, attention_mask, image_index, text_index).fused_logits.shape == (2,)


@pytest.mark.parametrize(
    "raw_images, train_vision_tower",
    [(False, False), (True, False), (True, True)],
    ids=["stage A, cached tower states", "stage A, raw images", "stage C vision tower, raw images"],
)
def test_training_step_needs_no_host_sync(raw_images, train_vision_tower):
    """Forward and backward of a pre-training step on meta tensors. The text tower gets its cached states (see above);
    the vision tower runs frozen (stage A) or trainable (as in stage C)."""
    model = meta_model(BridgeForPreTraining)
    model.bridge.vision_model.requires_grad_(train_vision_tower)
    model.bridge.text_model.requires_grad_(False)
    model.train()
    pixel_values, input_ids, attention_mask = (t.to("meta") for t in random_inputs(4, 4))
    dv, dt = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "text_hidden_state": torch.empty(4, input_ids.shape[1], dt, device="meta"),
    }
    if raw_images:
        inputs["pixel_values"] = pixel_values
    else:
        inputs["vision_hidden_state"] = torch.empty(4, model.config.num_vision_positions, dv, device="meta")
    loss = model(**inputs).loss
    loss.backward()
    assert loss.device.type == "meta"
    assert all(p.grad is not None for p in model.bridge.interaction_layers.parameters())
    assert all((p.grad is not None) == train_vision_tower for p in model.bridge.vision_model.parameters())


def test_autocast_runs_the_interaction_in_bfloat16():
    """Every projection and attention product of the interaction computes in bfloat16 under autocast; only the
    softmax statistics, norms and losses stay in float32."""
    model = BridgeForPreTraining._from_config(make_config(), attn_implementation="eager").train()
    seen = []

    def record(module, args, output):
        seen.append((type(module).__name__, output.dtype))

    hooks = [m.register_forward_hook(record) for m in model.bridge.interaction_layers.modules() if
             isinstance(m, torch.nn.Linear)]  # fmt: skip
    pixel_values, input_ids, attention_mask = random_inputs(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    for hook in hooks:
        hook.remove()
    assert len(seen) >= 8 * model.config.num_interaction_layers
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
    assert out.loss.dtype == torch.float32 and math.isfinite(out.loss.item())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.bridge.interaction_layers.parameters())


def test_autocast_builds_the_padding_bias_in_the_compute_dtype(monkeypatch):
    """Under float16 autocast the attention computes in float16: the padding bias is built there, with float16's
    finite minimum (a float32 minimum cast to float16 is -inf, and an all-padding text then gives NaN in kernels that
    do not special-case fully masked rows)."""
    import modeling_bridge.modeling_bridge as modeling

    masks, eager = [], modeling.bridge_eager_attention_forward

    def recording(module, query, key, value, attention_mask, **kwargs):
        if attention_mask is not None:
            masks.append(attention_mask)
        return eager(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(modeling, "bridge_eager_attention_forward", recording)
    model = make_model()
    vision, text, mask = encoded(model, 2, 3)
    mask = mask.clone()
    mask[1] = 0
    # `interact` refuses a text without tokens; the kernels' handling of a fully masked row is what is tested here
    monkeypatch.setattr(type(model), "_check_attention_mask", staticmethod(lambda attention_mask: None))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        out = model.pairwise_interaction(vision, text, mask, output_attentions=True)
    assert masks and {m.dtype for m in masks} == {torch.float16}
    assert all(torch.isfinite(m).all() for m in masks)
    assert torch.isfinite(out.fused_logits).all()


def test_frozen_towers_build_no_autograd_graph():
    model = BridgeForPreTraining(make_config())
    model.bridge.vision_model.requires_grad_(False)
    model.bridge.text_model.requires_grad_(False)
    model.train()
    tower_outputs = []
    for tower in (model.bridge.vision_model, model.bridge.text_model):
        tower.register_forward_hook(lambda module, args, kwargs, out: tower_outputs.append(out), with_kwargs=True)
    pixel_values, input_ids, attention_mask = random_inputs(4, 4)
    loss = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).loss
    assert len(tower_outputs) == 2
    assert all(out.last_hidden_state.grad_fn is None for out in tower_outputs)
    assert loss.grad_fn is not None


def interaction_flops(model, *args) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.interact(*args)
    return counter.get_total_flops()


def test_reranking_projects_only_the_texts_it_scores():
    """Scoring 2 pairs among 100 texts costs what scoring them among 2 texts costs: layer 1's projections are
    computed for the selected rows only when the pairs do not reuse them (and once per row when they do)."""
    model = make_model()
    vision, text, mask = encoded(model, 2, 4)
    many_text = text.repeat(25, 1, 1)
    many_mask = mask.repeat(25, 1)
    images, texts = torch.tensor([0, 1]), torch.tensor([3, 1])
    few = interaction_flops(model, vision, text[texts], mask[texts], images, torch.tensor([0, 1]))
    among_many = interaction_flops(model, vision, many_text, many_mask, images, texts + 96)
    assert among_many == few
    reference = model.interact(vision, text[texts], mask[texts], images, torch.tensor([0, 1])).fused_logits
    chosen = model.interact(vision, many_text, many_mask, images, texts + 96).fused_logits
    torch.testing.assert_close(chosen, reference, atol=1e-6, rtol=1e-6)


def load_benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counted_flops_do_not_depend_on_the_attention_kernel():
    """The benchmarks' FLOP count of fused scoring is the same whichever SDPA kernel runs: the math path (matrix
    products), the CPU flash kernel (which `torch.utils.flop_counter` alone does not count), float32 or bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    count_flops = load_benchmark_module("common").count_flops
    model = make_model().eval()
    vision, text, mask = encoded(model)

    def fused(bf16: bool):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model.pairwise_interaction(vision, text, mask)

    with sdpa_kernel(SDPBackend.MATH):
        math_flops = count_flops(lambda: fused(False))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        assert count_flops(lambda: fused(False)) == math_flops
    assert count_flops(lambda: fused(False)) == math_flops
    assert count_flops(lambda: fused(True)) == math_flops


def run_suite(tmp_path, **env) -> subprocess.CompletedProcess:
    # WHEELS: an empty folder, so that wheels a developer fetched for a GPU run (.whl/) are not installed here
    environment = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "WHEELS": str(tmp_path)}
    environment.update(env)
    return subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_suite.sh")], env=environment, capture_output=True, text=True, timeout=600
    )


def test_gpu_suite_runs_its_parts_in_smoke_mode(tmp_path):
    """The GPU suite's plumbing (options, time limits, results) at the benchmarks' CPU regression sizes, and what
    each part measures: FLOP counts, which do not depend on the machine."""
    suite = run_suite(tmp_path, SMOKE="1")
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-3000:]
    out = tmp_path / "out"
    names = ["pairwise.json", "pairwise_compiled.json", "suite.log", "summary.json", "training.json", "zero_shot.json"]
    assert sorted(path.name for path in out.iterdir()) == names  # the device tool brings back at most 8 files
    assert "error" not in (out / "suite.log").read_text()
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in ("zero_shot", "pairwise", "training")}

    pairwise = results["pairwise"]
    assert pairwise["per_pair_over_batched"] > 0
    rows = pairwise["chunk_sweep"]
    assert [row["pair_chunk_size"] for row in rows] == [8, 64]  # the regression mode's sweep
    assert rows[0]["MFLOP / pair"] == pytest.approx(rows[1]["MFLOP / pair"])  # chunking changes no arithmetic
    compiled = json.loads((out / "pairwise_compiled.json").read_text())
    assert compiled["arguments"]["compile"] is True
    assert compiled["chunk_sweep"][0]["MFLOP / pair"] == pytest.approx(rows[0]["MFLOP / pair"])

    zero_shot = results["zero_shot"]
    measures = [row["measure"] for row in zero_shot["unimodal"]]
    assert measures == ["unimodal image embeddings", "unimodal text embeddings"]
    flops = {row["method"]: row["x clip FLOPs"] for row in zero_shot["zero_shot"]}
    # identical towers: the unimodal path costs what CLIP's does; re-ranking k pairs costs more with k, less than
    # exact scoring of every label, which costs less than one full call per pair
    assert flops["bridge unimodal"] == pytest.approx(1.0, rel=1e-3)
    assert flops["bridge two-stage k=8"] < flops["bridge two-stage k=32"] < flops["bridge two-stage k=128"]
    assert flops["bridge two-stage k=128"] < flops["bridge exact fused"] < flops["per-pair full calls"]

    flops = {row["variant"]: row["GFLOP / step"] for row in results["training"]["steps"]}
    # frozen towers: no backward through them; cached states: the towers do not run; checkpointing recomputes
    assert flops["stage A, cached states"] < flops["stage A"] < flops["stage C"]
    assert flops["stage C, checkpointing"] > flops["stage C"]
    assert flops["stage A, checkpointing"] > flops["stage A"]

    # the summary reads the targets off these results: on CPU no MFU, but achieved FLOP/s over the measured GEMM rate
    summary = {row["target"]: row for row in json.loads((out / "summary.json").read_text())["targets"]}
    speedup = summary["exact fused over per-pair calls, x"]
    assert speedup["measured"] == zero_shot["exact_fused_speedup_over_per_pair"]
    assert speedup["met"] == (speedup["measured"] >= 4.5)
    stage_a = summary["stage A samples/s, x stage C"]
    assert stage_a["met"] == (stage_a["measured"] >= 2.0)
    fused = summary["fused scoring MFU (best chunk, eager or compiled)"]
    assert fused["measured"] is None and fused["met"] is None  # no MFU on CPU: no datasheet peak
    assert fused["x measured GEMM rate"] > 0


def test_gpu_suite_summary_marks_parts_without_results(tmp_path):
    result = load_benchmark_module("summarize").main([str(tmp_path), "--device", "cpu"])
    assert {row["met"] for row in result["targets"]} == {"missing"}
    assert result["matmul"]["flops_per_s"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["targets"] == result["targets"]


def test_gpu_suite_stops_at_once_where_the_package_cannot_be_imported(tmp_path):
    broken = tmp_path / "broken"
    (broken / "torch").mkdir(parents=True)
    (broken / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    suite = run_suite(tmp_path, PYTHONPATH=str(broken))
    assert suite.returncode == 1
    assert "no torch here" in suite.stdout
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["suite.log"]  # no part ran


def test_training_benchmark_mines_the_negatives_it_is_given():
    """`--num_hard_negatives k` brings 1 + 2k pairs per sample through the interaction (the positive, k negatives per
    image and per text): from cached tower states, where the interaction is nearly all the work (about 95% at these
    sizes), 3 negatives cost a little under 7/3 the FLOPs of 1."""
    training_step = load_benchmark_module("training_step")

    def cached_state_flops(*negatives: str) -> float:
        steps = training_step.main(["--regression", "--rounds", "1", *negatives])["steps"]
        return {row["variant"]: row["GFLOP / step"] for row in steps}["stage A, cached states"]

    ratio = cached_state_flops() / cached_state_flops("--num_hard_negatives", "1")
    assert 2.0 < ratio < 7 / 3
