"""Parameter counts from a Hugging Face ``config.json``, offline (no transformers, no weights).

Two architecture families cover most models people train with DeepSpeed:

- decoder-only "llama-style" (llama, mistral, qwen2, ...): embeddings, per layer q/k/v/o projections
  (grouped-query attention via ``num_key_value_heads``), a gated MLP (gate/up/down) and two RMSNorm
  weights, a final norm, and an ``lm_head`` unless ``tie_word_embeddings``;
- GPT-2 style (``n_embd``/``n_layer``/``n_head``): token and position embeddings, fused ``c_attn``
  with biases, a 4x MLP with biases, LayerNorms (weight and bias), tied ``lm_head``.

"Largest layer" follows DeepSpeed's ``model_to_params``: the most parameters held directly by one
module (an embedding, ``lm_head`` or one linear layer). Mixture-of-experts and encoder-decoder models
are out of scope: pass ``--params`` and ``--largest-layer`` for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterkit.dsconfig.load import read_json_file
from clusterkit.errors import InputError

#: transformers' defaults for ``tie_word_embeddings`` where the config omits it.
_TIED_BY_DEFAULT = {"gpt2": True, "gemma": True, "gemma2": True}


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts the estimators take. ``hidden_size`` feeds the HF ``"auto"`` bucket sizes."""

    total_params: int
    largest_layer_params: int
    source: str
    hidden_size: int | None = None
    detail: str = ""


def _int(cfg: dict[str, Any], path: str, *names: str, default: int | None = None) -> int:
    for name in names:
        value = cfg.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if default is not None:
        return default
    raise InputError(f"config.json has no positive integer {' / '.join(names)}; cannot count parameters "
                     "(pass --params and --largest-layer instead)", path)


def load_hf_config(path: str | Path) -> ModelSize:
    """Count the parameters of the model a HF config.json describes."""
    p = Path(path)
    cfg = read_json_file(p, "HF config.json")
    if not isinstance(cfg, dict):
        raise InputError("a HF config.json is a JSON object", str(p))
    if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    return count_params(cfg, str(p))


def count_params(cfg: dict[str, Any], path: str = "<config.json>") -> ModelSize:
    """Count parameters from a config dict (see the module docstring for what is supported)."""
    model_type = str(cfg.get("model_type", ""))
    if any(k in cfg for k in ("num_local_experts", "num_experts", "n_routed_experts")):
        raise InputError(f"{model_type or 'this model'} is a mixture-of-experts model; its expert layers are "
                         "not counted here: pass --params and --largest-layer", path)
    if "n_embd" in cfg or model_type == "gpt2":
        return _gpt2(cfg, path)
    return _llama(cfg, path)


def _gpt2(cfg: dict[str, Any], path: str) -> ModelSize:
    vocab = _int(cfg, path, "vocab_size")
    hidden = _int(cfg, path, "n_embd", "hidden_size")
    layers = _int(cfg, path, "n_layer", "num_hidden_layers")
    positions = _int(cfg, path, "n_positions", "max_position_embeddings", default=1024)
    inner = _int(cfg, path, "n_inner", default=4 * hidden)
    tied = cfg.get("tie_word_embeddings", True) is not False
    per_layer = (2 * hidden                      # ln_1
                 + hidden * 3 * hidden + 3 * hidden  # c_attn
                 + hidden * hidden + hidden      # attn c_proj
                 + 2 * hidden                    # ln_2
                 + hidden * inner + inner        # mlp c_fc
                 + inner * hidden + hidden)      # mlp c_proj
    lm_head = 0 if tied else vocab * hidden
    total = vocab * hidden + positions * hidden + layers * per_layer + 2 * hidden + lm_head
    largest = max(vocab * hidden, hidden * 3 * hidden + 3 * hidden, hidden * inner + inner,
                  inner * hidden + hidden, positions * hidden)
    return ModelSize(total, largest, f"{path} (gpt2-style)", hidden,
                     f"{layers} layers, hidden {hidden}, vocab {vocab}, {'tied' if tied else 'untied'} lm_head")


def _llama(cfg: dict[str, Any], path: str) -> ModelSize:
    vocab = _int(cfg, path, "vocab_size")
    hidden = _int(cfg, path, "hidden_size")
    layers = _int(cfg, path, "num_hidden_layers")
    intermediate = _int(cfg, path, "intermediate_size")
    heads = _int(cfg, path, "num_attention_heads")
    kv_heads = _int(cfg, path, "num_key_value_heads", default=heads)
    head_dim = _int(cfg, path, "head_dim", default=hidden // heads)
    model_type = str(cfg.get("model_type", ""))
    tied = cfg.get("tie_word_embeddings", _TIED_BY_DEFAULT.get(model_type, False)) is True
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden
    if cfg.get("attention_bias") is True:
        attention += q + 2 * kv + hidden
    elif model_type in ("qwen2", "qwen2_vl"):
        attention += q + 2 * kv  # Qwen2 has q/k/v biases without saying so in config.json
    mlp = 3 * hidden * intermediate + (2 * intermediate + hidden if cfg.get("mlp_bias") is True else 0)
    per_layer = attention + mlp + 2 * hidden
    lm_head = 0 if tied else vocab * hidden
    total = vocab * hidden + layers * per_layer + hidden + lm_head
    largest = max(vocab * hidden, hidden * intermediate, hidden * q, hidden * kv)
    return ModelSize(total, largest, f"{path} ({model_type or 'llama'}-style)", hidden,
                     f"{layers} layers, hidden {hidden}, intermediate {intermediate}, heads {heads}/{kv_heads} "
                     f"kv, vocab {vocab}, {'tied' if tied else 'untied'} lm_head")


_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(text: str, flag: str = "--params") -> int:
    """``7B``, ``6.7e9``, ``350M``, ``1_000_000`` -> an integer count."""
    raw = text.strip().replace("_", "").replace(",", "")
    scale = 1
    if raw and raw[-1].lower() in _SUFFIX:
        scale, raw = _SUFFIX[raw[-1].lower()], raw[:-1]
    try:
        value = float(raw) * scale
    except ValueError:
        from clusterkit.errors import UsageError

        raise UsageError(f"{flag} {text!r}: expected a count like 7B, 350M or 6.7e9") from None
    if value < 1:
        from clusterkit.errors import UsageError

        raise UsageError(f"{flag} {text!r}: must be at least 1")
    return round(value)
