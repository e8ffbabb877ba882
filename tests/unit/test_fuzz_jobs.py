"""Property-based fuzzing (hypothesis) of job-spec and command validation: whatever a client sends
(any JSON, any text, any command fields), validation either accepts it or raises
:class:`JobSpecError` with a message -- never another exception, never a hang. Accepted specs
round-trip: ``parse(to_dict())`` gives the same spec. ``FUZZ_EXAMPLES`` sets the example count."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mystocks_gpu.jobs.kinds import kinds
from mystocks_gpu.jobs.protocol import check_submit, make_command
from mystocks_gpu.processors.exceptions import JobSpecError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = sorted(kinds())

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=30),
                         st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                                 st.dictionaries(st.text(max_size=12), inner,
                                                                                 max_size=6)), max_leaves=30)


def _field_values(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Specs that use the kind's real field names with arbitrary values (deeper than random keys)."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(kinds()[kind].spec_cls)]  # type: ignore[arg-type]
    return st.dictionaries(st.sampled_from(names), json_values, max_size=len(names))


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_any_spec_is_accepted_or_refused_with_a_reason(kind: str, data: st.DataObject) -> None:
    spec = data.draw(st.one_of(json_values, _field_values(kind)))
    k = kinds()[kind]
    try:
        parsed = k.parse(spec)
    except JobSpecError as exc:
        assert str(exc)
        return
    assert k.parse(parsed.to_dict()) == parsed  # normalised specs round-trip
    assert parsed.memory_bytes() >= 0


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_any_spec_text_is_accepted_or_refused(kind: str, text: str) -> None:
    try:
        kinds()[kind].parse(text)
    except JobSpecError as exc:
        assert str(exc)


@FUZZ
@given(job_id=st.text(max_size=140), kind=st.one_of(st.sampled_from(KINDS), st.text(max_size=20)),
       spec=json_values, priority=st.integers(-(2**40), 2**40),
       deadline=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)))
def test_submit_commands_are_validated_without_crashing(job_id: str, kind: str, spec: Any, priority: int,
                                                        deadline: int | None) -> None:
    cmd = make_command("SUBMIT", job_id, kind, json.dumps(spec), priority=priority, deadline_ns=deadline)
    try:
        check_submit(cmd)
    except JobSpecError as exc:
        assert str(exc)
        return
    assert -1000 <= priority <= 1000 and len(job_id) <= 128


def test_oversized_spec_is_refused_before_parsing() -> None:
    huge = json.dumps({"message": "x" * (2 << 20)})
    with pytest.raises(JobSpecError, match="byte limit"):
        kinds()["echo"].parse(huge)
    deep = "[" * 100_000 + "]" * 100_000  # a nesting bomb: refused, no RecursionError
    with pytest.raises(JobSpecError):
        kinds()["echo"].parse(deep)
