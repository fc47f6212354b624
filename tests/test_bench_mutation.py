"""bench/mutation.py: the mutation score of `make mutate`, on hand-made mutmut results."""

import pytest

RESULTS = """
    trust.registry.x_gate_results__mutmut_1: killed
    trust.registry.x_gate_results__mutmut_2: survived
    trust.registry.x_gate_results__mutmut_3: timeout
    trust.registry.xǁThingǁmethod__mutmut_1: no tests
    trust.delta.x_save_delta__mutmut_1: killed
    trust.delta.x_save_delta__mutmut_2: survived
    trust.delta.x_save_delta__mutmut_3: skipped
"""


def test_score_counts_no_tests_against_and_equivalents_out(bench_script):
    m = bench_script("mutation")
    r = m.score(m.read_results(RESULTS), {"trust.delta.x_save_delta__mutmut_2": "same value either way",
                                          "trust.delta.x_save_delta__mutmut_1": "wrongly listed",
                                          "trust.gone.x_f__mutmut_1": "function removed"})
    # 7 mutants; 3 killed (a timeout counts); 1 equivalent and 1 skipped leave the denominator: 3 / 5
    assert r["score"] == pytest.approx(3 / 5) and not r["passed"]
    assert r["modules"]["trust.registry"]["mutants"] == 4 and r["modules"]["trust.registry"]["score"] == pytest.approx(2 / 4)
    assert r["modules"]["trust.delta"]["score"] == pytest.approx(1.0)
    assert {s["mutant"] for s in r["survivors"]} == {"trust.registry.x_gate_results__mutmut_2",
                                                     "trust.registry.xǁThingǁmethod__mutmut_1"}
    assert len(r["stale_equivalents"]) == 2  # the killed one and the missing one
    assert "60.0%" in m.markdown(r) and "NOT met" in m.markdown(r)


def test_an_interrupted_run_is_not_scored(bench_script):
    m = bench_script("mutation")
    with pytest.raises(SystemExit, match="not checked"):
        m.score(m.read_results("    trust.delta.x_f__mutmut_1: killed\n    trust.delta.x_f__mutmut_2: not checked\n"), {})


def test_a_partial_score_is_of_the_checked_mutants_and_never_passes(bench_script):
    m = bench_script("mutation")
    text = "    trust.delta.x_f__mutmut_1: killed\n    trust.delta.x_f__mutmut_2: not checked\n"
    r = m.score(m.read_results(text), {}, partial=True)
    assert r["score"] == 1.0 and r["partial"] and not r["passed"]
    assert r["modules"]["trust.delta"]["not checked"] == 1 and "Partial run" in m.markdown(r)
