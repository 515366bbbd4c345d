"""Two CPU processes under DistributedDataParallel (gloo) train exactly like one process over the global batch.

Each rank holds half of a global batch of aligned (image, text) pairs. BridgeForPreTraining gathers embeddings and
tower states from every rank with gradient, so the contrastive negatives are the global batch; DDP then averages the
gradients. The mean over ranks of the loss, and every DDP-averaged gradient, must equal the loss and gradients of one
process running the same model on the whole global batch.

Conditions that make the two setups comparable (each is a property of the objective, not a tolerance):
- every dropout is 0 (interaction, attention, ITM head, and the towers' own), so both runs are deterministic;
- `itm_margin_min = itm_margin_max = 0`: the semi-hard band `S_ii - m_max < S_ij < S_ii - m_min` is then empty and
  mining is the deterministic "fallback hardest". In-band candidates are ordered by `torch.rand`, whose draws differ
  between two ranks and one process, so a non-empty band would pick different (equally valid) negatives;
- the ranks' texts have different lengths (so each rank pads to a different width), but the same number of real
  tokens: the cycle-consistency term is a mean over real text tokens on each rank, and a mean of per-rank token
  means equals the global token mean only when every rank holds as many tokens (as for any token-averaged loss
  under DDP). MLM masks one token per row and MIM the same number of patches per row, for the same reason.

What remains is float32 rounding: the tolerance follows from its arithmetic, not from one CPU (see `_tolerance`).
"""

import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from conftest import IMAGE_SIZE, TEXT_CONFIGS, VISION_CONFIGS, VOCAB
from modeling_bridge import BridgeConfig, BridgeForPreTraining


WORLD = 2
LOCAL_BATCH = 3
# Real lengths per rank: rank 0 pads to 7 tokens, rank 1 to 5; each rank holds 15 real tokens.
LENGTHS = ((7, 3, 5), (5, 5, 5))
NUM_PATCHES = (IMAGE_SIZE // 8) ** 2
VARIANTS = {
    "pairwise": dict(fused_objective="pairwise", cycle_loss_weight=0.3, mlm_loss_weight=0.5, mim_loss_weight=0.25),
    "aligned": dict(fused_objective="aligned", cycle_loss_weight=0.3),
}
COMPONENTS = (
    "loss",
    "itc_loss",
    "unimodal_itc_loss",
    "cross_itc_loss",
    "itm_loss",
    "cycle_loss",
    "mlm_loss",
    "mim_loss",
)

# Rounding. The two runs compute the same sums in different orders: per-rank partial sums and an all-reduce mean
# against one sum over the global batch, rows padded to 5 or 7 tokens against 7, CPU kernels that block and
# vectorise by shape (and differently on another CPU). Reordering a float sum of n terms moves it by at most
# (n - 1) * u * sum|terms| (u = eps / 2, the unit roundoff; Higham, "Accuracy and Stability of Numerical
# Algorithms", section 4.2), and backpropagation chains such sums. So the tolerance is
#     LONGEST_SUM * CHAINED_SUMS * u * (size of the summands)
# LONGEST_SUM: a weight gradient sums over every row and position of the global batch (6 x 17 = 102 terms; the
# matmul contractions, 64 units at most, are shorter). CHAINED_SUMS: about two reductions (attention, MLP) per layer
# on the way back from the losses (heads, 2 interaction layers, 2 tower blocks, embeddings): ~10.
# The size of the summands is not the gradient entry's own size, which cancellation can make arbitrarily small: the
# towers' attention key biases have an exactly zero gradient (softmax ignores a constant added to every key's
# score), so their computed ~1e-10 is pure rounding of summands the size of the key weights' gradients. Within one
# block (a tower or interaction layer, an embedding table set, a head) activations are layer-normed, so the summands
# of every gradient in it are bounded by the block's largest gradient entry: that is the scale.
# A tolerance of 1e-6 absolute failed by 1.4e-6 on an AMD EPYC for the text position embeddings, whose block (the
# text embeddings) has gradient entries up to ~15: u * 15 alone is 9e-7.
LONGEST_SUM = WORLD * LOCAL_BATCH * (NUM_PATCHES + 1)
CHAINED_SUMS = 10
NOISE_FACTOR = LONGEST_SUM * CHAINED_SUMS * torch.finfo(torch.float32).eps / 2  # ~6e-5


def _block(name: str) -> str:
    """The block a parameter belongs to: up to its layer index (`bridge.interaction_layers.1`), else its module
    under the model or tower (`bridge.text_model.embeddings`, `bridge.itm_head`)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:3] if parts[1] in ("vision_model", "text_model") else parts[:2])


def _tolerance(scale: float) -> float:
    """Absolute tolerance for reordered float32 sums whose summands are at most `scale`."""
    return NOISE_FACTOR * scale


def _model(variant: str) -> BridgeForPreTraining:
    vision, text = VISION_CONFIGS["vit"](), TEXT_CONFIGS["bert"]()
    for tower in (vision, text):
        tower.hidden_dropout_prob = tower.attention_probs_dropout_prob = 0.0
    config = BridgeConfig.from_vision_text_configs(
        vision,
        text,
        num_interaction_layers=2,
        shared_dim=16,
        num_interaction_heads=2,
        projection_dim=8,
        max_text_positions=16,
        pair_chunk_size=4,
        interaction_dropout=0.0,
        attention_dropout=0.0,
        itm_dropout=0.0,
        num_hard_negatives=2,
        itm_margin_min=0.0,
        itm_margin_max=0.0,
        **VARIANTS[variant],
    )
    torch.manual_seed(0)
    model = BridgeForPreTraining(config)
    with torch.no_grad():  # perturb the zero-initialised biases/tables so that every parameter matters
        for name, param in model.named_parameters():
            if not name.startswith(("bridge.vision_model.", "bridge.text_model.")):
                param.add_(torch.randn_like(param) * 0.1)
    return model.train()


def _rank_batches() -> list[dict[str, torch.Tensor]]:
    """Each rank's local batch, padded to that rank's own longest text."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for lengths in LENGTHS:
        width = max(lengths)
        input_ids = torch.randint(5, len(VOCAB), (LOCAL_BATCH, width), generator=g)
        attention_mask = torch.zeros(LOCAL_BATCH, width, dtype=torch.long)
        for row, n in enumerate(lengths):
            attention_mask[row, :n] = 1
        input_ids = input_ids.masked_fill(attention_mask == 0, 0)
        mlm_input_ids, mlm_labels = input_ids.clone(), torch.full_like(input_ids, -100)
        mlm_input_ids[:, 1], mlm_labels[:, 1] = 4, input_ids[:, 1]  # one [MASK] per row
        mim_mask = torch.zeros(LOCAL_BATCH, NUM_PATCHES, dtype=torch.bool)
        mim_mask.scatter_(1, torch.rand(LOCAL_BATCH, NUM_PATCHES, generator=g).argsort(1)[:, :4], True)
        batches.append(
            dict(
                pixel_values=torch.randn(LOCAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
                input_ids=input_ids,
                attention_mask=attention_mask,
                mlm_input_ids=mlm_input_ids,
                mlm_labels=mlm_labels,
                mim_mask=mim_mask,
            )
        )
    return batches


def _global_batch(batches):
    width = max(b["input_ids"].shape[1] for b in batches)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) if t.dim() == 2 else t

    pad_value = {"mlm_labels": -100}
    return {
        key: torch.cat(
            [
                pad(b[key], pad_value.get(key, 0)) if key not in ("pixel_values", "mim_mask") else b[key]
                for b in batches
            ]
        )
        for key in batches[0]
    }


def _worker(rank: int, init_file: str, out_dir: str, batches):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for variant in VARIANTS:
            model = _model(variant)
            ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
            out = ddp(**batches[rank])
            out.loss.backward()
            torch.save(
                {
                    "components": {name: out[name].detach() for name in COMPONENTS if out.get(name) is not None},
                    "logits_per_image": out.logits_per_image.detach(),
                    "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
                },
                os.path.join(out_dir, f"{variant}-{rank}.pt"),
            )
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    batches = _rank_batches()
    context = mp.spawn(_worker, args=(str(out_dir / "store"), str(out_dir), batches), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # re-raises a worker's exception
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP workers did not finish within 120 s (a collective is waiting forever?)")
    results = {v: [torch.load(out_dir / f"{v}-{r}.pt") for r in range(WORLD)] for v in VARIANTS}
    return batches, results


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ddp_matches_one_process_over_the_global_batch(ddp_results, variant):
    batches, results = ddp_results
    assert batches[0]["input_ids"].shape[1] != batches[1]["input_ids"].shape[1]  # the ranks pad differently

    model = _model(variant)
    reference = model(**_global_batch(batches))
    reference.loss.backward()

    components = [name for name in COMPONENTS if reference.get(name) is not None]
    expected = {"pairwise": COMPONENTS, "aligned": tuple(c for c in COMPONENTS if c not in ("mlm_loss", "mim_loss"))}
    assert sorted(components) == sorted(expected[variant])
    losses = [r["components"]["loss"].item() for r in results[variant]]
    assert losses[0] != pytest.approx(losses[1], abs=1e-3)  # the halves differ: the mean is a real check
    for name in components:
        ranks = torch.stack([r["components"][name] for r in results[variant]])
        scale = max(ranks.abs().max().item(), abs(reference[name].item()))  # a mean of per-row terms this size
        assert ranks.mean().item() == pytest.approx(reference[name].item(), rel=0, abs=_tolerance(scale)), name

    # each rank scores its own images against the texts of every rank: the rows of the global score matrix
    logits = reference.logits_per_image.detach()
    torch.testing.assert_close(
        torch.cat([r["logits_per_image"] for r in results[variant]]),
        logits,
        atol=_tolerance(logits.abs().max().item()),
        rtol=0,
    )

    grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    block_scale = {}
    for name, grad in grads.items():
        block_scale[_block(name)] = max(block_scale.get(_block(name), 0.0), grad.abs().max().item())
    atol = {name: _tolerance(block_scale[_block(name)]) for name in grads}
    checked = 0
    for name, param in model.named_parameters():
        rank_grads = [r["grads"][name] for r in results[variant]]
        if param.grad is None:
            assert all(g is None or not g.any() for g in rank_grads), f"{name}: a gradient one process does not get"
            continue
        for rank, grad in enumerate(rank_grads):  # DDP all-reduces, so every rank holds the same averaged gradient
            assert grad is not None, f"{name}: no gradient on rank {rank}"
            torch.testing.assert_close(
                grad, param.grad, atol=atol[name], rtol=0, msg=lambda m, where=f"{name}, rank {rank}": f"{where}: {m}"
            )
        checked += 1
    # the towers, the interaction stack and the heads all train, and all were compared
    trained = [n for n, g in grads.items() if g.abs().sum() > 0]
    assert checked == len(grads) > 0
    for prefix in ("bridge.vision_model.", "bridge.text_model.", "bridge.interaction_layers.", "bridge.itm_head."):
        assert any(n.startswith(prefix) for n in trained), prefix

    # The tolerance still catches real bugs. Gradients summed instead of averaged over the ranks (WORLD times the
    # right value) fall outside it in every tensor whose gradient stands above the rounding floor of its block: all
    # of them but the four tower key biases (exactly zero, see above) and, at most, a scalar (a gate or temperature
    # whose gradient cancels down to ~1e-4 of its layer's).
    key_biases = {
        n
        for n in grads
        if n.startswith(("bridge.vision_model.", "bridge.text_model."))
        and n.endswith(("attention.k_proj.bias", "attention.self.key.bias"))
    }
    assert len(key_biases) == 4 and all(grads[n].abs().max() <= atol[n] for n in key_biases)
    undetected = {n for n, g in grads.items() if (WORLD - 1) * g.abs().max() <= atol[n]}
    assert undetected - key_biases <= {n for n, g in grads.items() if g.numel() == 1}, sorted(undetected)
    assert len(undetected - key_biases) <= 2, sorted(undetected)
