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
COMPONENTS = ("loss", "itc_loss", "unimodal_itc_loss", "cross_itc_loss", "itm_loss", "cycle_loss", "mlm_loss",
              "mim_loss")


def _model(variant: str) -> BridgeForPreTraining:
    vision, text = VISION_CONFIGS["vit"](), TEXT_CONFIGS["bert"]()
    for tower in (vision, text):
        tower.hidden_dropout_prob = tower.attention_probs_dropout_prob = 0.0
    config = BridgeConfig.from_vision_text_configs(
        vision, text, num_interaction_layers=2, shared_dim=16, num_interaction_heads=2, projection_dim=8,
        max_text_positions=16, pair_chunk_size=4, interaction_dropout=0.0, attention_dropout=0.0, itm_dropout=0.0,
        num_hard_negatives=2, itm_margin_min=0.0, itm_margin_max=0.0, **VARIANTS[variant],
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
        batches.append(dict(
            pixel_values=torch.randn(LOCAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g), input_ids=input_ids,
            attention_mask=attention_mask, mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels, mim_mask=mim_mask,
        ))
    return batches


def _global_batch(batches):
    width = max(b["input_ids"].shape[1] for b in batches)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) if t.dim() == 2 else t

    pad_value = {"mlm_labels": -100}
    return {key: torch.cat([pad(b[key], pad_value.get(key, 0)) if key not in ("pixel_values", "mim_mask")
                            else b[key] for b in batches]) for key in batches[0]}


def _worker(rank: int, init_file: str, out_dir: str, batches):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for variant in VARIANTS:
            model = _model(variant)
            ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
            out = ddp(**batches[rank])
            out.loss.backward()
            torch.save({
                "components": {name: out[name].detach() for name in COMPONENTS if out.get(name) is not None},
                "logits_per_image": out.logits_per_image.detach(),
                "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
            }, os.path.join(out_dir, f"{variant}-{rank}.pt"))
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
        ranks = [r["components"][name] for r in results[variant]]
        assert torch.stack(ranks).mean().item() == pytest.approx(reference[name].item(), abs=1e-5), name

    # each rank scores its own images against the texts of every rank: the rows of the global score matrix
    torch.testing.assert_close(torch.cat([r["logits_per_image"] for r in results[variant]]),
                               reference.logits_per_image.detach(), atol=1e-5, rtol=0)

    checked = 0
    for name, param in model.named_parameters():
        grads = [r["grads"][name] for r in results[variant]]
        if param.grad is None:
            assert all(g is None or not g.any() for g in grads), f"{name}: a gradient that one process does not get"
            continue
        for rank, grad in enumerate(grads):  # DDP all-reduces, so every rank holds the same averaged gradient
            assert grad is not None, f"{name}: no gradient on rank {rank}"
            torch.testing.assert_close(grad, param.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}, rank {rank}: {m}")
        checked += 1
    # the towers, the interaction stack and the heads all train, and all were compared
    trained = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert checked == sum(p.grad is not None for p in model.parameters()) > 0
    for prefix in ("bridge.vision_model.", "bridge.text_model.", "bridge.interaction_layers.", "bridge.itm_head."):
        assert any(n.startswith(prefix) for n in trained), prefix
