"""Memory estimates equal DeepSpeed's estimators; HF configs count like the real models; the plan picks
the cheapest strategy that fits and warns before CPU offload runs a node out of RAM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterkit.cli import main
from clusterkit.dsconfig.estimate import (
    GIB,
    Capacity,
    estimate_all,
    plan_memory,
    zero2_model_states_mem_needs,
    zero3_model_states_mem_needs,
)
from clusterkit.dsconfig.hf_model import count_params, load_hf_config, parse_count
from clusterkit.errors import InputError, UsageError
from clusterkit.node.facts import to_jsonable
from tests.factories import healthy_gpu_node, make_host, with_section

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "dsconfig" / "models"


def deepspeed_estimators() -> tuple[Any, Any, Any]:
    from clusterkit.dsconfig.introspect import deepspeed_config_module

    deepspeed_config_module()  # quiet import
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs, model_to_params


params_st = st.integers(min_value=1, max_value=10**12)


@settings(max_examples=300, deadline=None)
@given(params_st, st.integers(1, 16), st.integers(1, 64), st.booleans(), st.sampled_from([1.0, 1.5, 2.0]))
def test_zero2_estimate_equals_deepspeeds(total: int, gpus: int, nodes: int, offload: bool, factor: float) -> None:
    zero2, _, _ = deepspeed_estimators()
    assert zero2_model_states_mem_needs(total, gpus, nodes, offload, factor) == \
        zero2(total, gpus, nodes, offload, factor)


@settings(max_examples=300, deadline=None)
@given(params_st, st.floats(0.0, 1.0), st.integers(1, 16), st.integers(1, 64), st.booleans(), st.booleans(),
       st.booleans())
def test_zero3_estimate_equals_deepspeeds(total: int, share: float, gpus: int, nodes: int, offload: bool,
                                          offload_params: bool, zero_init: bool) -> None:
    _, zero3, _ = deepspeed_estimators()
    largest = max(1, int(total * share))
    assert zero3_model_states_mem_needs(total, largest, gpus, nodes, offload, offload_params, zero_init) == \
        zero3(total, largest, gpus, nodes, offload, offload_params, zero_init)


def test_every_deepspeed_row_of_the_table_equals_deepspeeds_estimator() -> None:
    zero2, zero3, _ = deepspeed_estimators()
    total, largest, nodes, gpus = 6_738_415_616, 131_072_000, 2, 8
    for row in estimate_all(total, largest, nodes, gpus):
        s = row.strategy
        if s.formula != "DeepSpeed":
            continue
        if s.stage == 2:
            expected = zero2(total, gpus, nodes, s.offload_optimizer == "cpu")
        else:
            cpu, gpu, _ = zero3(total, largest, gpus, nodes, s.offload_optimizer == "cpu",
                                s.offload_param == "cpu", bool(s.zero_init))
            expected = (cpu, gpu)
        assert (row.cpu_bytes, row.gpu_bytes) == expected, s.label


def test_zero0_and_zero1_are_clusterkits_own_forms_in_deepspeeds_byte_accounting() -> None:
    rows = {r.strategy.key: r for r in estimate_all(1000, 100, 1, 4)}
    assert rows["zero0"].gpu_bytes == 20 * 1000 and rows["zero0"].strategy.formula == "clusterkit"
    assert rows["zero1"].gpu_bytes == 4 * 1000 + 16 * 1000 // 4
    assert rows["zero0"].gpu_bytes > rows["zero1"].gpu_bytes > rows["zero2"].gpu_bytes


# ------------------------------------------------------------------------------- parameter counting


class TinyLlama:
    """A llama-shaped torch model with the module layout of transformers' LlamaForCausalLM."""

    @staticmethod
    def build(vocab: int, hidden: int, layers: int, inter: int, heads: int, kv: int, tied: bool) -> Any:
        import torch
        from torch import nn

        class Norm(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.weight = nn.Parameter(torch.ones(hidden))

        head_dim = hidden // heads

        class Layer(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
                self.k_proj = nn.Linear(hidden, kv * head_dim, bias=False)
                self.v_proj = nn.Linear(hidden, kv * head_dim, bias=False)
                self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
                self.gate_proj = nn.Linear(hidden, inter, bias=False)
                self.up_proj = nn.Linear(hidden, inter, bias=False)
                self.down_proj = nn.Linear(inter, hidden, bias=False)
                self.input_layernorm, self.post_attention_layernorm = Norm(), Norm()

        model = nn.Module()
        model.embed_tokens = nn.Embedding(vocab, hidden)
        model.layers = nn.ModuleList(Layer() for _ in range(layers))
        model.norm = Norm()
        model.lm_head = nn.Linear(hidden, vocab, bias=False)
        if tied:
            model.lm_head.weight = model.embed_tokens.weight
        return model


def tiny_gpt2(vocab: int, hidden: int, layers: int, positions: int) -> Any:
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.c_attn, self.attn_proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
            self.c_fc, self.mlp_proj = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    model = nn.Module()
    model.wte, model.wpe = nn.Embedding(vocab, hidden), nn.Embedding(positions, hidden)
    model.h = nn.ModuleList(Block() for _ in range(layers))
    model.ln_f = nn.LayerNorm(hidden)
    model.lm_head = nn.Linear(hidden, vocab, bias=False)
    model.lm_head.weight = model.wte.weight
    return model


@pytest.mark.parametrize(("vocab", "hidden", "layers", "inter", "heads", "kv", "tied"),
                         [(64, 32, 2, 88, 4, 4, False), (100, 48, 3, 40, 6, 2, True), (30, 16, 1, 200, 2, 1, False)])
def test_llama_style_counts_equal_deepspeeds_model_to_params(vocab: int, hidden: int, layers: int, inter: int,
                                                             heads: int, kv: int, tied: bool) -> None:
    _, _, model_to_params = deepspeed_estimators()
    model = TinyLlama.build(vocab, hidden, layers, inter, heads, kv, tied)
    size = count_params({"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
                         "num_hidden_layers": layers, "intermediate_size": inter, "num_attention_heads": heads,
                         "num_key_value_heads": kv, "tie_word_embeddings": tied})
    assert (size.total_params, size.largest_layer_params) == model_to_params(model)


def test_gpt2_style_counts_equal_deepspeeds_model_to_params() -> None:
    _, _, model_to_params = deepspeed_estimators()
    size = count_params({"model_type": "gpt2", "vocab_size": 97, "n_embd": 24, "n_layer": 2, "n_positions": 40})
    assert (size.total_params, size.largest_layer_params) == model_to_params(tiny_gpt2(97, 24, 2, 40))


@pytest.mark.parametrize(("name", "total"), [("gpt2-config.json", 124_439_808),
                                             ("llama-2-7b-config.json", 6_738_415_616),
                                             ("mistral-7b-config.json", 7_241_732_096)])
def test_published_configs_count_the_published_parameter_numbers(name: str, total: int) -> None:
    size = load_hf_config(MODELS / name)
    assert size.total_params == total
    assert size.hidden_size in (768, 4096)


def test_mixture_of_experts_configs_are_refused_with_what_to_pass_instead() -> None:
    with pytest.raises(InputError, match="--params and --largest-layer"):
        count_params({"model_type": "mixtral", "num_local_experts": 8, "hidden_size": 8})


@pytest.mark.parametrize(("text", "count"), [("7B", 7 * 10**9), ("350M", 350 * 10**6), ("6.7e9", 6_700_000_000),
                                             ("1_000", 1000), ("1.5k", 1500)])
def test_parameter_counts_are_read_with_suffixes(text: str, count: int) -> None:
    assert parse_count(text) == count


def test_a_parameter_count_that_is_not_one_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_count("seven")


# ----------------------------------------------------------------------------------- recommendation


def test_the_cheapest_strategy_that_fits_is_recommended() -> None:
    capacity = Capacity(80 * GIB, {"n0": 1800 * GIB}, gpu_headroom=0.2)
    plan = plan_memory(6_738_415_616, 131_072_000, 1, 8, capacity)
    assert plan.recommended is not None
    # ZeRO-0 needs 20 B/param = 125 GiB and ZeRO-1 27 GiB... on 8 GPUs ZeRO-1 already fits 64 GiB usable
    assert plan.recommended.estimate.strategy.key == "zero1"
    assert plan.warnings == ()


def test_a_model_too_big_for_one_gpu_goes_to_optimizer_offload_then_zero3_offload() -> None:
    plan = plan_memory(7_241_732_096, 131_072_000, 1, 1, Capacity(24 * GIB, {"n0": 500 * GIB}))
    assert plan.recommended is not None
    assert plan.recommended.estimate.strategy.key == "zero2-offload-optimizer"  # 2 B/param on the GPU
    plan = plan_memory(7_241_732_096, 131_072_000, 1, 1, Capacity(12 * GIB, {"n0": 500 * GIB}))
    assert plan.recommended is not None
    assert plan.recommended.estimate.strategy.key == "zero3-offload-all"


def test_cpu_offload_beyond_a_nodes_free_ram_is_a_warning_about_the_silent_kill() -> None:
    capacity = Capacity(24 * GIB, {"n0": 64 * GIB, "n1": 500 * GIB}, gpu_headroom=0.2)
    plan = plan_memory(7_241_732_096, 131_072_000, 2, 1, capacity)
    warning = next(w for w in plan.warnings if "offload" in w)
    assert "n0 64.0 GiB" in warning and "return code -9 and no traceback" in warning
    assert plan.recommended is None or plan.recommended.estimate.strategy.key == "zero3-nvme"


def test_without_known_gpu_memory_nothing_is_recommended_and_it_says_why() -> None:
    plan = plan_memory(10**9, 10**7, 1, 8, Capacity(None, {"n0": None}))
    assert plan.recommended is None
    assert any("GPU memory unknown" in w for w in plan.warnings)


# ------------------------------------------------------------------------------------------- the CLI


def test_estimate_cli_reads_a_doctor_facts_file_and_prints_json(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    small = [with_section(healthy_gpu_node(8, host=make_host(f"gpu-{i}")), "system",
                          mem_available_bytes=(200 if i else 2000) * GIB) for i in range(2)]
    facts = tmp_path / "doctor.json"
    facts.write_text(json.dumps({"facts": {f.host.hostname: to_jsonable(f) for f in small}}))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("gpu-0 slots=8\ngpu-1 slots=8\n")
    code = main(["estimate", "--hf-config", str(MODELS / "mistral-7b-config.json"), "--hostfile", str(hostfile),
                 "--facts", str(facts), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["model"]["total_params"] == 7_241_732_096
    assert doc["cluster"]["num_nodes"] == 2 and doc["cluster"]["num_gpus_per_node"] == 8
    assert doc["capacity"]["node_mem_available"] == {"gpu-0": 2000 * GIB, "gpu-1": 200 * GIB}
    # ZeRO-1/2 would fit the GPUs, but 8 ranks loading the fp32 model need 324 GiB on gpu-1
    zero1 = next(e for e in doc["estimates"] if e["key"] == "zero1")
    assert (zero1["gpu_fits"], zero1["cpu_short_hosts"]) == (True, ["gpu-1"])
    assert doc["recommendation"] == "zero3"
    offload = next(e for e in doc["estimates"] if e["key"] == "zero2-offload-optimizer")
    assert offload["cpu_short_hosts"] == ["gpu-1"]
    assert any("gpu-1 200.0 GiB" in w and "-9" in w for w in doc["warnings"])


def test_estimate_cli_text_names_the_recommendation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = with_section(healthy_gpu_node(1), "system", mem_available_bytes=500 * GIB)
    facts = tmp_path / "node.json"
    facts.write_text(json.dumps(to_jsonable(node)))
    code = main(["estimate", "--params", "7B", "--largest-layer", "131M", "--facts", str(facts),
                 "--gpu-memory", "24"])
    out = capsys.readouterr().out
    assert code == 0
    assert "recommendation: ZeRO-2 + offload_optimizer=cpu (zero_optimization.stage 2, " \
        "offload_optimizer.device cpu)" in out
    assert "DeepSpeed" in out and "clusterkit" in out
    assert "cluster: 1 rank on gpu-node-0" in out and "gpu-node-0 500.0 GiB" in out


def test_estimate_cli_exits_1_when_nothing_fits(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["estimate", "--params", "70B", "--largest-layer", "1B", "--nodes", "1", "--gpus-per-node", "1",
                 "--gpu-memory", "2"])
    assert code == 1
    assert "no strategy fits" in capsys.readouterr().out
