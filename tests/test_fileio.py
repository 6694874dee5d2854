import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from cyclestar_jax import fileio  # noqa: E402


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "sub" / "metrics.json"
  fileio.atomic_write_text(path, '{"a": 1}')
  assert path.read_text() == '{"a": 1}'

  def half_then_fail(f):
    f.write(b'{"a": ')
    raise RuntimeError("interrupted")

  with pytest.raises(RuntimeError, match="interrupted"):
    fileio.atomic_write(path, half_then_fail)
  assert path.read_text() == '{"a": 1}'
  assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_save_figure_writes_a_png(tmp_path):
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  out = fileio.save_figure(fig, tmp_path / "a.png", dpi=50)
  plt.close(fig)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
