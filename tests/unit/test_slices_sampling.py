from __future__ import annotations

from gateway.core.sampling import shadow_sampled, unit_hash
from gateway.core.slices import MAX_LABELS, MAX_VALUE_LENGTH, slice_labels


def test_labels_from_metadata_and_headers_header_wins() -> None:
    labels = slice_labels(
        {"tier": "free", "Category": "billing"},
        [("x-slice-tier", "enterprise"), ("X-Slice-Region", "eu"), ("authorization", "secret")],
    )
    assert labels == {"tier": "enterprise", "category": "billing", "region": "eu"}


def test_bad_labels_are_dropped_or_cleaned_never_raised() -> None:
    labels = slice_labels(
        {"": "x", "bad name!": "x", "nested": {"a": 1}, "n": 3, "flag": True, "empty": "  "},
        [("x-slice-evil", "line\r\nInjected: yes"), ("x-slice-long", "v" * 1000)],
    )
    assert labels == {
        "n": "3",
        "flag": "true",
        "evil": "lineInjected: yes",
        "long": "v" * MAX_VALUE_LENGTH,
    }


def test_label_count_is_bounded() -> None:
    many = {f"k{i}": "v" for i in range(100)}
    assert len(slice_labels(many, [])) == MAX_LABELS


def test_sampling_is_deterministic_and_about_right() -> None:
    ids = [f"req_{i}" for i in range(20_000)]
    assert all(shadow_sampled(i, 1.0) for i in ids[:100])
    assert not any(shadow_sampled(i, 0.0) for i in ids[:100])
    chosen = sum(shadow_sampled(i, 0.25) for i in ids)
    assert 4_600 < chosen < 5_400  # 25 % of 20,000, with room for chance
    assert [shadow_sampled(i, 0.5) for i in ids[:50]] == [shadow_sampled(i, 0.5) for i in ids[:50]]
    assert 0.0 <= unit_hash("anything") < 1.0
