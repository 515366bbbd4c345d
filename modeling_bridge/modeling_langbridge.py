"""Generation through a LangBridge adapter: BRIDGE's vision states as a prefix for any causal language model.

LangBridge ("Interpreting Image as a Combination of Language Embeddings", 2025) maps each visual token to weights over
a fixed subset of vocabulary *words* and takes the weighted sum of the LM's own (frozen) input embeddings of those
words. The adapter's output is "which words, how much", not coordinates in one LM's space, so it moves to another LM
by looking the same words up there (`transfer_to`), and each visual token reads as words (`top_words`).

Hub code: imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.utils import logging

from .configuration_langbridge import LangBridgeConfig
from .modeling_bridge import BridgeModel, keep_frozen_parts_in_eval_mode


logger = logging.get_logger(__name__)

# What `generate` adds when neither the call nor a generation config sets max_new_tokens or max_length (transformers'
# global default max_length, counted in new tokens when generation starts from embeddings).
DEFAULT_NEW_TOKENS = 20


def _as_int(value) -> int | None:
    """`value` as an int when it is an integer (Python, NumPy or torch; not a bool), else None."""
    try:
        return None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        return None


def _positive_int(value, name: str, where: str = "") -> int:
    """`value` as an int when it is a positive integer; otherwise a ValueError naming `name`."""
    number = _as_int(value)
    if number is None or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}{where}.")
    return number


def single_token_id(tokenizer, word: str) -> int | None:
    """The id of `word` in `tokenizer` when the word is one token there (as a word after a space, the form it takes
    inside a sentence for BPE / SentencePiece vocabularies, or on its own) that decodes back to it (so not the
    unknown token); None otherwise."""
    for text in (f" {word}", word):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id and tokenizer.decode(ids).strip() == word:
            return int(ids[0])
    return None


def build_vocabulary_subset(tokenizers, corpus: Iterable[str], size: int) -> list[str]:
    """The `size` words a LangBridge adapter weights: words that are a single token in every one of `tokenizers`,
    most frequent first in the reference `corpus` (ties alphabetically), then the other such words of the first
    tokenizer's vocabulary (in its id order) if the corpus has too few, with a warning naming them (such words never
    occur in the corpus; fewer than `size` words come back, also with a warning, when even the vocabulary runs out).
    Words are lower-cased, split on whitespace, with surrounding punctuation removed."""
    size = _positive_int(size, "build_vocabulary_subset: size")
    if callable(tokenizers) or isinstance(tokenizers, str):
        raise ValueError(
            "build_vocabulary_subset takes a list of tokenizers (the LMs' that the subset must fit), got one "
            f"{type(tokenizers).__name__}; pass [tokenizer]."
        )
    if isinstance(corpus, str):
        raise ValueError(
            "build_vocabulary_subset takes the corpus as a list of texts, got one string (it would be read "
            "character by character); pass [text]."
        )
    tokenizers = list(tokenizers)
    if not tokenizers:
        raise ValueError("build_vocabulary_subset needs at least one tokenizer.")
    counts = Counter(word.strip(".,;:!?\"'()") for text in corpus for word in text.lower().split())
    counts.pop("", None)

    def shared(word):
        return all(single_token_id(tokenizer, word) is not None for tokenizer in tokenizers)

    subset = [word for word in sorted(counts, key=lambda w: (-counts[w], w)) if shared(word)][:size]
    from_corpus = len(subset)
    if from_corpus < size:
        chosen = set(subset)
        first = tokenizers[0]
        for token_id in range(len(first)):
            word = first.decode([token_id]).strip()
            if word.isalpha() and word not in chosen and shared(word):
                subset.append(word)
                chosen.add(word)
                if len(subset) == size:
                    break
        added = subset[from_corpus:]
        message = (
            f"build_vocabulary_subset: the corpus has {from_corpus} distinct words that are a single token of every "
            f"tokenizer, fewer than size={size}."
        )
        if added:
            shown = ", ".join(added[:10]) + (", ..." if len(added) > 10 else "")
            message += (
                f" Added {len(added)} words of the first tokenizer's vocabulary, in id order, that are not in the "
                f"corpus: {shown}."
            )
        if len(subset) < size:
            message += f" No other word qualifies: the subset has {len(subset)} words, not {size}."
        fix = f", or size={from_corpus} to keep the corpus words only" if from_corpus else ""
        logger.warning(f"{message} Pass a corpus with more distinct words{fix}.")
    return subset


def subset_token_ids(tokenizer, words: list[str]) -> torch.Tensor:
    """Each subset word's row in the LM the tokenizer belongs to; -1 where the word is not one token there."""
    ids = [single_token_id(tokenizer, word) for word in words]
    return torch.tensor([-1 if i is None else i for i in ids], dtype=torch.long)


class LangBridgeAdapter(nn.Module):
    """Visual token -> softmax weights over the vocabulary subset -> the weighted sum of the LM's embedding rows of
    those words. Words the bound LM lacks get weight 0 (the others renormalised)."""

    def __init__(self, input_size: int, hidden_size: int, subset_size: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(input_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, subset_size),
        )

    def word_weights(self, visual_states: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, subset) weights, each token's summing to 1 over the available words."""
        logits = self.mlp(visual_states).float()
        logits = logits.masked_fill(~available, torch.finfo(logits.dtype).min)
        return logits.softmax(dim=-1)

    def forward(self, visual_states, embedding_rows, available) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.word_weights(visual_states, available)
        return (weights.to(embedding_rows.dtype) @ embedding_rows), weights


class MlpAdapter(nn.Module):
    """LLaVA-style baseline: an MLP from the vision states straight into one LM's input-embedding space."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(input_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, output_size))

    def forward(self, visual_states, embedding_rows=None, available=None) -> tuple[torch.Tensor, None]:
        return self.mlp(visual_states), None


class BridgeForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """BRIDGE + an adapter + a causal LM. The image's vision states (the tower's, in the shared space of the first
    interaction layer; or, given a BRIDGE-tokenized prompt, the states after the interaction layers with it) become
    one prefix embedding per visual token; the LM continues from the prefix and the prompt. The LM is frozen by
    default; the loss is the LM's on `labels` (the prefix never counts)."""

    config_class = LangBridgeConfig
    config: LangBridgeConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: LangBridgeConfig, bridge=None, language_model=None):
        super().__init__(config)
        self.bridge = bridge if bridge is not None else BridgeModel(config.bridge_config)
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.lm_config)
        self.language_model = language_model
        shared, width = config.bridge_config.shared_dim, language_model.get_input_embeddings().embedding_dim
        if config.adapter_type == "langbridge":
            self.adapter = LangBridgeAdapter(shared, config.adapter_hidden_size, len(config.vocabulary_subset))
            # the bound LM's row of each subset word (-1: missing); saved, so a reload needs no tokenizer
            self.register_buffer("subset_token_ids", torch.full((len(config.vocabulary_subset),), -1))
        else:
            self.adapter = MlpAdapter(shared, config.adapter_hidden_size, width)
        if config.freeze_language_model:
            self.language_model.requires_grad_(False)
        self.post_init()

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def from_parts(cls, bridge: BridgeModel, language_model, tokenizer, vocabulary_subset=None, **config_kwargs):
        """A model around a BRIDGE model and a causal LM (both kept as they are; the adapter is new), with the LM's
        `tokenizer` to find the subset words' rows."""
        # Building the composite config resets its sub-configs' attention implementation, and the parts share those
        # configs (an LM left with none builds no padding mask): each part's own is restored.
        parts = [m for part in (bridge, language_model) for m in part.modules() if isinstance(m, PreTrainedModel)]
        implementations = [(m.config, m.config._attn_implementation) for m in parts]
        config = LangBridgeConfig(
            bridge_config=bridge.config,
            lm_config=language_model.config,
            vocabulary_subset=vocabulary_subset,
            **config_kwargs,
        )
        model = cls(config, bridge=bridge, language_model=language_model)
        for part_config, implementation in implementations:
            part_config._attn_implementation = implementation
        if config.adapter_type == "langbridge":
            model._bind(tokenizer)
        return model

    def _bind(self, tokenizer) -> int:
        """Look the subset words up in `tokenizer` (the LM's): returns how many it lacks."""
        if tokenizer is None or not callable(tokenizer) or not hasattr(tokenizer, "decode"):
            raise ValueError(
                "A LangBridge adapter needs the language model's tokenizer, to find the rows of its subset words in "
                f"the LM's embeddings; got {type(tokenizer).__name__}."
            )
        ids = subset_token_ids(tokenizer, self.config.vocabulary_subset)
        if (ids < 0).all():
            raise ValueError(
                f"The language model's tokenizer ({type(tokenizer).__name__}) has none of the adapter's "
                f"{len(ids)} subset words as a single token (e.g. {self.config.vocabulary_subset[:5]}): a LangBridge "
                "adapter cannot be bound to it. Build the subset with build_vocabulary_subset over both tokenizers."
            )
        vocabulary = self.language_model.get_input_embeddings().num_embeddings
        if int(ids.max()) >= vocabulary:
            raise ValueError(
                f"The tokenizer gives ids up to {int(ids.max())}, but the language model has {vocabulary} embedding "
                "rows: they do not belong together."
            )
        self.subset_token_ids = ids.to(self.subset_token_ids.device)
        return int((ids < 0).sum())

    def transfer_to(self, language_model, tokenizer) -> int:
        """Re-bind the adapter to another causal LM, without training: the subset words are looked up in its
        vocabulary (words it lacks get weight 0, the rest renormalised). Returns the number of words dropped. The two
        LMs' hidden sizes may differ."""
        if self.config.adapter_type != "langbridge":
            raise ValueError(
                "Only a LangBridge adapter (adapter_type='langbridge') transfers to another LM: an MLP adapter's "
                "output lives in the embedding space of the LM it was trained with."
            )
        previous = self.language_model
        self.language_model = language_model
        try:
            dropped = self._bind(tokenizer)
        except ValueError:
            self.language_model = previous
            raise
        self.config.lm_config = language_model.config
        if self.config.freeze_language_model:
            self.language_model.requires_grad_(False)
        if dropped:
            logger.warning(
                f"transfer_to: {dropped} of {len(self.subset_token_ids)} subset words are not single tokens of the "
                "new LM; their weights are dropped and the rest renormalised."
            )
        return dropped

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def train(self, mode: bool = True):
        """As `nn.Module.train`, except that a frozen LM or a frozen BRIDGE model stays in eval mode (no dropout, no
        batch-norm statistics drifting): training the adapter alone sees the same states as inference."""
        super().train(mode)
        if mode:
            keep_frozen_parts_in_eval_mode(self, (self.bridge, self.language_model))
        return self

    # ------------------------------------------------------------------------------------------------ forward

    def visual_states(self, pixel_values, bridge_input_ids=None, bridge_attention_mask=None) -> torch.Tensor:
        """(batch, vision positions, shared_dim): the tower's vision states, or with a BRIDGE-tokenized prompt the
        vision states after the interaction layers with it (both in the tower's width), projected into the shared
        space by the first interaction layer's input projection, the adapter's input either way."""
        if pixel_values is None:
            raise ValueError("BridgeForConditionalGeneration needs pixel_values: the image the text is about.")
        bridge = self.bridge
        if bridge_input_ids is None:
            vision = bridge.get_image_features(pixel_values, False, False, return_dict=True).last_hidden_state
        else:
            vision = bridge.encode_and_interact(
                pixel_values, bridge_input_ids, bridge_attention_mask, output_last_hidden_state=True
            ).vision_last_hidden_state
        return bridge.interaction_layers[0].project_vision(vision)

    def prefix_embeddings(self, pixel_values, bridge_input_ids=None, bridge_attention_mask=None):
        """(embeddings (batch, visual tokens, LM width), word weights or None): the LM's input prefix."""
        states = self.visual_states(pixel_values, bridge_input_ids, bridge_attention_mask)
        if self.config.adapter_type != "langbridge":
            return self.adapter(states)
        ids = self.subset_token_ids
        available = ids >= 0
        if not available.any():
            raise ValueError(
                "The adapter is bound to no word of the LM: build the model with BridgeForConditionalGeneration."
                "from_parts(bridge, lm, tokenizer, subset), or call transfer_to(lm, tokenizer)."
            )
        rows = self.language_model.get_input_embeddings().weight[ids.clamp(min=0)]
        return self.adapter(states.to(self.adapter.mlp[0].weight.dtype), rows, available)

    def _context_limit(self) -> tuple[int | None, str]:
        """(positions the language model takes, the name of its config field), e.g. (1024, "n_positions") for GPT-2;
        (None, "") for an LM whose config names no limit."""
        config = self.language_model.config
        aliases = getattr(config, "attribute_map", {})
        for name in ("max_position_embeddings", "n_positions"):
            limit = getattr(config, name, None)
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                return limit, aliases.get(name, name)
        return None, ""

    def _lm_inputs(self, pixel_values, input_ids, attention_mask, labels, bridge_input_ids, bridge_attention_mask):
        prefix, _ = self.prefix_embeddings(pixel_values, bridge_input_ids, bridge_attention_mask)
        batch, num_prefix = prefix.shape[:2]
        device = prefix.device
        if input_ids is None:
            input_ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
        if input_ids.shape[0] != batch:
            raise ValueError(f"Got {batch} images and {input_ids.shape[0]} texts; give one text per image.")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}: give "
                "one mask value per text token (the processor's attention_mask)."
            )
        limit, _ = self._context_limit()
        if limit is not None and num_prefix + input_ids.shape[1] > limit:
            raise ValueError(
                f"The {num_prefix} visual tokens and {input_ids.shape[1]} text tokens make "
                f"{num_prefix + input_ids.shape[1]} positions, more than the language model's context of {limit}: "
                "shorten the prompt (or the labels)."
            )
        embeds = torch.cat(
            [prefix.to(self.get_input_embeddings().weight.dtype), self.get_input_embeddings()(input_ids)], 1
        )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = torch.cat([torch.ones(batch, num_prefix, dtype=attention_mask.dtype, device=device), attention_mask], 1)
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels have shape {tuple(labels.shape)} but input_ids {tuple(input_ids.shape)}: give one label "
                    "per text token (-100 where no loss is wanted, e.g. the prompt)."
                )
            ignore = torch.full((batch, num_prefix), -100, dtype=labels.dtype, device=device)
            labels = torch.cat([ignore, labels], 1)
        # Each row's padding first, wherever the tokenizer put it: [pad..., prefix, text]. The text then ends every row
        # (generation continues it), and positions count real tokens only.
        order = mask.argsort(dim=1, stable=True)
        embeds = embeds.gather(1, order[..., None].expand_as(embeds))
        mask = mask.gather(1, order)
        labels = None if labels is None else labels.gather(1, order)
        return embeds, mask, labels

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        bridge_input_ids: torch.LongTensor | None = None,
        bridge_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        r"""
        pixel_values: the images. input_ids / attention_mask: the LM's tokens after the visual prefix (prompt and,
            in training, the target text). labels: the LM's labels for `input_ids` (-100: no loss), shifted inside
            the LM as usual. bridge_input_ids / bridge_attention_mask: the prompt in the BRIDGE text tower's
            tokenization, to read the vision states after the interaction layers with it.
        Returns the LM's output (`CausalLMOutputWithPast`), over the prefix and the text.
        """
        embeds, mask, labels = self._lm_inputs(
            pixel_values, input_ids, attention_mask, labels, bridge_input_ids, bridge_attention_mask
        )
        kwargs.setdefault("position_ids", (mask.long().cumsum(-1) - 1).clamp(min=0))
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        bridge_input_ids: torch.LongTensor | None = None,
        bridge_attention_mask: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generate text after the visual prefix (and the prompt `input_ids`, if any): the LM's `generate` on the
        prefix embeddings, with the LM's generation config. Returns the new tokens only.

        The visual tokens, the prompt and the new tokens (`max_new_tokens`, or `max_length` counting the prompt, from
        the call, its `generation_config` or the LM's) must fit the LM's context (`max_position_embeddings` /
        `n_positions`): checked before generating, a ValueError with the numbers otherwise."""
        setting = self._generation_length(generate_kwargs)
        embeds, mask, _ = self._lm_inputs(
            pixel_values, input_ids, attention_mask, None, bridge_input_ids, bridge_attention_mask
        )
        num_text = 0 if input_ids is None else input_ids.shape[1]
        self._check_generation_fits(embeds.shape[1] - num_text, num_text, setting)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)

    def _generation_length(self, generate_kwargs: dict) -> tuple[str | None, int, str]:
        """(name, value, where it comes from) of the setting that decides how many tokens `generate` adds, as
        transformers resolves it: max_new_tokens wherever it is set (the call, then the `generation_config` passed,
        then the LM's), else max_length (counting the prompt), else transformers' default (name None)."""
        sources = (
            ("", generate_kwargs),
            (" (from the generation_config passed)", generate_kwargs.get("generation_config")),
            (
                " (from the language model's generation_config)",
                getattr(self.language_model, "generation_config", None),
            ),
        )
        for name in ("max_new_tokens", "max_length"):
            for where, source in sources:
                value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
                if value is not None:
                    return name, _positive_int(value, name, where), where
        return None, DEFAULT_NEW_TOKENS, ""

    def _check_generation_fits(self, num_visual: int, num_text: int, setting: tuple[str | None, int, str]) -> None:
        """ValueError unless the prompt (the adapter's visual tokens and the text) and the new tokens fit the LM's
        context. The last new token is never fed back, so a prompt of P positions leaves room for limit - P + 1."""
        limit, field = self._context_limit()
        name, value, where = setting
        prompt = num_visual + num_text
        described = f"{prompt} prompt positions ({num_visual} visual tokens from the adapter + {num_text} text tokens)"
        if name == "max_length" and value <= prompt:
            raise ValueError(
                f"max_length={value}{where} counts the prompt, and the {described} already take that many: no token "
                "is left to generate. Pass max_new_tokens (the number of tokens to generate) instead."
            )
        if limit is None:
            return
        if name == "max_new_tokens":
            new, asked = value, f"max_new_tokens={value}{where}"
        elif name == "max_length":
            new, asked = value - prompt, f"max_length={value}{where} (the prompt and the new tokens together)"
        else:
            new = min(value, limit)
            asked = "transformers' default generation length (no max_new_tokens or max_length given)"
        room = limit - prompt + 1
        if new > room:
            raise ValueError(
                f"The {described} leave room for at most {room} new tokens in the language model's context of "
                f"{limit} positions ({field}), but {asked} asks for {new}: shorten the prompt or pass "
                f"max_new_tokens={room} or fewer."
            )

    @torch.no_grad()
    def top_words(self, pixel_values, k: int = 5, bridge_input_ids=None, bridge_attention_mask=None):
        """Per image, per visual token, the `k` words of the subset it weights most, as (word, weight) pairs: what
        each region reads as."""
        if self.config.adapter_type != "langbridge":
            raise ValueError("top_words needs a LangBridge adapter; an MLP adapter's output is not a word weighting.")
        size, number = len(self.config.vocabulary_subset), _as_int(k)
        if number is None or not 1 <= number <= size:
            raise ValueError(
                f"top_words: k must be an integer from 1 to {size} (the words of the adapter's vocabulary subset), "
                f"got {k!r}."
            )
        _, weights = self.prefix_embeddings(pixel_values, bridge_input_ids, bridge_attention_mask)
        values, indices = weights.topk(number, dim=-1)
        words = self.config.vocabulary_subset
        return [
            [[(words[i], float(v)) for v, i in zip(vs.tolist(), ids.tolist())] for vs, ids in zip(img_v, img_i)]
            for img_v, img_i in zip(values, indices)
        ]


__all__ = [
    "BridgeForConditionalGeneration",
    "LangBridgeAdapter",
    "MlpAdapter",
    "build_vocabulary_subset",
    "single_token_id",
    "subset_token_ids",
]
