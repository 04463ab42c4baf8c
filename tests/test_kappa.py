"""Kappa schedules of Eq. (1) and their validation."""

import pytest

from strategy.kappa import KappaError, KappaSchedule


def test_constant_kappas_every_round():
    schedule = KappaSchedule(0.3, "constant", 0.0, 10)
    assert schedule.at(1) == pytest.approx((0.7, 0.3)) and schedule.at(10) == pytest.approx((0.7, 0.3))


def test_linear_decay_reaches_final_value_on_last_round():
    schedule = KappaSchedule(0.4, "linear", 0.0, 5)
    assert [round(schedule.at(r)[1], 6) for r in range(1, 6)] == [0.4, 0.3, 0.2, 0.1, 0.0]
    assert all(abs(sum(schedule.at(r)) - 1) < 1e-12 for r in range(1, 6))


def test_cosine_decay_is_slow_at_both_ends():
    schedule = KappaSchedule(0.5, "cosine", 0.1, 5)
    values = [schedule.at(r)[1] for r in range(1, 6)]
    assert values[0] == pytest.approx(0.5) and values[-1] == pytest.approx(0.1)
    assert values[2] == pytest.approx(0.3)
    assert values[0] - values[1] < values[1] - values[2]


@pytest.mark.parametrize("args", [(1.1, "constant", 0.0), (-0.1, "constant", 0.0), (0.5, "step", 0.0),
                                  (0.5, "linear", 1.5)])
def test_invalid_kappas_are_rejected(args):
    with pytest.raises(KappaError):
        KappaSchedule(*args, num_rounds=5)


def test_presets_say_whether_synthetic_data_is_needed(make_config):
    for preset, needed in [("fedavg", False), ("genfl", True), ("aigc_only", True)]:
        st = make_config(f"strategy={preset}").strategy
        schedule = KappaSchedule(st.kappa_aug, st.kappa_schedule, st.kappa_aug_final, 5)
        assert schedule.uses_synthetic_data is needed


def test_kappa_fl_is_derived_and_cannot_be_set_apart(make_config):
    from server_app.config import ConfigError

    assert make_config("strategy.kappa_aug=0.4").strategy.kappa_fl == 0.6
    with pytest.raises(ConfigError, match="strategy.kappa_fl: is derived"):
        make_config("strategy.kappa_fl=0.5")
