"""Need dates: a user's own cycle is trusted as far as it predicted on the training
positives, never worse there than the typical lead time."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bundlecast.models import need as nm


def _positives(n: int, noise: float, seed: int) -> pd.DataFrame:
    """Positives whose actual day is the item cycle's due day plus noise (days); with
    ``noise`` None the actual day has nothing to do with the cycle (around day 4)."""
    rng = np.random.default_rng(seed)
    due = rng.integers(1, 8, n).astype(float)
    actual = np.clip(np.round((due if noise is not None else 4.0) + rng.normal(0, noise or 1.0, n)), 1, 7)
    return pd.DataFrame({"due_in_item": due, "mean_gap_item": 7.0, "due_in_cat": np.nan, "mean_gap_cat": 0.0,
                         "days_to_need": actual.astype(int)})


def test_a_regular_cycle_is_trusted_and_a_noisy_one_is_not():
    regular = nm.fit_need_date_weights(_positives(400, 0.2, 1), horizon=7, typical=4)
    noisy = nm.fit_need_date_weights(_positives(400, None, 2), horizon=7, typical=4)
    assert regular["item cycle"] >= 0.8  # (0.9 and 1 round to the same days)
    assert noisy["item cycle"] <= 0.2
    assert regular["category cycle"] == 0.0  # no category-cycle positives: the constant


def test_the_blend_is_never_worse_than_the_constant_on_what_it_was_fitted_on():
    for noise, seed in ((0.5, 3), (2.0, 4), (5.0, 5)):
        pos = _positives(300, noise, seed)
        weights = nm.fit_need_date_weights(pos, 7, 4)
        cut = pd.Timestamp("2026-11-20")
        actual = cut + pd.to_timedelta(pos.days_to_need, unit="D")

        def mae(w):
            return (nm.need_dates(pos, cut, 7, 4, w)[0] - actual).dt.days.abs().mean()
        assert mae(weights) <= mae({}) + 1e-9 and mae(weights) <= mae(None) + 1e-9


def test_without_weights_the_rule_is_the_cycle_and_dates_stay_in_the_horizon():
    frame = pd.DataFrame({"due_in_item": [-3.0, 20.0, np.nan], "mean_gap_item": [5.0, 5.0, 0.0],
                          "due_in_cat": [np.nan, np.nan, 2.0], "mean_gap_cat": [0.0, 0.0, 9.0]})
    dates, basis = nm.need_dates(frame, pd.Timestamp("2026-11-20"), 7, 4)
    assert [d.day for d in dates] == [21, 27, 22]
    assert basis.tolist() == ["item cycle", "item cycle", "category cycle"]


def _featured_positives(n: int, seed: int, signal: bool) -> pd.DataFrame:
    """Positives with every feature; the first purchase falls ``7 - days_since_order`` days
    after the cut-off (a weekly customer) when ``signal``, else at random."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.normal(size=n) for c in nm.COLUMNS})
    frame["segment_code"] = rng.integers(0, 3, n)
    frame["days_since_order"] = rng.integers(0, 7, n).astype(float)
    days = 7 - frame.days_since_order if signal else pd.Series(rng.integers(1, 8, n))
    frame["days_to_need"] = days.clip(1, 7).astype(int)
    return frame


CUT = pd.Timestamp("2026-11-20")


def _date_errors(signal: bool, seeds: tuple[int, int]):
    """(regressor, its MAE in days on held-out positives, the constant's MAE there, held-out)."""
    train, held_out = _featured_positives(3000, seeds[0], signal), _featured_positives(1000, seeds[1], signal)
    reg = nm.fit_date_model(train, horizon=7)
    actual = CUT + pd.to_timedelta(held_out.days_to_need, unit="D")

    def mae(**how) -> float:
        return (nm.need_dates(held_out, CUT, 7, 4, **how)[0] - actual).dt.days.abs().mean()
    return reg, mae(date_model=reg), mae(weights={}), held_out


def test_the_date_model_learns_a_weekly_rhythm_the_constant_cannot():
    reg, mae_model, mae_constant, held_out = _date_errors(True, (6, 7))
    assert mae_model < 0.5 * mae_constant
    dates, basis = nm.need_dates(held_out, CUT, 7, 4, date_model=reg)
    assert set(basis) == {"date model"} and dates.min() > CUT and dates.max() <= CUT + pd.Timedelta(days=7)
    assert nm.fit_date_model(_featured_positives(100, 6, True), horizon=7) is None  # too few positives: the rules


def test_without_a_rhythm_the_date_model_is_no_better_than_the_constant():
    _, mae_model, mae_constant, _ = _date_errors(False, (8, 9))
    assert mae_model > mae_constant - 0.1  # nothing to learn: the gate in the need step then keeps the rules


def test_the_date_model_reads_the_users_order_weekdays():
    """Users who order on one weekday buy on it: with the weekday profile (share_dk, the
    share of order days on the weekday of cut-off + k) the regressor dates them."""
    def positives(n: int, seed: int) -> pd.DataFrame:
        frame = _featured_positives(n, seed, signal=False)
        rng = np.random.default_rng(seed + 100)
        weekday = rng.integers(1, 8, n)
        for k in range(1, 8):
            frame[f"share_d{k}"] = np.where(weekday == k, 0.8, 0.2 / 6)
        frame["days_to_need"] = np.where(rng.random(n) < 0.8, weekday, rng.integers(1, 8, n))
        return frame
    train, held_out = positives(3000, 21), positives(1000, 22)
    reg = nm.fit_date_model(train, horizon=7)
    actual = CUT + pd.to_timedelta(held_out.days_to_need, unit="D")
    mae_model = (nm.need_dates(held_out, CUT, 7, 4, date_model=reg)[0] - actual).dt.days.abs().mean()
    mae_constant = (nm.need_dates(held_out, CUT, 7, 4, weights={})[0] - actual).dt.days.abs().mean()
    assert mae_model < 0.5 * mae_constant
    assert reg.bundlecast_features_ == nm.DATE_FEATURES


def test_a_date_model_registered_before_the_weekday_profile_still_dates():
    """A champion's regressor fitted on the older feature list (no ``bundlecast_features_``)
    is given the columns it was fitted on, not today's list."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    train = _featured_positives(1000, 31, signal=True)
    old = HistGradientBoostingRegressor(loss="absolute_error", random_state=0).fit(
        nm.matrix(train, nm.FEATURES), train.days_to_need)
    dates, basis = nm.need_dates(train, CUT, 7, 4, date_model=old)
    assert set(basis) == {"date model"} and dates.between(CUT + pd.Timedelta(days=1), CUT + pd.Timedelta(days=7)).all()


def test_the_date_model_does_not_depend_on_the_row_order():
    """The same positives in another order give the same dates: the fit has no random
    validation split to depend on (with one, the order alone moved Online Retail's need-date
    error by as much as the regressor's lead over the constant)."""
    train = _featured_positives(3000, 41, signal=True)
    shuffled = train.sample(frac=1, random_state=1).reset_index(drop=True)
    a, b = nm.fit_date_model(train, horizon=7), nm.fit_date_model(shuffled, horizon=7)
    held_out = _featured_positives(500, 42, signal=True)
    np.testing.assert_allclose(a.predict(nm.matrix(held_out, nm.DATE_FEATURES)),
                               b.predict(nm.matrix(held_out, nm.DATE_FEATURES)), atol=1e-9)
