"""Which decoder layers MEMIT edits and LoRA adapts when a preset does not say: rules on the depth.

MEMIT (Meng et al. 2022) spreads an edit over a run of consecutive lower-middle MLPs, where causal
tracing finds factual recall: layers 3-8 of GPT-J's 28. Consolidation's LoRA needs the chat pathway
across the whole depth (paper 4: 8 layers). The rules below reproduce the bundled 30-layer model's
hand-tuned preset exactly (MEMIT 4-9, LoRA 4, 7, ... 25) and scale it by depth; on 28 and 32
layers the LoRA rule gives the spreads the Llama presets in ``sleepwake/configs`` use. A preset or
``--set memit.layers=[...]`` always wins.
"""

from __future__ import annotations

MEMIT_START = 0.13  # first edited layer, as a fraction of the depth (GPT-J: 3/28; bundled: 4/30)
MEMIT_SPAN = 0.2  # edited run length, as a fraction of the depth (GPT-J: 6/28; bundled: 6/30)
MEMIT_MAX_LAYERS = 8  # the cost of a solve grows with every edited layer; the papers use 5-8
LORA_POSITIONS = [(4 + 3 * k) / 30 for k in range(8)]  # 8 layers, as the bundled preset over its 30


def _nearest(value: float) -> int:
    return int(value + 0.5)  # half up, not Python's half-to-even: the presets were written that way


def memit_layers(num_layers: int) -> list[int]:
    """The MEMIT edit layers R for a decoder of ``num_layers`` layers (ascending, within range)."""
    if num_layers < 1:
        raise ValueError(f"a model needs at least one decoder layer, got {num_layers}")
    count = min(MEMIT_MAX_LAYERS, max(1, _nearest(MEMIT_SPAN * num_layers)))
    start = min(_nearest(MEMIT_START * num_layers), max(0, num_layers - count))
    return list(range(start, min(num_layers, start + count)))


def lora_layers(num_layers: int) -> list[int]:
    """The layers consolidation's LoRA adapts: 8 spread over the depth (fewer on a shallow model)."""
    if num_layers < 1:
        raise ValueError(f"a model needs at least one decoder layer, got {num_layers}")
    return sorted({min(num_layers - 1, _nearest(p * num_layers)) for p in LORA_POSITIONS})
