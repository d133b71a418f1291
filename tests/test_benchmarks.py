"""The benchmark scripts write their own numbers into the docs (only inside their generated block)."""

import json

from benchmarks._report import begin_marker, end_marker, write_generated


def test_write_generated_replaces_only_the_block(tmp_path):
    page = tmp_path / "page.md"
    write_generated(page, "benchmarks/x.py", "first numbers", title="X")
    assert page.read_text().startswith("# X\n")
    page.write_text(page.read_text() + "\nHand-written reading of the numbers.\n")
    write_generated(page, "benchmarks/x.py", "second numbers", title="X")
    text = page.read_text()
    assert "second numbers" in text and "first numbers" not in text
    assert "Hand-written reading of the numbers." in text
    assert text.count(begin_marker("benchmarks/x.py")) == 1 and text.count(end_marker("benchmarks/x.py")) == 1


def test_throughput_script_writes_its_table(tmp_path):
    from benchmarks import throughput

    page, raw = tmp_path / "performance.md", tmp_path / "raw.json"
    throughput.main(
        ["--components", "2", "--methods", "default", "--ent-coefs", "0", "--repeats", "1", "--steps", "64",
         "--write", str(page), "--json", str(raw)]
    )  # fmt: skip
    text = page.read_text()
    assert "benchmarks/throughput.py --components 2" in text
    row = json.loads(raw.read_text())["summary"]["rows"]["K2-default-ent0"]
    assert row["n"] == 1 and 0.0 < row["ratio_median"] < 10.0
    assert f"{row['ratio_median']:.2f}" in text


def test_throughput_covers_every_registered_estimator():
    from benchmarks.throughput import METHODS
    from sb3_gmm.entropy import ESTIMATORS

    assert set(METHODS) == {"default", *ESTIMATORS}
