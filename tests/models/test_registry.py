import pytest

import edgevit
from edgevit.errors import UnknownModelError
from edgevit.models.registry import get_model_card, normalize_name, resolve_name

S2A = ["s2aformer-mini", "s2aformer-t", "s2aformer-xs", "s2aformer-s", "s2aformer-m", "s2aformer-l"]


def test_all_s2aformer_variants_registered() -> None:
    assert [n for n in edgevit.list_models("s2aformer")] == S2A


@pytest.mark.parametrize("spelling", ["s2aformer-t", "S2AFormer-T", "s2aformer_t", " S2AFORMER_T "])
def test_names_are_case_and_separator_insensitive(spelling: str) -> None:
    assert resolve_name(spelling) == "s2aformer-t"
    assert normalize_name(spelling) == "s2aformer-t"


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownModelError) as err:
        edgevit.create_model("s2aformr-t")
    msg = str(err.value)
    assert "unknown model 's2aformr-t'" in msg and "s2aformer-t" in msg


def test_hopeless_name_points_to_list() -> None:
    with pytest.raises(UnknownModelError, match="edgevit list"):
        resolve_name("zzqx-9999")


def test_model_card_carries_deployment_and_paper_facts() -> None:
    card = get_model_card("s2aformer-t")
    assert card.family == "S2AFormer" and card.variant == "T"
    assert card.input_size == (224, 224)
    assert card.mean == (0.485, 0.456, 0.406) and card.std == (0.229, 0.224, 0.225)
    assert card.reported.params_m == 5.80 and card.reported.gmacs == 0.655 and card.reported.top1 == 77.7
    assert card.reported.throughput["onnxruntime@Intel Xeon Gold 6426Y"] == 112.89
    assert card.architecture == "reconstruction" and "arxiv" in card.paper_url


def test_random_init_is_reproducible_by_seed() -> None:
    a = edgevit.create_model("s2aformer-mini").state_dict()
    b = edgevit.create_model("s2aformer-mini").state_dict()
    c = edgevit.create_model("s2aformer-mini", seed=1).state_dict()
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a if a[k].is_floating_point())


def test_create_model_returns_eval_mode_with_card() -> None:
    m = edgevit.create_model("s2aformer-mini")
    assert not m.training and m.card.name == "s2aformer-mini"
