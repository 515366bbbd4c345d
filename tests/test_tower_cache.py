"""Cached tower states (embed once, train the interaction layers many times) and the hardest-negative mix."""

import json
import os
import re

import pytest
import torch
from datasets import Dataset, Image

from conftest import IMAGE_SIZE, make_config, random_images
from modeling_bridge import BridgeConfig, BridgeForPreTraining
from modeling_bridge.loss_bridge import mine_hard_negatives
from modeling_bridge.training import TowerStateCollator, cache_tower_states, set_tower_trainable_blocks
from modeling_bridge.training.tower_cache import CACHE_INFO_FILE


CAPTIONS = ["a red circle", "a blue square left of a green triangle", "a green circle", "a red big small square"]


def _rows(n=4, seed=0):
    return Dataset.from_dict({"image": random_images(n, seed=seed), "caption": CAPTIONS[:n]}).cast_column(
        "image", Image()
    )


def _frozen_model(**overrides):
    torch.manual_seed(0)
    model = BridgeForPreTraining(make_config(num_hard_negatives=2, **overrides))
    for tower in (model.bridge.vision_model, model.bridge.text_model):
        set_tower_trainable_blocks(tower, 0)
    return model


def test_cached_states_give_the_losses_of_the_raw_inputs(processor, tmp_path):
    model = _frozen_model().eval()  # eval: the mining is seeded, so both passes pick the same negatives
    rows = _rows()
    cache = cache_tower_states(model, rows, processor, tmp_path / "cache", batch_size=3, progress=False)
    assert len(cache) == 4 and set(cache.column_names) >= {"vision_hidden_state", "text_hidden_state"}
    assert cache[0]["vision_hidden_state"].shape == (model.config.num_vision_positions, 32)
    batch = TowerStateCollator()([cache[i] for i in range(4)])
    longest = int(batch["attention_mask"].sum(1).max())
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, longest)  # cut to the longest caption
    assert batch["text_hidden_state"].shape == (4, longest, 24)
    raw = processor(images=list(rows["image"]), text=CAPTIONS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**raw)
        got = model(**batch)
    for name in ("loss", "itc_loss", "itm_loss", "logits_per_image"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-5)


def test_the_cache_is_reused_only_for_the_same_towers_and_rows(processor, tmp_path):
    model = _frozen_model()
    folder = tmp_path / "cache"
    first = cache_tower_states(model, _rows(), processor, folder, progress=False)
    with open(folder / CACHE_INFO_FILE) as f:
        towers = json.load(f)["towers"]
    stamp = os.stat(folder / CACHE_INFO_FILE).st_mtime_ns
    again = cache_tower_states(model, _rows(), processor, folder, progress=False)
    assert os.stat(folder / CACHE_INFO_FILE).st_mtime_ns == stamp  # loaded, not rebuilt
    assert torch.equal(again[0]["vision_hidden_state"], first[0]["vision_hidden_state"])
    with torch.no_grad():
        model.bridge.vision_model.embeddings.patch_embeddings.projection.weight.add_(0.5)
    changed = cache_tower_states(model, _rows(), processor, folder, progress=False)
    with open(folder / CACHE_INFO_FILE) as f:
        assert json.load(f)["towers"] != towers
    assert not torch.equal(changed[0]["vision_hidden_state"], first[0]["vision_hidden_state"])
    other_rows = cache_tower_states(model, _rows(3, seed=1), processor, folder, progress=False)
    assert len(other_rows) == 3


def test_the_cache_never_replaces_a_foreign_folder(processor, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        cache_tower_states(_frozen_model(), _rows(), processor, folder, progress=False)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_cached_states_for_a_trainable_tower_are_refused(processor, tmp_path):
    model = _frozen_model()
    cache = cache_tower_states(model, _rows(), processor, tmp_path / "cache", progress=False)
    batch = TowerStateCollator()([cache[i] for i in range(4)])
    set_tower_trainable_blocks(model.bridge.text_model, 1)
    model.train()
    with pytest.raises(ValueError, match="the text tower has trainable parameters: it would not learn"):
        model(**batch)
    with pytest.raises(ValueError, match=r"vision_hidden_state has shape \(4, 3, 32\); this model needs \(batch, 17"):
        model.eval()(**{**batch, "vision_hidden_state": batch["vision_hidden_state"][:, :3]})


def test_cache_errors(processor, tmp_path):
    with pytest.raises(ValueError, match="no 'caption' column"):
        cache_tower_states(_frozen_model(), _rows().rename_column("caption", "text"), processor, tmp_path / "c")
    with pytest.raises(ValueError, match="empty dataset"):
        cache_tower_states(_frozen_model(), _rows().select([]), processor, tmp_path / "c")
    with pytest.raises(ValueError, match="lack \\['vision_hidden_state'"):
        TowerStateCollator()([{"input_ids": torch.ones(3), "attention_mask": torch.ones(3)}])


def test_hardest_negatives_come_first_then_the_band():
    # anchor 0: positive 0 (cos 0.9); candidate 1 is the twin (0.89, outside the band), 2 and 3 in the band.
    similarity = torch.tensor([[0.9, 0.89, 0.6, 0.55, -0.5]])
    positive = torch.tensor([0])
    band_only, _ = mine_hard_negatives(similarity, positive, 2, 0.2, 0.5)
    assert set(band_only[0].tolist()) == {2, 3}  # the band leaves out the twin by construction
    mixed, valid = mine_hard_negatives(similarity, positive, 2, 0.2, 0.5, num_hardest=1)
    assert mixed[0, 0].item() == 1 and mixed[0, 1].item() in (2, 3) and valid.all()
    # an excluded candidate (identical caption) is never taken, even as the hardest
    excluded, _ = mine_hard_negatives(
        similarity, positive, 2, 0.2, 0.5, exclude=torch.tensor([[False, True, False, False, False]]), num_hardest=1
    )
    assert excluded[0, 0].item() == 2
    few, valid = mine_hard_negatives(similarity[:, :2], positive, 3, 0.2, 0.5, num_hardest=3)
    assert few.tolist() == [[1]] and valid.tolist() == [[True]]


def test_num_hardest_negatives_is_validated():
    with pytest.raises(ValueError, match="num_hardest_negatives=4: must be between 0 and num_hard_negatives=3"):
        make_config(num_hardest_negatives=4)
    assert BridgeConfig().init_temperature == 0.1
    assert IMAGE_SIZE == 32


def test_in_train_mode_a_frozen_tower_gives_its_cached_states(processor, tmp_path):
    """A frozen tower runs in eval mode even when the model trains (no dropout on its states): training on the raw
    inputs and on the cached states is the same computation."""
    model = _frozen_model()
    for tower in (model.bridge.vision_model, model.bridge.text_model):
        tower.config.hidden_dropout_prob = 0.5  # towers with real dropout
        for module in tower.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.5
    rows = _rows()
    cache = cache_tower_states(model, rows, processor, tmp_path / "cache", progress=False)
    batch = TowerStateCollator()([cache[i] for i in range(4)])
    raw = processor(images=list(rows["image"]), text=CAPTIONS, return_tensors="pt", padding=True)
    model.train()
    assert not model.bridge.text_model.training and model.bridge.interaction_layers.training
    torch.manual_seed(3)  # the same negatives for both passes
    expected = model(**raw)
    torch.manual_seed(3)
    got = model(**batch)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-5)
    set_tower_trainable_blocks(model.bridge.text_model, 1)
    model.train()
    assert model.bridge.text_model.training  # a tower that trains keeps its dropout


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "bytes":  # same size, JSON record intact: float32 states overwritten by huge values
        data[len(data) // 2 : len(data) // 2 + 64] = b"\xff\x7e" * 32
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how, problem",
    [
        ("bytes", r"the bytes of tower_states\.arrow differ from those written \(sha256 mismatch\)"),
        ("truncate", r"tower_states\.arrow has \d+ bytes where \d+ were written \(truncated\?\)"),
        ("delete", r"tower_states\.arrow is missing"),
    ],
)
def test_a_damaged_cache_is_refused_naming_the_folder_and_recomputed_with_overwrite(processor, tmp_path, how, problem):
    """1c168be loaded a cache whose Arrow bytes were overwritten (values up to 3e38) and trained on it; a truncated
    file failed with pyarrow's own message."""
    model, folder = _frozen_model(), tmp_path / "cache"
    first = cache_tower_states(model, _rows(), processor, folder, progress=False)
    expected = first[:]["vision_hidden_state"].clone()
    arrow = folder / "tower_states.arrow"
    arrow.unlink() if how == "delete" else _damage(arrow, how)
    with pytest.raises(ValueError) as error:
        cache_tower_states(model, _rows(), processor, folder, progress=False)
    message = str(error.value)
    assert message.startswith(f"The tower-state cache in {folder} is damaged: ")
    assert message.endswith(
        "Delete the folder, or pass overwrite=True (--overwrite on the command line) to compute it again."
    )
    assert re.search(problem, message)
    again = cache_tower_states(model, _rows(), processor, folder, progress=False, overwrite=True)
    assert torch.equal(again[:]["vision_hidden_state"], expected)


def test_a_cache_without_a_checksum_is_refused(processor, tmp_path):
    model, folder = _frozen_model(), tmp_path / "cache"
    cache_tower_states(model, _rows(), processor, folder, progress=False)
    record = json.loads((folder / CACHE_INFO_FILE).read_text())
    del record["integrity"]  # as written before checksums existed
    (folder / CACHE_INFO_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"has no checksum of tower_states\.arrow \(written by an older version\)"):
        cache_tower_states(model, _rows(), processor, folder, progress=False)


def test_a_cache_is_recomputed_for_other_settings_unless_the_user_added_to_its_folder(processor, tmp_path):
    model, folder = _frozen_model(), tmp_path / "cache"
    cache_tower_states(model, _rows(), processor, folder, progress=False)
    longer = cache_tower_states(model, _rows(), processor, folder, progress=False, max_length=4)
    assert longer[0]["input_ids"].shape == (4,)
    (folder / "notes.txt").write_text("mine now")  # the user adds a file: the folder is no longer provably ours
    with pytest.raises(FileExistsError, match=r"\('notes\.txt'\), so it is not replaced"):
        cache_tower_states(model, _rows(), processor, folder, progress=False)
    assert (folder / "notes.txt").read_text() == "mine now"


def test_non_finite_cached_states_are_refused(processor, tmp_path):
    model = _frozen_model().eval()
    cache = cache_tower_states(model, _rows(), processor, tmp_path / "cache", progress=False)
    batch = TowerStateCollator()([cache[i] for i in range(4)])
    batch["text_hidden_state"][2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"text_hidden_state hold NaN or infinite values in row\(s\) 2: .* damaged"):
        model(**batch)


def test_the_cache_is_recomputed_for_a_tokenizer_with_other_ids_or_casing(processor, tmp_path):
    """The first fingerprint named the tokenizer's class and size only: another tokenizer of the same size reused
    the old input_ids."""
    from transformers import BertTokenizer

    from conftest import VOCAB
    from modeling_bridge import BridgeProcessor

    model, folder = _frozen_model(), tmp_path / "cache"
    first = cache_tower_states(model, _rows(), processor, folder, progress=False)
    words = VOCAB[5:]
    permuted = BridgeProcessor(
        image_processor=processor.image_processor,
        tokenizer=BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB[:5] + words[::-1])}),
    )
    again = cache_tower_states(model, _rows(), permuted, folder, progress=False)
    expected = permuted.tokenizer(CAPTIONS[0])["input_ids"]
    assert (
        again[0]["input_ids"][: len(expected)].tolist() == expected != first[0]["input_ids"][: len(expected)].tolist()
    )
