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
    from server_app.build import kappa_schedule

    for preset, needed in [("base_only", False), ("genfl", True), ("aigc_only", True)]:
        assert kappa_schedule(make_config(f"strategy={preset}")).uses_synthetic_data is needed
    assert kappa_schedule(make_config("strategy.kappa_aug=0", "mix.kappa_policy=linear", "mix.kappa_aug_final=0.2")) \
        .uses_synthetic_data  # 0 at the start, 0.2 by the end


@pytest.mark.parametrize("policy", ["linear", "cosine"])
def test_mix_kappa_policy_is_the_one_key_for_kappas_course(make_config, policy):
    from server_app.build import kappa_schedule

    schedule = kappa_schedule(make_config("num_rounds=5", f"mix.kappa_policy={policy}", "mix.kappa_aug_final=0.1"))
    assert (schedule.schedule, schedule.kappa_aug, schedule.kappa_aug_final) == (policy, 0.3, 0.1)
    assert schedule.at(1)[1] == pytest.approx(0.3) and schedule.at(5)[1] == pytest.approx(0.1)
    for constant in (make_config(), make_config("mix.kappa_policy=adaptive")):  # adaptive starts at kappa_aug
        assert kappa_schedule(constant) == KappaSchedule(0.3, "constant", 0.3, constant.num_rounds)
    assert "kappa_fl" not in make_config().strategy  # derived (1 - kappa_aug), never a key


@pytest.mark.parametrize("overrides, message", [
    (["mix.kappa_policy=linear"], "mix.kappa_aug_final: mix.kappa_policy=linear needs kappa_aug's value in the last round"),
    (["mix.kappa_aug_final=0.1"], "mix.kappa_aug_final: is where mix.kappa_policy=linear or cosine ends"),
    (["mix.kappa_policy=cosine", "mix.kappa_aug_final=1.5"], "mix.kappa_aug_final must be in [0, 1] (got 1.5)"),
    (["strategy.kappa_aug=1.2"], "strategy.kappa_aug must be in [0, 1] (got 1.2)"),
    (["strategy=base_only", "strategy.kappa_aug=0.3"], "strategy.kappa_aug: strategy=base_only is kappa_aug 0"),
    (["strategy=aigc_only", "mix.kappa_policy=linear", "mix.kappa_aug_final=0.5"],
     "mix.kappa_policy: strategy=aigc_only keeps kappa_aug at 1"),
])
def test_bad_kappa_settings_are_one_line_errors_naming_the_key(make_config, overrides, message):
    from server_app.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
