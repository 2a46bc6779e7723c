"""Resume trusts nothing it reads back: a tampered worst-case set or report.json in --out is refused with
one error naming the file, before any compute; an untouched folder resumes to the same report (issue 14)."""

from __future__ import annotations

import json

import pytest

from tests.reliability.conftest import TINY
from unlearning.splits import load_indices
from unlearning.stress import StressInputError, stress_test
from unlearning.worst_case import SearchResult


def _resume(out, cache_dir):
    return stress_test(**TINY, cache_dir=str(cache_dir), out=out)


def _rows(report):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in report["results"]]


def test_an_untouched_folder_resumes_to_the_same_rows(run_copy, finished_run, cache_dir):
    before = json.loads((finished_run / "report.json").read_text())
    after = _resume(run_copy, cache_dir)
    assert _rows(after) == _rows(before) and after["searches"] == before["searches"]


def _edit_set(seed, change):
    def edit(out):
        path = out / "sets" / f"seed{seed}.json"
        data = json.loads(path.read_text())
        change(data, out)
        path.write_text(json.dumps(data))
        return path

    return edit


def _other_seed(data, out):
    data.clear()
    data.update(json.loads((out / "sets" / "seed1.json").read_text()))


def _cut_short(data, out):
    data["indices"] = data["indices"][:-10]


def _cut_short_consistently(data, out):
    data["indices"] = data["indices"][:-10]
    data["initial_indices"] = data["initial_indices"][:-10]
    data["size"] = len(data["indices"])


def _change_index(data, out):
    free = next(i for i in range(10_000) if i not in data["indices"])
    data["indices"] = sorted([*data["indices"][1:], free])


def _change_start(data, out):
    free = next(i for i in range(10_000) if i not in data["initial_indices"])
    data["initial_indices"] = sorted([*data["initial_indices"][1:], free])


def _add_classes(data, out):
    data["classes"] = [3]


def _booleans(data, out):
    data["indices"][:2] = [True, False]


def _strings(data, out):
    data["indices"][0] = "7"


def _seconds_null(data, out):
    data["seconds"] = None


@pytest.mark.parametrize(
    "tamper, words",
    [
        (_edit_set(0, _other_seed), "split_seed"),
        (_edit_set(0, _cut_short), "cut or edited"),
        (_edit_set(0, _cut_short_consistently), "recorded"),
        (_edit_set(0, _change_index), "other indices"),
        (_edit_set(0, _change_start), "other indices"),
        (_edit_set(1, _add_classes), "classes"),
        (_edit_set(1, _booleans), "integer positions"),
        (_edit_set(0, _strings), "integer positions"),
        (_edit_set(0, _seconds_null), "seconds"),
    ],
)
def test_a_tampered_set_is_refused_naming_the_file(run_copy, cache_dir, tamper, words):
    path = tamper(run_copy)
    with pytest.raises(StressInputError, match=words) as info:
        _resume(run_copy, cache_dir)
    assert info.value.param == "out" and str(path) in str(info.value)


def _write(text):
    def edit(out):
        (out / "report.json").write_text(text)

    return edit


def _truncate(out):
    path = out / "report.json"
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


def _edit_report(change):
    def edit(out):
        path = out / "report.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return edit


@pytest.mark.parametrize(
    "tamper, words",
    [
        (_truncate, "not a readable stress report"),
        (_write(""), "not a readable stress report"),
        (_write("[1, 2]"), "a JSON list"),
        (_write('"report"'), "a JSON str"),
        (_write("\xff\xfe"), "not a readable"),
        (_edit_report(lambda d: d["results"].__setitem__(2, "edited")), r"results\[2\]"),
        (_edit_report(lambda d: d["results"][0].__setitem__("UA", "high")), r"results\[0\]"),
        (_edit_report(lambda d: d["results"][0].__setitem__("seed", True)), r"results\[0\]"),
        (_edit_report(lambda d: d.__setitem__("results", {})), "'results'"),
        (_edit_report(lambda d: d.__setitem__("config", [])), "'config'"),
        (_edit_report(lambda d: d["searches"].__setitem__("0", 5)), "'searches'"),
        (_edit_report(lambda d: d["tuning"].append(3)), "'tuning'"),
    ],
)
def test_a_broken_report_is_refused_naming_the_file(run_copy, cache_dir, tamper, words):
    tamper(run_copy)
    with pytest.raises(StressInputError, match=words) as info:
        _resume(run_copy, cache_dir)
    assert info.value.param == "out" and str(run_copy / "report.json") in str(info.value)


def test_a_set_file_with_booleans_or_stray_classes_is_refused_everywhere(finished_run, tmp_path):
    data = json.loads((finished_run / "sets" / "seed0.json").read_text())
    bools = tmp_path / "bools.json"
    bools.write_text(json.dumps([True, False, 3]))
    with pytest.raises(ValueError, match=r"entry 0 is true"):
        load_indices(bools)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"indices": [1, [2], 3]}))
    with pytest.raises(ValueError, match="entry 1"):
        load_indices(nested)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({**data, "classes": [3]}))
    with pytest.raises(ValueError, match="data-wise but 'classes' is"):
        SearchResult.load(classes)
    assert SearchResult.load(finished_run / "sets" / "seed0.json").indices.numel() == data["size"]
