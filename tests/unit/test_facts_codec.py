"""Facts survive the trip to JSON and back; bad JSON is refused with the path to the bad value."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.core.facts_codec import FactsDecodeError, from_jsonable
from clusterkit.node.collect.node import CollectOptions, collect_node
from clusterkit.node.facts import NodeFacts, PythonEnvFacts, Unavailable, known, to_jsonable


def test_unavailable_is_encoded_with_its_reason() -> None:
    assert to_jsonable(Unavailable("NVML not found")) == {"unavailable": "NVML not found"}


def test_this_machines_facts_round_trip_through_json() -> None:
    facts = collect_node(CollectOptions(sections=["system", "network", "launcher"]))
    data = json.loads(json.dumps(to_jsonable(facts)))
    assert from_jsonable(NodeFacts, data) == facts


def test_optional_inside_maybe_keeps_none_apart_from_unavailable() -> None:
    env = PythonEnvFacts(
        interpreter="/env/bin/python", exists=True, version="3.11.7", prefix="/env", env_hash="abc",
        torch_version="2.13.0+cpu", torch_cuda=None, torch_cuda_available=False, torch_device_count=0,
        torch_arch_list=[], nccl_version=Unavailable("CPU build of torch"), cpp_ext_cuda_home=None,
        deepspeed_version="0.19.8", deepspeed_ops=[], ninja_path="/env/bin/ninja")
    back = from_jsonable(PythonEnvFacts, json.loads(json.dumps(to_jsonable(env))))
    assert back.torch_cuda is None
    assert back.nccl_version == Unavailable("CPU build of torch")
    assert back == env


def test_a_wrong_type_names_the_path_to_it() -> None:
    facts = collect_node(CollectOptions(sections=[]))
    data = to_jsonable(facts)
    data["host"]["hostname"] = 42
    with pytest.raises(FactsDecodeError, match=r"NodeFacts\.host\.hostname: expected str, got int"):
        from_jsonable(NodeFacts, data)


def test_a_missing_field_is_named() -> None:
    data = to_jsonable(collect_node(CollectOptions(sections=[])))
    del data["host"]
    with pytest.raises(FactsDecodeError, match=r"NodeFacts\.host: missing"):
        from_jsonable(NodeFacts, data)


def test_known_tells_read_values_from_unavailable_ones() -> None:
    assert known(0) and known("") and not known(Unavailable("x"))


json_values: Any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_arbitrary_json_decodes_or_raises_facts_decode_error(data: Any) -> None:
    with contextlib.suppress(FactsDecodeError):
        from_jsonable(NodeFacts, data)
