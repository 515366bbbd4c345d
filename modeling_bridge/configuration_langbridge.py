"""Configuration of BRIDGE with a LangBridge adapter and a causal language model (`BridgeForConditionalGeneration`).

Hub code: imports only transformers and `.configuration_bridge`.
"""

import typing
from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_bridge import BridgeConfig


AdapterType = Literal["langbridge", "mlp"]
ADAPTER_TYPES = typing.get_args(AdapterType)


class LangBridgeConfig(PreTrainedConfig):
    r"""
    BRIDGE's vision states, through an adapter, as a prefix for a causal language model.

    Args:
        bridge_config (`BridgeConfig` or `dict`): the BRIDGE model whose vision states feed the adapter.
        lm_config (`PreTrainedConfig` or `dict`): the causal language model (any `AutoModelForCausalLM` type).
        vocabulary_subset (`list[str]`): the words each visual token is a weighting over (LangBridge). Strings, never
            token ids, so that the adapter does not depend on one tokenizer; `build_vocabulary_subset` picks them.
        adapter_type (`str`, defaults to `"langbridge"`): `"langbridge"` (weights over the subset's embedding rows of
            the LM) or `"mlp"` (LLaVA-style: an MLP straight into one LM's embedding space; the baseline, which cannot
            move to another LM).
        adapter_hidden_size (`int`, defaults to 1024): width of the adapter's MLP.
        freeze_language_model (`bool`, defaults to `True`): the LM's parameters get no gradient (LoRA through PEFT
            adds trainable ones).
    """

    model_type = "bridge_langbridge"
    sub_configs_defaults = {
        "bridge_config": SubConfigSpec(config_class=BridgeConfig),
        "lm_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2"),
    }

    bridge_config: BridgeConfig | dict | None = None
    lm_config: PreTrainedConfig | dict | None = None
    vocabulary_subset: list | None = None
    adapter_type: AdapterType = "langbridge"
    adapter_hidden_size: int = 1024
    freeze_language_model: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.adapter_type not in ADAPTER_TYPES:
            raise ValueError(
                f"LangBridgeConfig.adapter_type must be one of {ADAPTER_TYPES}, got {self.adapter_type!r}."
            )
        if self.adapter_type == "langbridge":
            subset = self.vocabulary_subset
            if not subset or not all(isinstance(word, str) and word for word in subset):
                raise ValueError(
                    "LangBridgeConfig.vocabulary_subset must be a non-empty list of words (strings) for a LangBridge "
                    "adapter; build one with modeling_bridge.langbridge.build_vocabulary_subset(tokenizers, corpus)."
                )
            if len(set(subset)) != len(subset):
                raise ValueError("LangBridgeConfig.vocabulary_subset holds a word twice; each word must be unique.")
        if not isinstance(self.adapter_hidden_size, int) or self.adapter_hidden_size < 1:
            raise ValueError(f"adapter_hidden_size must be a positive integer, got {self.adapter_hidden_size!r}.")


__all__ = ["ADAPTER_TYPES", "LangBridgeConfig"]
