"""What the performance benchmarks share: timing that syncs the device, peak memory, FLOP counting and model FLOPs
utilisation, the environment header, and JSON results.

On CPU only ratios of variants timed side by side in one process mean anything (the development machines are shared);
on a GPU the absolute figures and the MFU are the point. Peak memory is the CUDA allocator's peak on a GPU and the
resident-set growth over the call (sampled every millisecond) on CPU.
"""

import os
import platform
import statistics
import threading
import time
from contextlib import contextmanager
from datetime import date

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from transformers import CLIPTextConfig, CLIPVisionConfig

from modeling_bridge import BridgeConfig
from modeling_bridge.saving import write_json_atomically


# Model sizes of the benchmarks: BRIDGE on CLIP's towers (what `CLIPModel` can be compared with, weight for weight).
SIZES = {
    # CLIP ViT-B/16's towers and bridge-base's interaction stack.
    "base": dict(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=16),
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                  max_position_embeddings=77),
        projection_dim=512,
        bridge=dict(num_interaction_layers=6, shared_dim=768, num_interaction_heads=12, projection_dim=256,
                    pair_chunk_size=256),
    ),
    "tiny": dict(
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8),
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77),
        projection_dim=32,
        bridge=dict(num_interaction_layers=2, shared_dim=64, num_interaction_heads=4, projection_dim=32,
                    pair_chunk_size=256),
    ),
}  # fmt: skip


def clip_bridge_config(size: str, **overrides) -> BridgeConfig:
    """BridgeConfig of `SIZES[size]`: CLIP's vision and text towers, the size's interaction stack."""
    spec = SIZES[size]
    vision, text = CLIPVisionConfig(**spec["vision"]), CLIPTextConfig(**spec["text"])
    fields = dict(
        num_vision_positions=(vision.image_size // vision.patch_size) ** 2 + 1,
        max_text_positions=text.max_position_embeddings,
        **spec["bridge"],
    )
    return BridgeConfig.from_vision_text_configs(vision, text, **{**fields, **overrides})


# Dense bf16 peak (no sparsity) of the accelerators the benchmarks are meant for, FLOP/s, from the vendors' sheets.
# Matched as substrings of the CUDA device name, first match wins: the PCIe and NVL parts before the SXM ones.
BF16_PEAK_FLOPS = {
    "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12, "H100": 989e12, "H200": 989e12,
    "A100": 312e12, "L4": 121e12, "A10G": 70e12,
}  # fmt: skip


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None where unknown (every CPU: MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in BF16_PEAK_FLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` calls, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(fns: dict, device: torch.device, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each of `fns`, calling them in turn round after round, so that all see the same load."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "peak_mib" is set on exit: the CUDA allocator's peak over the block, or on CPU the largest
    growth of the resident set over the block (Linux; sampled every millisecond, so a lower bound)."""
    result = {"peak_mib": None}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        synchronize(device)
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    if not os.path.exists("/proc/self/statm"):
        yield result
        return
    start, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["peak_mib"] = max(0, max(peak[0], _rss_bytes()) - start) / 2**20


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# `torch.utils.flop_counter` has formulas for the CUDA attention kernels but not for the CPU flash kernel that SDPA
# picks on CPU (always in bf16, often in float32), whose FLOPs it would silently leave out: the CUDA kernels' formulas
# for it (as for them, the backward counts the recomputed attention scores).
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def count_flops(fn) -> int:
    """FLOPs of one call of `fn` (matrix multiplications and attention, as `torch.utils.flop_counter` counts them,
    with the CPU attention kernel added)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        fn()
    return counter.get_total_flops()


def mfu(flops: int, seconds: float, device: torch.device) -> float | None:
    peak = peak_flops(device)
    return None if peak is None else flops / seconds / peak


def environment(device: torch.device, command: str) -> dict:
    import transformers

    return {
        "date": date.today().isoformat(),
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": command,
    }


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain text table of `rows` (dicts) in `columns` order; floats with 3 significant decimals."""

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_results(path: str | None, payload: dict) -> None:
    if path:
        write_json_atomically(path, payload)
        print(f"wrote {path}")


def parse_arguments(parser, argv, regression_defaults: dict):
    """Parse `argv`; with `--regression`, `regression_defaults` replace the defaults (tiny sizes on CPU), and options
    given explicitly still win."""
    parser.add_argument("--regression", action="store_true", help="tiny sizes on CPU, seconds: ratios only")
    if parser.parse_args(argv).regression:
        parser.set_defaults(**regression_defaults)
    return parser.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    """`--device`: auto (a GPU if there is one), cpu, cuda, cuda:1, ...; ValueError for a name torch does not know
    or a GPU that is not there (the commands print it as one `error: ...` line)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but no CUDA device is available; use --device cpu.")
    return device
