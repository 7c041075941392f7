"""The throughput benchmark refuses a model name it has no plan for."""

import pytest

from benchmarks import lm_throughput


def test_unknown_model_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Before the check, a typo skipped the model and still ended in "RESULT seconds=0", exit 0.
    with pytest.raises(SystemExit) as stop:
        lm_throughput.main(["--models", "smollm2-135m", "--no-docs", "--memory", "none"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "smollm2-135m" in err and "tiny-arith" in err and "smollm2" in err
