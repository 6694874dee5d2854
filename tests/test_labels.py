import numpy as np
import pytest

from cyclestar_jax import labels


def test_label_order_matches_payne():
  assert labels.N_LABELS == 25
  assert labels.LABEL_NAMES[:3] == ("Teff", "logg", "vturb")
  assert labels.LABEL_NAMES[-2:] == ("C12_C13", "vmacro")
  assert labels.ELEMENTS[0] == "C" and labels.ELEMENTS[-1] == "Ge" and len(labels.ELEMENTS) == 20
  assert labels.label_index("[Fe/H]") == 18 == labels.label_index("Fe")
  assert labels.label_index("fe_h") == 18
  assert labels.LABEL_UNITS["Teff"] == "K" and labels.LABEL_UNITS["Mg_H"] == "dex"


def test_unknown_label_is_named():
  with pytest.raises(KeyError, match="Xx"):
    labels.label_index("Xx")


def test_scaling_round_trip_and_range():
  rng = np.random.default_rng(0)
  y = rng.normal(size=(50, 25)) * 3 + 10
  y_min, y_max = labels.label_box(y)
  s = labels.scale_labels(y, y_min, y_max)
  assert s.min() == pytest.approx(-0.5) and s.max() == pytest.approx(0.5)
  np.testing.assert_allclose(labels.unscale_labels(s, y_min, y_max), y, rtol=1e-12)
  assert not labels.outside_box(y, y_min, y_max).any()
  y2 = y.copy()
  y2[3, 0] = y_max[0] + 1
  assert labels.outside_box(y2, y_min, y_max).tolist() == [i == 3 for i in range(50)]


def test_label_box_rejects_bad_shapes_and_degenerate_labels():
  with pytest.raises(ValueError, match="25"):
    labels.label_box(np.zeros((4, 24)))
  with pytest.raises(ValueError, match="Teff"):
    labels.label_box(np.zeros((4, 25)))
